"""Inception-v4, composed from Metalhead's layers: ``basic_conv_bn`` blocks in ``Parallel`` branches,
a ``create_classifier`` head.

Paper: `Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning`
- https://arxiv.org/abs/1602.07261

Loads timm's ImageNet weights (``inception_v4.tf_in1k``) through ``checkpoint_filter_fn``.
"""
from functools import partial
from typing import Callable, Dict

import torch
from torch import nn
from timm.models import register_model

from ._helpers import build_family_model, remap_checkpoint
from ._inception import (
    InceptionNet, Parallel, inception_cfgs, inception_conv, inception_renamer)

__all__ = ['InceptionV4', 'inception_v4_stages']

ConvFn = Callable[..., nn.Sequential]


def _mean_pool() -> nn.AvgPool2d:
    # TF-slim's 3x3 'SAME' average pool: the padding is not counted
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


# Stem blocks and inception blocks, Metalhead's mixed_3a ... inceptionv4_c.

def mixed_3a(conv: ConvFn = inception_conv) -> Parallel:
    """Stem: 3x3/2 max pool | 3x3/2 conv (64 → 160 channels)."""
    return Parallel(nn.MaxPool2d(3, stride=2), conv(3, 64, 96, stride=2))


def mixed_4a(conv: ConvFn = inception_conv) -> Parallel:
    """Stem: 1x1 → 3x3 | 1x1 → 1x7 → 7x1 → 3x3, all valid (160 → 192 channels)."""
    return Parallel(
        nn.Sequential(conv(1, 160, 64), conv(3, 64, 96)),
        nn.Sequential(conv(1, 160, 64), conv((1, 7), 64, 64, pad=(0, 3)), conv((7, 1), 64, 64, pad=(3, 0)),
                      conv(3, 64, 96)),
    )


def mixed_5a(conv: ConvFn = inception_conv) -> Parallel:
    """Stem: 3x3/2 conv | 3x3/2 max pool (192 → 384 channels)."""
    return Parallel(conv(3, 192, 192, stride=2), nn.MaxPool2d(3, stride=2))


def inception_v4_a(conv: ConvFn = inception_conv) -> Parallel:
    """35x35 block (Fig. 4 of the paper), 384 channels."""
    return Parallel(
        conv(1, 384, 96),
        nn.Sequential(conv(1, 384, 64), conv(3, 64, 96, pad=1)),
        nn.Sequential(conv(1, 384, 64), conv(3, 64, 96, pad=1), conv(3, 96, 96, pad=1)),
        nn.Sequential(_mean_pool(), conv(1, 384, 96)),
    )


