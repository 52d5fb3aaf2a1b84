"""Inception-v3, composed from Metalhead's layers: ``basic_conv_bn`` blocks in ``Parallel`` branches,
a ``create_classifier`` head.

Paper: `Rethinking the Inception Architecture for Computer Vision` - https://arxiv.org/abs/1512.00567

Loads timm's ImageNet weights (``inception_v3.tv_in1k``, ``.tf_in1k``, ``.gluon_in1k``) through
``checkpoint_filter_fn``.
"""
from collections import OrderedDict
from functools import partial
from typing import Callable, Dict

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models import register_model

from ..layers import create_classifier
from ._inception import (
    AuxClassifier, InceptionNet, Parallel, build_inception, inception_cfgs, inception_conv, inception_renamer,
    remap_with_aux)

__all__ = ['InceptionV3', 'inception_v3_stages']

ConvFn = Callable[..., nn.Sequential]


# Inception blocks, Metalhead's inceptionv3_a ... inceptionv3_e (torchvision's InceptionA ... InceptionE).

def inception_v3_a(inplanes: int, pool_proj: int, conv: ConvFn = inception_conv) -> Parallel:
    """35x35 block: 1x1 | 1x1 → 5x5 | 1x1 → 3x3 → 3x3 | 3x3 mean pool → 1x1 (Fig. 5 of the paper)."""
    return Parallel(
        conv(1, inplanes, 64),
        nn.Sequential(conv(1, inplanes, 48), conv(5, 48, 64, pad=2)),
        nn.Sequential(conv(1, inplanes, 64), conv(3, 64, 96, pad=1), conv(3, 96, 96, pad=1)),
        nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv(1, inplanes, pool_proj)),
    )


