"""Inception-ResNet-v2, composed from Metalhead's layers: ``basic_conv_bn`` blocks in ``Parallel`` branches,
scaled residual blocks with ``StochasticDepth`` scheduled by ``linear_scheduler``, a ``create_classifier`` head.

Paper: `Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning`
- https://arxiv.org/abs/1602.07261

Loads timm's ImageNet weights (``inception_resnet_v2.tf_in1k``) through ``checkpoint_filter_fn``.
"""
from functools import partial
from typing import Callable, Dict, Optional

import torch
from torch import nn
from timm.models import register_model

from ..layers import basic_conv_bn, linear_scheduler
from ._helpers import build_family_model, remap_checkpoint
from ._inception import (
    InceptionNet, Parallel, ScaledResidual, inception_cfgs, inception_conv, inception_renamer)

__all__ = ['InceptionResNetV2', 'inception_resnet_v2_stages']

ConvFn = Callable[..., nn.Sequential]


def _projection(inplanes: int, outplanes: int) -> nn.Sequential:
    # the residual branch ends in a plain 1x1 convolution with bias (no norm, no activation)
    return nn.Sequential(*basic_conv_bn(1, inplanes, outplanes, None, batchnorm=False))


# Metalhead's mixed_5b, block35, mixed_6a, block17, mixed_7a, block8.

def mixed_5b(conv: ConvFn = inception_conv) -> Parallel:
    """Stem end: 192 → 320 channels at 35x35."""
    return Parallel(
        conv(1, 192, 96),
        nn.Sequential(conv(1, 192, 48), conv(5, 48, 64, pad=2)),
        nn.Sequential(conv(1, 192, 64), conv(3, 64, 96, pad=1), conv(3, 96, 96, pad=1)),
        nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), conv(1, 192, 64)),
    )


def block35(scale: float = 1.0, drop_prob: Optional[float] = None, conv: ConvFn = inception_conv,
            act_layer='relu') -> ScaledResidual:
    """Inception-ResNet-A (35x35, 320 channels)."""
    return ScaledResidual(
        Parallel(
            conv(1, 320, 32),
            nn.Sequential(conv(1, 320, 32), conv(3, 32, 32, pad=1)),
            nn.Sequential(conv(1, 320, 32), conv(3, 32, 48, pad=1), conv(3, 48, 64, pad=1)),
        ),
        _projection(128, 320), scale, drop_prob, act_layer)


