"""GoogLeNet (Inception-v1) as Metalhead.jl's ``googlenet``: ``basic_conv_bn`` blocks, inception blocks as
``Parallel`` branches concatenated, a ``create_classifier`` head, on the Inception family's ``InceptionNet``.

Paper: `Going Deeper with Convolutions` - https://arxiv.org/abs/1409.4842

Twin of ``torchvision.models.googlenet(aux_logits=False, transform_input=False)`` (batch norm, 3x3 "5x5"
branch, ceil-mode pools, as torchvision's weights need); torchvision's state dicts load through
``checkpoint_filter_fn`` (their auxiliary classifiers are dropped).
"""
from functools import partial
from typing import Callable, Dict, Optional

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models import register_model

from ..layers import conv_norm
from ._helpers import build_family_model, remap_checkpoint
from ._inception import InceptionNet, Parallel, inception_conv, inception_renamer
from ._torchvision import torchvision_pretrained_cfgs

__all__ = ['GoogLeNet', 'inception_block', 'googlenet_stages', 'GOOGLENET_BLOCKS', 'checkpoint_filter_fn']

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


def googlenet_stages(in_chans: int = 3, *, act_layer='relu', norm_layer=None, batchnorm: bool = True,
                     branch3_kernel: int = 3) -> nn.Sequential:
    """The mid-level constructor (Metalhead's ``googlenet`` backbone): five stages, output strides 2 ... 32.

    ``batchnorm=False`` gives Metalhead's default (biased convs, no norm); True (torchvision's) a batch norm
    (eps 1e-3) after every conv, or ``norm_layer`` where given.
    """
    if batchnorm:
        conv = partial(inception_conv, act_layer=act_layer, norm_layer=norm_layer)
    else:
        def conv(k, cin, cout, *, stride=1, pad=0):
            return nn.Sequential(*conv_norm(k, cin, cout, act_layer, norm_layer=None, stride=stride, pad=pad))
    stages = [
        nn.Sequential(conv(7, in_chans, 64, stride=2, pad=3)),
        nn.Sequential(nn.MaxPool2d(3, stride=2, ceil_mode=True), conv(1, 64, 64), conv(3, 64, 192, pad=1)),
    ]
    inplanes = 192
    for pool_kernel, blocks in GOOGLENET_BLOCKS:
        modules = [nn.MaxPool2d(pool_kernel, stride=2, ceil_mode=True)]
        for widths in blocks:
            modules.append(inception_block(inplanes, *widths, conv=conv, branch3_kernel=branch3_kernel))
            inplanes = widths[0] + widths[2] + widths[4] + widths[5]
        stages.append(nn.Sequential(*modules))
    return nn.Sequential(*stages)


class GoogLeNet(InceptionNet):
    """GoogLeNet with timm's model API (``batchnorm``, ``branch3_kernel``: see ``googlenet_stages``).

    torchvision's auxiliary classifiers are not built (``aux_logits=True`` is refused)."""
    stage_chs = STAGE_CHS

    def build_stages(self, in_chans: int, *, act_layer, norm_layer, batchnorm: bool = True,
                     branch3_kernel: int = 3) -> nn.Sequential:
        return googlenet_stages(in_chans, act_layer=act_layer, norm_layer=norm_layer, batchnorm=batchnorm,
                                branch3_kernel=branch3_kernel)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """As torchvision: truncated normal (std 0.01, cut at +-2) convs and Linear layers."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.01, a=-2, b=2)


# torchvision's names: conv1 ... conv3, inception3a ... 5b (branch1 ... branch4, BasicConv2d conv / bn), fc;
# aux1 / aux2 are the auxiliary classifiers we do not build.
_BRANCHES = {'branch1': 'branch0', 'branch2': 'branch1', 'branch3': 'branch2', 'branch4': 'branch3'}
_TORCHVISION_BLOCKS = {
    'conv1': ('stages.0.0', None), 'conv2': ('stages.1.1', None), 'conv3': ('stages.1.2', None),
    'inception3a': ('stages.2.1', _BRANCHES), 'inception3b': ('stages.2.2', _BRANCHES),
    **{f'inception4{c}': (f'stages.3.{i + 1}', _BRANCHES) for i, c in enumerate('abcde')},
    'inception5a': ('stages.4.1', _BRANCHES), 'inception5b': ('stages.4.2', _BRANCHES),
    'fc': ('head.fc', None),
}
_torchvision_to_ours = inception_renamer(_TORCHVISION_BLOCKS)


def _rename(key: str) -> Optional[str]:
    if key.startswith(('aux1.', 'aux2.')):
        return None
    return _torchvision_to_ours(key)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GoogLeNet) -> Dict[str, torch.Tensor]:
    """Map a torchvision ``googlenet`` state dict (or one of ours) onto ``model``, strictly (its auxiliary
    classifiers dropped): ``CheckpointMismatchError`` names every unmapped, missing or mis-shaped key."""
    return remap_checkpoint(state_dict, model, _rename)


default_cfgs = torchvision_pretrained_cfgs(
    {'metalayers_googlenet': ('googlenet', dict(aux_logits=False, transform_input=False, init_weights=True),
                              (7, 7))},
    first_conv='stages.0.0.0')


@register_model
def metalayers_googlenet(pretrained: bool = False, **kwargs) -> GoogLeNet:
    """GoogLeNet (torchvision's ``googlenet`` without auxiliary classifiers)."""
    return build_family_model(GoogLeNet, 'metalayers_googlenet', pretrained, checkpoint_filter_fn, **kwargs)