def inception_v3_b(inplanes: int, conv: ConvFn = inception_conv) -> Parallel:
    """35 → 17 grid reduction: 3x3/2 | 1x1 → 3x3 → 3x3/2 | 3x3/2 max pool."""
    return Parallel(
        conv(3, inplanes, 384, stride=2),
        nn.Sequential(conv(1, inplanes, 64), conv(3, 64, 96, pad=1), conv(3, 96, 96, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def inception_v3_c(inplanes: int, inner_planes: int, conv: ConvFn = inception_conv, n: int = 7) -> Parallel:
    """17x17 block with factorised n x n convolutions, ``inner_planes`` wide inside (Fig. 6 of the paper)."""
    c, p = inner_planes, n // 2
    return Parallel(
        conv(1, inplanes, 192),
        nn.Sequential(conv(1, inplanes, c), conv((1, n), c, c, pad=(0, p)), conv((n, 1), c, 192, pad=(p, 0))),
        nn.Sequential(conv(1, inplanes, c), conv((n, 1), c, c, pad=(p, 0)), conv((1, n), c, c, pad=(0, p)),
                      conv((n, 1), c, c, pad=(p, 0)), conv((1, n), c, 192, pad=(0, p))),
        nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv(1, inplanes, 192)),
    )


def inception_v3_d(inplanes: int, conv: ConvFn = inception_conv) -> Parallel:
    """17 → 8 grid reduction: 1x1 → 3x3/2 | 1x1 → 1x7 → 7x1 → 3x3/2 | 3x3/2 max pool."""
    return Parallel(
        nn.Sequential(conv(1, inplanes, 192), conv(3, 192, 320, stride=2)),
        nn.Sequential(conv(1, inplanes, 192), conv((1, 7), 192, 192, pad=(0, 3)),
                      conv((7, 1), 192, 192, pad=(3, 0)), conv(3, 192, 192, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def inception_v3_e(inplanes: int, conv: ConvFn = inception_conv) -> Parallel:
    """8x8 block with expanded filter banks: the 3x3s split into parallel 1x3 and 3x1 (Fig. 7 of the paper)."""
    return Parallel(
        conv(1, inplanes, 320),
        nn.Sequential(conv(1, inplanes, 384),
                      Parallel(conv((1, 3), 384, 384, pad=(0, 1)), conv((3, 1), 384, 384, pad=(1, 0)))),
        nn.Sequential(conv(1, inplanes, 448), conv(3, 448, 384, pad=1),
                      Parallel(conv((1, 3), 384, 384, pad=(0, 1)), conv((3, 1), 384, 384, pad=(1, 0)))),
        nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), conv(1, inplanes, 192)),
    )


def inception_v3_aux(inplanes: int, num_classes: int, conv: ConvFn = inception_conv) -> AuxClassifier:
    """The auxiliary classifier on the 17x17 grid: 5x5/3 mean pool → 1x1 → 5x5 → ``create_classifier``."""
    layers = OrderedDict(pool=nn.AvgPool2d(5, stride=3), conv0=conv(1, inplanes, 128), conv1=conv(5, 128, 768))
    return AuxClassifier(layers, create_classifier(768, num_classes))


STAGE_CHS = (64, 192, 288, 768, 2048)
AUX_STAGE = 3  # the auxiliary classifier reads the output of this stage (Mixed_6e)


def inception_v3_stages(in_chans: int = 3, *, act_layer='relu', norm_layer=None) -> nn.Sequential:
    """The mid-level constructor (Metalhead's ``inceptionv3`` backbone): five stages, output strides 2 ... 32."""
    conv = partial(inception_conv, act_layer=act_layer, norm_layer=norm_layer)
    return nn.Sequential(
        nn.Sequential(conv(3, in_chans, 32, stride=2), conv(3, 32, 32), conv(3, 32, 64, pad=1)),
        nn.Sequential(nn.MaxPool2d(3, stride=2), conv(1, 64, 80), conv(3, 80, 192)),
        nn.Sequential(nn.MaxPool2d(3, stride=2),
                      inception_v3_a(192, 32, conv), inception_v3_a(256, 64, conv), inception_v3_a(288, 64, conv)),
        nn.Sequential(inception_v3_b(288, conv),
                      *[inception_v3_c(768, inner, conv) for inner in (128, 160, 160, 192)]),
        nn.Sequential(inception_v3_d(768, conv), inception_v3_e(1280, conv), inception_v3_e(2048, conv)),
    )


class InceptionV3(InceptionNet):
    """Inception-v3 with timm's model API; ``aux_logits=True`` adds the auxiliary classifier
    (``forward`` then returns ``(logits, aux_logits)``)."""
    stage_chs = STAGE_CHS
    aux_taps = (('aux_head', f'stages.{AUX_STAGE}'),)

    def build_stages(self, in_chans: int, *, act_layer, norm_layer) -> nn.Sequential:
        return inception_v3_stages(in_chans, act_layer=act_layer, norm_layer=norm_layer)

    def build_aux_head(self, name: str, num_classes: int, *, act_layer, norm_layer) -> AuxClassifier:
        conv = partial(inception_conv, act_layer=act_layer, norm_layer=norm_layer)
        return inception_v3_aux(STAGE_CHS[AUX_STAGE], num_classes, conv)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """As torchvision / timm: truncated normal, std 0.1 (0.01 and 0.001 in the auxiliary classifier)."""
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = 0.1
                if name.startswith('aux_head.conv1'):
                    std = 0.01
                elif name.startswith('aux_head.fc'):
                    std = 0.001
                trunc_normal_(m.weight, std=std)




# torchvision's (with the auxiliary classifier), TensorFlow-slim's and Gluon's weights, as timm has them
default_cfgs = inception_cfgs({'inception_v3': ('tv_in1k', 'tf_in1k', 'gluon_in1k')})


# timm's InceptionV3 module names → ours. Mixed_* blocks: timm's branch names per block type → our Parallel paths.
_BRANCHES = {
    'a': {'branch1x1': 'branch0', 'branch5x5_1': 'branch1.0', 'branch5x5_2': 'branch1.1',
          'branch3x3dbl_1': 'branch2.0', 'branch3x3dbl_2': 'branch2.1', 'branch3x3dbl_3': 'branch2.2',
          'branch_pool': 'branch3.1'},
    'b': {'branch3x3': 'branch0',
          'branch3x3dbl_1': 'branch1.0', 'branch3x3dbl_2': 'branch1.1', 'branch3x3dbl_3': 'branch1.2'},
    'c': {'branch1x1': 'branch0',
          **{f'branch7x7_{i + 1}': f'branch1.{i}' for i in range(3)},
          **{f'branch7x7dbl_{i + 1}': f'branch2.{i}' for i in range(5)},
          'branch_pool': 'branch3.1'},
    'd': {'branch3x3_1': 'branch0.0', 'branch3x3_2': 'branch0.1',
          **{f'branch7x7x3_{i + 1}': f'branch1.{i}' for i in range(4)}},
    'e': {'branch1x1': 'branch0',
          'branch3x3_1': 'branch1.0', 'branch3x3_2a': 'branch1.1.branch0', 'branch3x3_2b': 'branch1.1.branch1',
          'branch3x3dbl_1': 'branch2.0', 'branch3x3dbl_2': 'branch2.1',
          'branch3x3dbl_3a': 'branch2.2.branch0', 'branch3x3dbl_3b': 'branch2.2.branch1',
          'branch_pool': 'branch3.1'},
}
_TIMM_BLOCKS = {
    'Conv2d_1a_3x3': ('stages.0.0', None), 'Conv2d_2a_3x3': ('stages.0.1', None), 'Conv2d_2b_3x3': ('stages.0.2', None),
    'Conv2d_3b_1x1': ('stages.1.1', None), 'Conv2d_4a_3x3': ('stages.1.2', None),
    'Mixed_5b': ('stages.2.1', _BRANCHES['a']), 'Mixed_5c': ('stages.2.2', _BRANCHES['a']),
    'Mixed_5d': ('stages.2.3', _BRANCHES['a']),
    'Mixed_6a': ('stages.3.0', _BRANCHES['b']),
    **{f'Mixed_6{c}': (f'stages.3.{i + 1}', _BRANCHES['c']) for i, c in enumerate('bcde')},
    'Mixed_7a': ('stages.4.0', _BRANCHES['d']),
    'Mixed_7b': ('stages.4.1', _BRANCHES['e']), 'Mixed_7c': ('stages.4.2', _BRANCHES['e']),
    'fc': ('head.fc', None),
    'AuxLogits': ('aux_head', None),  # conv0, conv1, fc keep their names
}
_timm_to_ours = inception_renamer(_TIMM_BLOCKS)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: InceptionV3) -> Dict[str, torch.Tensor]:
    """Map a timm (or torchvision) Inception-v3 checkpoint onto this model, strictly; ours loads unchanged.

    The auxiliary classifier's weights (torchvision's checkpoint has them) are dropped when the model has
    none; a model with one keeps its own initialisation where the checkpoint has none (TF / Gluon weights)
    or where its classifier is for another number of classes.
    """
    return remap_with_aux(state_dict, model, _timm_to_ours, {'AuxLogits': 'aux_head'})


@register_model
def metalayers_inception_v3(pretrained: bool = False, **kwargs) -> InceptionV3:
    """Inception-v3 (auxiliary classifier with ``aux_logits=True``)."""
    return build_inception(InceptionV3, 'metalayers_inception_v3', pretrained, checkpoint_filter_fn, **kwargs)