def mixed_6a(conv: ConvFn = inception_conv) -> Parallel:
    """Reduction-A: 35 → 17, 320 → 1088 channels."""
    return Parallel(
        conv(3, 320, 384, stride=2),
        nn.Sequential(conv(1, 320, 256), conv(3, 256, 256, pad=1), conv(3, 256, 384, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def block17(scale: float = 1.0, drop_prob: Optional[float] = None, conv: ConvFn = inception_conv,
            act_layer='relu') -> ScaledResidual:
    """Inception-ResNet-B (17x17, 1088 channels)."""
    return ScaledResidual(
        Parallel(
            conv(1, 1088, 192),
            nn.Sequential(conv(1, 1088, 128), conv((1, 7), 128, 160, pad=(0, 3)), conv((7, 1), 160, 192, pad=(3, 0))),
        ),
        _projection(384, 1088), scale, drop_prob, act_layer)


def mixed_7a(conv: ConvFn = inception_conv) -> Parallel:
    """Reduction-B: 17 → 8, 1088 → 2080 channels."""
    return Parallel(
        nn.Sequential(conv(1, 1088, 256), conv(3, 256, 384, stride=2)),
        nn.Sequential(conv(1, 1088, 256), conv(3, 256, 288, stride=2)),
        nn.Sequential(conv(1, 1088, 256), conv(3, 256, 288, pad=1), conv(3, 288, 320, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def block8(scale: float = 1.0, drop_prob: Optional[float] = None, conv: ConvFn = inception_conv,
           act_layer='relu') -> ScaledResidual:
    """Inception-ResNet-C (8x8, 2080 channels); the last one has no activation (``act_layer=None``)."""
    return ScaledResidual(
        Parallel(
            conv(1, 2080, 192),
            nn.Sequential(conv(1, 2080, 192), conv((1, 3), 192, 224, pad=(0, 1)), conv((3, 1), 224, 256, pad=(1, 0))),
        ),
        _projection(448, 2080), scale, drop_prob, act_layer)


STAGE_CHS = (64, 192, 320, 1088, 1536)
BLOCK_REPEATS = (10, 20, 9)  # block35, block17, block8 (then one final block8 without activation)
NUM_RESIDUAL_BLOCKS = sum(BLOCK_REPEATS) + 1


def inception_resnet_v2_stages(in_chans: int = 3, *, drop_path_rate: Optional[float] = None, act_layer='relu',
                               norm_layer=None) -> nn.Sequential:
    """The mid-level constructor (Metalhead's ``inceptionresnetv2`` backbone): five stages, output strides 2 ... 32.

    ``drop_path_rate`` is spread over the 40 residual blocks by ``linear_scheduler``.
    """
    conv = partial(inception_conv, act_layer=act_layer, norm_layer=norm_layer)
    drop_probs = iter(linear_scheduler(drop_path_rate, depth=NUM_RESIDUAL_BLOCKS))
    n35, n17, n8 = BLOCK_REPEATS
    return nn.Sequential(
        nn.Sequential(conv(3, in_chans, 32, stride=2), conv(3, 32, 32), conv(3, 32, 64, pad=1)),
        nn.Sequential(nn.MaxPool2d(3, stride=2), conv(1, 64, 80), conv(3, 80, 192)),
        nn.Sequential(nn.MaxPool2d(3, stride=2), mixed_5b(conv),
                      *[block35(0.17, next(drop_probs), conv, act_layer) for _ in range(n35)]),
        nn.Sequential(mixed_6a(conv), *[block17(0.10, next(drop_probs), conv, act_layer) for _ in range(n17)]),
        nn.Sequential(mixed_7a(conv), *[block8(0.20, next(drop_probs), conv, act_layer) for _ in range(n8)],
                      block8(1.0, next(drop_probs), conv, act_layer=None),
                      conv(1, 2080, STAGE_CHS[-1])),
    )


class InceptionResNetV2(InceptionNet):
    """Inception-ResNet-v2 with timm's model API; ``drop_path_rate`` is stochastic depth over its residual blocks."""
    stage_chs = STAGE_CHS

    def build_stages(self, in_chans: int, *, act_layer, norm_layer, drop_path_rate: float = 0.) -> nn.Sequential:
        return inception_resnet_v2_stages(in_chans, drop_path_rate=drop_path_rate, act_layer=act_layer,
                                          norm_layer=norm_layer)


def _create_inception_resnet_v2(variant: str, pretrained: bool = False, **kwargs) -> InceptionResNetV2:
    return build_family_model(InceptionResNetV2, variant, pretrained, checkpoint_filter_fn, **kwargs)



# TensorFlow-slim weights, ported by timm
default_cfgs = inception_cfgs({'inception_resnet_v2': ('tf_in1k',)})


def _timm_blocks() -> Dict:
    residual = {'branch0': 'branches.branch0', 'branch1': 'branches.branch1', 'branch2': 'branches.branch2',
                'conv2d': 'proj.0'}
    n35, n17, n8 = BLOCK_REPEATS
    return {
        'conv2d_1a': ('stages.0.0', None), 'conv2d_2a': ('stages.0.1', None), 'conv2d_2b': ('stages.0.2', None),
        'conv2d_3b': ('stages.1.1', None), 'conv2d_4a': ('stages.1.2', None),
        'mixed_5b': ('stages.2.1', None),
        **{f'repeat.{i}': (f'stages.2.{i + 2}', residual) for i in range(n35)},
        'mixed_6a': ('stages.3.0', None),
        **{f'repeat_1.{i}': (f'stages.3.{i + 1}', residual) for i in range(n17)},
        'mixed_7a': ('stages.4.0', None),
        **{f'repeat_2.{i}': (f'stages.4.{i + 1}', residual) for i in range(n8)},
        'block8': (f'stages.4.{n8 + 1}', residual),
        'conv2d_7b': (f'stages.4.{n8 + 2}', None),
        'classif': ('head.fc', None),
    }


_timm_to_ours = inception_renamer(_timm_blocks())


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: InceptionResNetV2) -> Dict[str, torch.Tensor]:
    """Map a timm Inception-ResNet-v2 checkpoint onto this model, strictly (every key, every shape);
    ours loads unchanged."""
    return remap_checkpoint(state_dict, model, _timm_to_ours)


@register_model
def metalayers_inception_resnet_v2(pretrained: bool = False, **kwargs) -> InceptionResNetV2:
    """Inception-ResNet-v2 (``drop_path_rate`` → stochastic depth over its 40 residual blocks)."""
    return _create_inception_resnet_v2('metalayers_inception_resnet_v2', pretrained=pretrained, **kwargs)
