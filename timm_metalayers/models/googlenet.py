"""GoogLeNet (Inception-v1) as Metalhead.jl's ``googlenet``: ``basic_conv_bn`` blocks, inception blocks as
``Parallel`` branches concatenated, a ``create_classifier`` head, on the Inception family's ``InceptionNet``.

Paper: `Going Deeper with Convolutions` - https://arxiv.org/abs/1409.4842

Twin of ``torchvision.models.googlenet(aux_logits=False, transform_input=False)`` (batch norm, 3x3 "5x5"
branch, ceil-mode pools, as torchvision's weights need), and with ``aux_logits=True`` of torchvision's model with
its two auxiliary classifiers (Metalhead's ``googlenet`` has none); torchvision's state dicts load through
``checkpoint_filter_fn``.
"""
from collections import OrderedDict
from functools import partial
from typing import Callable, Dict, Sequence

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models import register_model

from ..layers import conv_norm, create_classifier
from ._inception import (
    AuxClassifier, InceptionNet, Parallel, build_inception, inception_conv, inception_renamer, remap_with_aux)
from ._torchvision import torchvision_pretrained_cfgs

__all__ = ['GoogLeNet', 'inception_block', 'googlenet_conv', 'googlenet_stages', 'googlenet_aux', 'GOOGLENET_BLOCKS',
           'checkpoint_filter_fn']

ConvFn = Callable[..., nn.Sequential]

# Each stage after the stem: (max pool kernel, its inception blocks as (out_1x1, red_3x3, out_3x3, red_5x5,
# out_5x5, pool_proj)), the paper's Table 1.
GOOGLENET_BLOCKS = (
    (3, ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))),
    (3, ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
         (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128))),
    (2, ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))),
)
STAGE_CHS = (64, 192, 480, 832, 1024)


def inception_block(inplanes: int, out_1x1: int, red_3x3: int, out_3x3: int, red_5x5: int, out_5x5: int,
                    pool_proj: int, conv: ConvFn = inception_conv, branch3_kernel: int = 3) -> Parallel:
    """Metalhead's ``inceptionblock``: 1x1 | 1x1 → 3x3 | 1x1 → k x k | 3x3 max pool → 1x1, concatenated.

    ``branch3_kernel`` is the "5x5" branch's kernel: 5 in the paper and Metalhead, 3 in torchvision (whose
    weights need it)."""
    return Parallel(
        conv(1, inplanes, out_1x1),
        nn.Sequential(conv(1, inplanes, red_3x3), conv(3, red_3x3, out_3x3, pad=1)),
        nn.Sequential(conv(1, inplanes, red_5x5), conv(branch3_kernel, red_5x5, out_5x5, pad=branch3_kernel // 2)),
        nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), conv(1, inplanes, pool_proj)),
    )


def block_width(widths: Sequence[int]) -> int:
    """The output width of an inception block of ``GOOGLENET_BLOCKS``: its four branches concatenated."""
    return widths[0] + widths[2] + widths[4] + widths[5]


def googlenet_conv(*, act_layer='relu', norm_layer=None, batchnorm: bool = True) -> ConvFn:
    """GoogLeNet's conv block: ``inception_conv`` (a batch norm with eps 1e-3, or ``norm_layer``, after the conv:
    torchvision's) or, with ``batchnorm=False``, a biased conv without norm (Metalhead's default)."""
    if batchnorm:
        return partial(inception_conv, act_layer=act_layer, norm_layer=norm_layer)

    def conv(k, cin, cout, *, stride=1, pad=0):
        return nn.Sequential(*conv_norm(k, cin, cout, act_layer, norm_layer=None, stride=stride, pad=pad))
    return conv


def googlenet_stages(in_chans: int = 3, *, act_layer='relu', norm_layer=None, batchnorm: bool = True,
                     branch3_kernel: int = 3) -> nn.Sequential:
    """The mid-level constructor (Metalhead's ``googlenet`` backbone): five stages, output strides 2 ... 32.

    ``batchnorm=False`` gives Metalhead's default (biased convs, no norm); True (torchvision's) a batch norm
    (eps 1e-3) after every conv, or ``norm_layer`` where given.
    """
    conv = googlenet_conv(act_layer=act_layer, norm_layer=norm_layer, batchnorm=batchnorm)
    stages = [
        nn.Sequential(conv(7, in_chans, 64, stride=2, pad=3)),
        nn.Sequential(nn.MaxPool2d(3, stride=2, ceil_mode=True), conv(1, 64, 64), conv(3, 64, 192, pad=1)),
    ]
    inplanes = 192
    for pool_kernel, blocks in GOOGLENET_BLOCKS:
        modules = [nn.MaxPool2d(pool_kernel, stride=2, ceil_mode=True)]
        for widths in blocks:
            modules.append(inception_block(inplanes, *widths, conv=conv, branch3_kernel=branch3_kernel))
            inplanes = block_width(widths)
        stages.append(nn.Sequential(*modules))
    return nn.Sequential(*stages)