def reduction_a(conv: ConvFn = inception_conv) -> Parallel:
    """35 → 17 grid reduction (Fig. 7, k=192, l=224, m=256, n=384), 384 → 1024 channels."""
    return Parallel(
        conv(3, 384, 384, stride=2),
        nn.Sequential(conv(1, 384, 192), conv(3, 192, 224, pad=1), conv(3, 224, 256, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def inception_v4_b(conv: ConvFn = inception_conv) -> Parallel:
    """17x17 block (Fig. 5 of the paper), 1024 channels."""
    return Parallel(
        conv(1, 1024, 384),
        nn.Sequential(conv(1, 1024, 192), conv((1, 7), 192, 224, pad=(0, 3)), conv((7, 1), 224, 256, pad=(3, 0))),
        nn.Sequential(conv(1, 1024, 192), conv((7, 1), 192, 192, pad=(3, 0)), conv((1, 7), 192, 224, pad=(0, 3)),
                      conv((7, 1), 224, 224, pad=(3, 0)), conv((1, 7), 224, 256, pad=(0, 3))),
        nn.Sequential(_mean_pool(), conv(1, 1024, 128)),
    )


def reduction_b(conv: ConvFn = inception_conv) -> Parallel:
    """17 → 8 grid reduction (Fig. 8 of the paper), 1024 → 1536 channels."""
    return Parallel(
        nn.Sequential(conv(1, 1024, 192), conv(3, 192, 192, stride=2)),
        nn.Sequential(conv(1, 1024, 256), conv((1, 7), 256, 256, pad=(0, 3)), conv((7, 1), 256, 320, pad=(3, 0)),
                      conv(3, 320, 320, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def inception_v4_c(conv: ConvFn = inception_conv) -> Parallel:
    """8x8 block (Fig. 6 of the paper), its last convolutions split into parallel 1x3 and 3x1, 1536 channels."""
    return Parallel(
        conv(1, 1536, 256),
        nn.Sequential(conv(1, 1536, 384),
                      Parallel(conv((1, 3), 384, 256, pad=(0, 1)), conv((3, 1), 384, 256, pad=(1, 0)))),
        nn.Sequential(conv(1, 1536, 384), conv((3, 1), 384, 448, pad=(1, 0)), conv((1, 3), 448, 512, pad=(0, 1)),
                      Parallel(conv((1, 3), 512, 256, pad=(0, 1)), conv((3, 1), 512, 256, pad=(1, 0)))),
        nn.Sequential(_mean_pool(), conv(1, 1536, 256)),
    )


STAGE_CHS = (64, 160, 384, 1024, 1536)


def inception_v4_stages(in_chans: int = 3, *, act_layer='relu', norm_layer=None) -> nn.Sequential:
    """The mid-level constructor (Metalhead's ``inceptionv4`` backbone): five stages, output strides 2 ... 32."""
    conv = partial(inception_conv, act_layer=act_layer, norm_layer=norm_layer)
    return nn.Sequential(
        nn.Sequential(conv(3, in_chans, 32, stride=2), conv(3, 32, 32), conv(3, 32, 64, pad=1)),
        nn.Sequential(mixed_3a(conv)),
        nn.Sequential(mixed_4a(conv), mixed_5a(conv), *[inception_v4_a(conv) for _ in range(4)]),
        nn.Sequential(reduction_a(conv), *[inception_v4_b(conv) for _ in range(7)]),
        nn.Sequential(reduction_b(conv), *[inception_v4_c(conv) for _ in range(3)]),
    )


class InceptionV4(InceptionNet):
    """Inception-v4 with timm's model API."""
    stage_chs = STAGE_CHS

    def build_stages(self, in_chans: int, *, act_layer, norm_layer) -> nn.Sequential:
        return inception_v4_stages(in_chans, act_layer=act_layer, norm_layer=norm_layer)


def _create_inception_v4(variant: str, pretrained: bool = False, **kwargs) -> InceptionV4:
    return build_family_model(InceptionV4, variant, pretrained, checkpoint_filter_fn, **kwargs)



# TensorFlow-slim weights, ported by timm
default_cfgs = inception_cfgs({'inception_v4': ('tf_in1k',)})


def _timm_blocks() -> Dict:
    """timm's InceptionV4 is one ``features`` Sequential (22 modules); ours five stages of the same modules."""
    stage_lens = (3, 1, 6, 8, 4)
    paths = [f'stages.{s}.{i}' for s, n in enumerate(stage_lens) for i in range(n)]
    children = {
        3: {'conv': 'branch1'},  # Mixed3a: maxpool | conv
        5: {'conv': 'branch0'},  # Mixed5a: conv | maxpool
        **{i: {'branch1_0': 'branch1.0', 'branch1_1a': 'branch1.1.branch0', 'branch1_1b': 'branch1.1.branch1',
               'branch2_0': 'branch2.0', 'branch2_1': 'branch2.1', 'branch2_2': 'branch2.2',
               'branch2_3a': 'branch2.3.branch0', 'branch2_3b': 'branch2.3.branch1'}
           for i in (19, 20, 21)},  # InceptionC
    }
    blocks = {f'features.{i}': (path, children.get(i)) for i, path in enumerate(paths)}
    blocks['last_linear'] = ('head.fc', None)
    return blocks


_timm_to_ours = inception_renamer(_timm_blocks())


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: InceptionV4) -> Dict[str, torch.Tensor]:
    """Map a timm Inception-v4 checkpoint onto this model, strictly (every key, every shape); ours loads unchanged."""
    return remap_checkpoint(state_dict, model, _timm_to_ours)


@register_model
def metalayers_inception_v4(pretrained: bool = False, **kwargs) -> InceptionV4:
    """Inception-v4."""
    return _create_inception_v4('metalayers_inception_v4', pretrained=pretrained, **kwargs)