def googlenet_aux(inplanes: int, num_classes: int, conv: ConvFn = inception_conv, *, act_layer='relu',
                  drop_rate: float = 0.7) -> AuxClassifier:
    """torchvision's ``InceptionAux``: 4x4 adaptive mean pool → 1x1 conv to 128 → flatten → the hidden form of
    ``create_classifier`` (1024 units with ``act_layer``, dropout ``drop_rate``, ``fc``)."""
    layers = OrderedDict(pool=nn.AdaptiveAvgPool2d(4), conv0=conv(1, inplanes, 128), flatten=nn.Flatten(1))
    return AuxClassifier(layers, create_classifier(128 * 4 * 4, 1024, num_classes, (act_layer, None), pool_layer=None,
                                                   dropout_prob=drop_rate))


# torchvision's auxiliary classifiers: (our name, the inception block of the 14x14 stage they read: 4a, 4d),
# in the order forward returns them (torchvision's GoogLeNetOutputs: logits, aux_logits2, aux_logits1)
AUX_BLOCKS = (('aux_head2', 3), ('aux_head1', 0))
AUX_STAGE = 3


class GoogLeNet(InceptionNet):
    """GoogLeNet with timm's model API (``batchnorm``, ``branch3_kernel``: see ``googlenet_stages``).

    ``aux_logits=True`` adds torchvision's auxiliary classifiers (``aux_head1`` after inception 4a, ``aux_head2``
    after 4d; ``googlenet_aux``), and ``forward`` returns ``(logits, aux_logits2, aux_logits1)`` in training and
    evaluation, in the order of torchvision's ``GoogLeNetOutputs``."""
    stage_chs = STAGE_CHS
    aux_taps = tuple((name, f'stages.{AUX_STAGE}.{block + 1}') for name, block in AUX_BLOCKS)  # after the max pool

    def build_stages(self, in_chans: int, *, act_layer, norm_layer, batchnorm: bool = True,
                     branch3_kernel: int = 3) -> nn.Sequential:
        return googlenet_stages(in_chans, act_layer=act_layer, norm_layer=norm_layer, batchnorm=batchnorm,
                                branch3_kernel=branch3_kernel)

    def build_aux_head(self, name: str, num_classes: int, *, act_layer, norm_layer, batchnorm: bool = True,
                       branch3_kernel: int = 3) -> AuxClassifier:
        block = dict(AUX_BLOCKS)[name]
        inplanes = block_width(GOOGLENET_BLOCKS[AUX_STAGE - 2][1][block])
        conv = googlenet_conv(act_layer=act_layer, norm_layer=norm_layer, batchnorm=batchnorm)
        return googlenet_aux(inplanes, num_classes, conv, act_layer=act_layer)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """As torchvision: truncated normal (std 0.01, cut at +-2) convs and Linear layers."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.01, a=-2, b=2)


# torchvision's names: conv1 ... conv3, inception3a ... 5b (branch1 ... branch4, BasicConv2d conv / bn), fc;
# aux1 / aux2, the auxiliary classifiers (conv, fc1, fc2).
_BRANCHES = {'branch1': 'branch0', 'branch2': 'branch1', 'branch3': 'branch2', 'branch4': 'branch3'}
_AUX_PARTS = {'conv': 'conv0', 'fc1': 'hidden', 'fc2': 'fc'}
_TORCHVISION_BLOCKS = {
    'conv1': ('stages.0.0', None), 'conv2': ('stages.1.1', None), 'conv3': ('stages.1.2', None),
    'inception3a': ('stages.2.1', _BRANCHES), 'inception3b': ('stages.2.2', _BRANCHES),
    **{f'inception4{c}': (f'stages.3.{i + 1}', _BRANCHES) for i, c in enumerate('abcde')},
    'inception5a': ('stages.4.1', _BRANCHES), 'inception5b': ('stages.4.2', _BRANCHES),
    'fc': ('head.fc', None),
    'aux1': ('aux_head1', _AUX_PARTS), 'aux2': ('aux_head2', _AUX_PARTS),
}
_torchvision_to_ours = inception_renamer(_TORCHVISION_BLOCKS)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GoogLeNet) -> Dict[str, torch.Tensor]:
    """Map a torchvision ``googlenet`` state dict (or one of ours) onto ``model``, strictly:
    ``CheckpointMismatchError`` names every unmapped, missing or mis-shaped key. Its auxiliary classifiers load
    into a model with ``aux_logits=True`` and are dropped for one without (``remap_with_aux``)."""
    return remap_with_aux(state_dict, model, _torchvision_to_ours, {'aux1': 'aux_head1', 'aux2': 'aux_head2'})


default_cfgs = torchvision_pretrained_cfgs(
    {'metalayers_googlenet': ('googlenet', dict(aux_logits=False, transform_input=False, init_weights=True),
                              (7, 7))},
    first_conv='stages.0.0.0')


@register_model
def metalayers_googlenet(pretrained: bool = False, **kwargs) -> GoogLeNet:
    """GoogLeNet (torchvision's ``googlenet``; its auxiliary classifiers with ``aux_logits=True``)."""
    return build_inception(GoogLeNet, 'metalayers_googlenet', pretrained, checkpoint_filter_fn, **kwargs)
