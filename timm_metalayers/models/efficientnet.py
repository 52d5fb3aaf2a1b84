"""The inverted-residual families of timm's ``efficientnet.py``, each a config table on ``invresmodel``:
EfficientNet B0-B7 (and its TensorFlow-ported twin), EfficientNetV2 S/M/L/XL, MobileNetV1, MobileNetV2 and
MNASNet. They load timm's Hub weights through one ``checkpoint_filter_fn``.

Papers: EfficientNet https://arxiv.org/abs/1905.11946, EfficientNetV2 https://arxiv.org/abs/2104.00298,
MobileNetV1 https://arxiv.org/abs/1704.04861, MobileNetV2 https://arxiv.org/abs/1801.04381,
MNASNet https://arxiv.org/abs/1807.11626.
"""
import functools
from typing import Dict, List, Tuple

import torch
from torch import nn
from timm.layers import make_divisible
from timm.models import register_model

from ..layers import dwsep_conv_norm, fused_mbconv, mbconv
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs
from ._invres import InvResNet, Row, invres_renamer, invresmodel

__all__ = ['INVRES_CONFIGS', 'EFFICIENTNET_SCALES', 'checkpoint_filter_fn', 'efficientnet', 'efficientnetv2',
           'mobilenetv1', 'mobilenetv2', 'mnasnet']

# Config tables, one row per stage: (block, kernel, outplanes, expansion, stride, repeats, se_ratio).
INVRES_CONFIGS: Dict[str, List[Row]] = {
    'efficientnet': [
        (mbconv, 3, 16, 1, 1, 1, 0.25),
        (mbconv, 3, 24, 6, 2, 2, 0.25),
        (mbconv, 5, 40, 6, 2, 2, 0.25),
        (mbconv, 3, 80, 6, 2, 3, 0.25),
        (mbconv, 5, 112, 6, 1, 3, 0.25),
        (mbconv, 5, 192, 6, 2, 4, 0.25),
        (mbconv, 3, 320, 6, 1, 1, 0.25),
    ],
    'efficientnetv2_s': [
        (fused_mbconv, 3, 24, 1, 1, 2, None),
        (fused_mbconv, 3, 48, 4, 2, 4, None),
        (fused_mbconv, 3, 64, 4, 2, 4, None),
        (mbconv, 3, 128, 4, 2, 6, 0.25),
        (mbconv, 3, 160, 6, 1, 9, 0.25),
        (mbconv, 3, 256, 6, 2, 15, 0.25),
    ],
    'efficientnetv2_m': [
        (fused_mbconv, 3, 24, 1, 1, 3, None),
        (fused_mbconv, 3, 48, 4, 2, 5, None),
        (fused_mbconv, 3, 80, 4, 2, 5, None),
        (mbconv, 3, 160, 4, 2, 7, 0.25),
        (mbconv, 3, 176, 6, 1, 14, 0.25),
        (mbconv, 3, 304, 6, 2, 18, 0.25),
        (mbconv, 3, 512, 6, 1, 5, 0.25),
    ],
    'efficientnetv2_l': [
        (fused_mbconv, 3, 32, 1, 1, 4, None),
        (fused_mbconv, 3, 64, 4, 2, 7, None),
        (fused_mbconv, 3, 96, 4, 2, 7, None),
        (mbconv, 3, 192, 4, 2, 10, 0.25),
        (mbconv, 3, 224, 6, 1, 19, 0.25),
        (mbconv, 3, 384, 6, 2, 25, 0.25),
        (mbconv, 3, 640, 6, 1, 7, 0.25),
    ],
    'efficientnetv2_xl': [
        (fused_mbconv, 3, 32, 1, 1, 4, None),
        (fused_mbconv, 3, 64, 4, 2, 8, None),
        (fused_mbconv, 3, 96, 4, 2, 8, None),
        (mbconv, 3, 192, 4, 2, 16, 0.25),
        (mbconv, 3, 256, 6, 1, 24, 0.25),
        (mbconv, 3, 512, 6, 2, 32, 0.25),
        (mbconv, 3, 640, 6, 1, 8, 0.25),
    ],
    'mobilenetv1': [
        (dwsep_conv_norm, 3, 64, 1, 1, 1, None),
        (dwsep_conv_norm, 3, 128, 1, 2, 2, None),
        (dwsep_conv_norm, 3, 256, 1, 2, 2, None),
        (dwsep_conv_norm, 3, 512, 1, 2, 6, None),
        (dwsep_conv_norm, 3, 1024, 1, 2, 2, None),
    ],
    'mobilenetv2': [
        (mbconv, 3, 16, 1, 1, 1, None),
        (mbconv, 3, 24, 6, 2, 2, None),
        (mbconv, 3, 32, 6, 2, 3, None),
        (mbconv, 3, 64, 6, 2, 4, None),
        (mbconv, 3, 96, 6, 1, 3, None),
        (mbconv, 3, 160, 6, 2, 3, None),
        (mbconv, 3, 320, 6, 1, 1, None),
    ],
    'mnasnet_b1': [  # Metalhead's MNASNet B1
        (mbconv, 3, 16, 1, 1, 1, None),
        (mbconv, 3, 24, 3, 2, 3, None),
        (mbconv, 5, 40, 3, 2, 3, None),
        (mbconv, 5, 80, 6, 2, 3, None),
        (mbconv, 3, 96, 6, 1, 2, None),
        (mbconv, 5, 192, 6, 2, 4, None),
        (mbconv, 3, 320, 6, 1, 1, None),
    ],
    'mnasnet_a1': [  # with squeeze-and-excitation
        (mbconv, 3, 16, 1, 1, 1, None),
        (mbconv, 3, 24, 6, 2, 2, None),
        (mbconv, 5, 40, 3, 2, 3, 0.25),
        (mbconv, 3, 80, 6, 2, 4, None),
        (mbconv, 3, 112, 6, 1, 2, 0.25),
        (mbconv, 5, 160, 6, 2, 3, 0.25),
        (mbconv, 3, 320, 6, 1, 1, None),
    ],
    'mnasnet_small': [
        (mbconv, 3, 8, 1, 1, 1, None),
        (mbconv, 3, 16, 3, 2, 1, None),
        (mbconv, 3, 16, 6, 2, 2, None),
        (mbconv, 5, 32, 6, 2, 4, 0.25),
        (mbconv, 3, 32, 6, 1, 3, 0.25),
        (mbconv, 5, 88, 6, 2, 3, 0.25),
        (mbconv, 3, 144, 6, 1, 1, None),
    ],
}

# EfficientNet's compound scaling: name -> (width_mult, depth_mult), the paper's B0-B7.
EFFICIENTNET_SCALES: Dict[str, Tuple[float, float]] = {
    'b0': (1.0, 1.0), 'b1': (1.0, 1.1), 'b2': (1.1, 1.2), 'b3': (1.2, 1.4),
    'b4': (1.4, 1.8), 'b5': (1.6, 2.2), 'b6': (1.8, 2.6), 'b7': (2.0, 3.1),
}
_TF_BATCHNORM = functools.partial(nn.BatchNorm2d, eps=1e-3)  # TensorFlow's batch-norm epsilon


def _tf_ported(kwargs: Dict) -> Dict:
    """The options of a TensorFlow-ported twin: TF "same" padding and batch-norm epsilon 1e-3."""
    kwargs.setdefault('pad', 'same')
    kwargs.setdefault('norm_layer', _TF_BATCHNORM)
    return kwargs


def efficientnet(scale: str = 'b0', **kwargs) -> InvResNet:
    """EfficientNet ``scale`` (``"b0"`` ... ``"b7"``): the B0 table with the paper's width and depth multipliers,
    swish, 1280 x width head; ``kwargs`` go to ``invresmodel``."""
    if scale not in EFFICIENTNET_SCALES:
        raise ValueError(f'scale={scale!r}: use one of {sorted(EFFICIENTNET_SCALES)}')
    width_mult, depth_mult = EFFICIENTNET_SCALES[scale]
    kwargs.setdefault('act_layer', 'swish')
    return invresmodel(INVRES_CONFIGS['efficientnet'], width_mult=width_mult, depth_mult=depth_mult,
                       head_planes=make_divisible(1280 * width_mult, 8, round_limit=0.9), **kwargs)


def efficientnetv2(size: str = 's', **kwargs) -> InvResNet:
    """EfficientNetV2 ``size`` (``"s"``, ``"m"``, ``"l"``, ``"xl"``): fused blocks, then SE mbconvs, SiLU."""
    if f'efficientnetv2_{size}' not in INVRES_CONFIGS:
        raise ValueError(f'size={size!r}: use one of "s", "m", "l", "xl"')
    kwargs.setdefault('act_layer', 'silu')
    return invresmodel(INVRES_CONFIGS[f'efficientnetv2_{size}'], stem_planes=24 if size in ('s', 'm') else 32,
                       head_planes=1280, **kwargs)


def mobilenetv1(width_mult: float = 1.0, **kwargs) -> InvResNet:
    """MobileNetV1: ``dwsep_conv_norm`` stages with ReLU6, no head conv."""
    kwargs.setdefault('act_layer', 'relu6')
    return invresmodel(INVRES_CONFIGS['mobilenetv1'], width_mult=width_mult, head_planes=None, **kwargs)


def mobilenetv2(width_mult: float = 1.0, **kwargs) -> InvResNet:
    """MobileNetV2: linear-bottleneck mbconvs with ReLU6, a head of max(1280, 1280 x width)."""
    kwargs.setdefault('act_layer', 'relu6')
    head_planes = max(1280, make_divisible(1280 * width_mult, 8, round_limit=0.9))
    return invresmodel(INVRES_CONFIGS['mobilenetv2'], width_mult=width_mult, head_planes=head_planes, **kwargs)


def mnasnet(config: str = 'b1', width_mult: float = 1.0, **kwargs) -> InvResNet:
    """MNASNet ``config``: ``"b1"`` (Metalhead's default), ``"a1"`` (with SE) or ``"small"``; ReLU, 1280 head."""
    if f'mnasnet_{config}' not in INVRES_CONFIGS:
        raise ValueError(f'config={config!r}: use one of "b1", "a1", "small"')
    return invresmodel(INVRES_CONFIGS[f'mnasnet_{config}'], width_mult=width_mult,
                       stem_planes=8 if config == 'small' else 32, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# timm's checkpoints: conv_stem/bn1, blocks.{stage}.{block}..., conv_head/bn2, classifier.
_TOP_PARTS = {'conv_stem': 'stem.0', 'bn1': 'stem.1', 'conv_head': 'head_conv.0', 'bn2': 'head_conv.1',
              'classifier': 'head.fc'}

def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: InvResNet) -> Dict[str, torch.Tensor]:
    """Map a checkpoint of timm's EfficientNet class (or one of ours) onto ``model``, strictly.

    Raises ``CheckpointMismatchError`` (a ``ValueError``) naming every unmapped, missing or mis-shaped key.
    """
    return remap_checkpoint(state_dict, model, invres_renamer(model.stages, _TOP_PARTS))


def _create(variant: str, builder, pretrained: bool, **kwargs) -> InvResNet:
    return build_family_model(builder, variant, pretrained, checkpoint_filter_fn, **kwargs)


# The weights are timm's, mapped by checkpoint_filter_fn: every tag timm has for these architectures.
# Tags in timm's order (the first is the default).
_TF_TAGS = ('ns_jft_in1k', 'ap_in1k', 'aa_in1k', 'in1k')
_V2_TAGS = ('in21k_ft_in1k', 'in1k', 'in21k')
default_cfgs = twin_pretrained_cfgs({
    'efficientnet_b0': ('ra_in1k', 'ra4_e3600_r224_in1k'),
    'efficientnet_b1': ('ra4_e3600_r240_in1k', 'ft_in1k'),
    'efficientnet_b2': ('ra_in1k',),
    'efficientnet_b3': ('ra2_in1k',),
    'efficientnet_b4': ('ra2_in1k',),
    'efficientnet_b5': ('sw_in12k_ft_in1k', 'sw_in12k'),
    'efficientnet_b6': ('untrained',),  # timm has no weights: its input size, crop and pool only
    'efficientnet_b7': ('untrained',),
    'tf_efficientnet_b0': _TF_TAGS, 'tf_efficientnet_b1': _TF_TAGS, 'tf_efficientnet_b2': _TF_TAGS,
    'tf_efficientnet_b3': _TF_TAGS, 'tf_efficientnet_b4': _TF_TAGS,
    'tf_efficientnet_b5': ('ns_jft_in1k', 'ap_in1k', 'ra_in1k', 'aa_in1k', 'in1k'),
    'tf_efficientnet_b6': ('ns_jft_in1k', 'ap_in1k', 'aa_in1k'),
    'tf_efficientnet_b7': ('ns_jft_in1k', 'ap_in1k', 'ra_in1k', 'aa_in1k'),
    'tf_efficientnetv2_s': _V2_TAGS,
    'tf_efficientnetv2_m': _V2_TAGS,
    'tf_efficientnetv2_l': _V2_TAGS,
    'tf_efficientnetv2_xl': ('in21k_ft_in1k', 'in21k'),
    'mobilenetv1_100': ('ra4_e3600_r224_in1k',),
    'mobilenetv1_125': ('ra4_e3600_r224_in1k',),
    'mobilenetv2_050': ('lamb_in1k',),
    'mobilenetv2_100': ('ra_in1k',),
    'mobilenetv2_140': ('ra_in1k',),
    'mnasnet_100': ('rmsp_in1k',),
    'semnasnet_100': ('rmsp_in1k',),
    'mnasnet_small': ('lamb_in1k',),
}, first_conv='stem.0', classifier='head.fc')


# -- EfficientNet ------------------------------------------------------------------------------------------
@register_model
def metalayers_efficientnet_b0(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B0 (timm's ``efficientnet_b0``)."""
    return _create('metalayers_efficientnet_b0', efficientnet, pretrained, scale='b0', **kwargs)


@register_model
def metalayers_efficientnet_b1(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B1 (timm's ``efficientnet_b1``)."""
    return _create('metalayers_efficientnet_b1', efficientnet, pretrained, scale='b1', **kwargs)


@register_model
def metalayers_efficientnet_b2(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B2 (timm's ``efficientnet_b2``)."""
    return _create('metalayers_efficientnet_b2', efficientnet, pretrained, scale='b2', **kwargs)


@register_model
def metalayers_efficientnet_b3(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B3 (timm's ``efficientnet_b3``)."""
    return _create('metalayers_efficientnet_b3', efficientnet, pretrained, scale='b3', **kwargs)


@register_model
def metalayers_efficientnet_b4(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B4 (timm's ``efficientnet_b4``)."""
    return _create('metalayers_efficientnet_b4', efficientnet, pretrained, scale='b4', **kwargs)


@register_model
def metalayers_efficientnet_b5(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B5 (timm's ``efficientnet_b5``)."""
    return _create('metalayers_efficientnet_b5', efficientnet, pretrained, scale='b5', **kwargs)


@register_model
def metalayers_efficientnet_b6(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B6 (timm's ``efficientnet_b6``)."""
    return _create('metalayers_efficientnet_b6', efficientnet, pretrained, scale='b6', **kwargs)


@register_model
def metalayers_efficientnet_b7(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B7 (timm's ``efficientnet_b7``)."""
    return _create('metalayers_efficientnet_b7', efficientnet, pretrained, scale='b7', **kwargs)


# -- EfficientNet with TensorFlow's padding and batch-norm epsilon (the ported weights) -----------------------
@register_model
def metalayers_tf_efficientnet_b0(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B0, TF padding / BN eps (timm's ``tf_efficientnet_b0``)."""
    return _create('metalayers_tf_efficientnet_b0', efficientnet, pretrained, scale='b0', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b1(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B1, TF padding / BN eps (timm's ``tf_efficientnet_b1``)."""
    return _create('metalayers_tf_efficientnet_b1', efficientnet, pretrained, scale='b1', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b2(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B2, TF padding / BN eps (timm's ``tf_efficientnet_b2``)."""
    return _create('metalayers_tf_efficientnet_b2', efficientnet, pretrained, scale='b2', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b3(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B3, TF padding / BN eps (timm's ``tf_efficientnet_b3``)."""
    return _create('metalayers_tf_efficientnet_b3', efficientnet, pretrained, scale='b3', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b4(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B4, TF padding / BN eps (timm's ``tf_efficientnet_b4``)."""
    return _create('metalayers_tf_efficientnet_b4', efficientnet, pretrained, scale='b4', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b5(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B5, TF padding / BN eps (timm's ``tf_efficientnet_b5``)."""
    return _create('metalayers_tf_efficientnet_b5', efficientnet, pretrained, scale='b5', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b6(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B6, TF padding / BN eps (timm's ``tf_efficientnet_b6``)."""
    return _create('metalayers_tf_efficientnet_b6', efficientnet, pretrained, scale='b6', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnet_b7(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNet-B7, TF padding / BN eps (timm's ``tf_efficientnet_b7``)."""
    return _create('metalayers_tf_efficientnet_b7', efficientnet, pretrained, scale='b7', **_tf_ported(kwargs))


# -- EfficientNetV2 (TensorFlow-ported) ----------------------------------------------------------------------
@register_model
def metalayers_tf_efficientnetv2_s(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNetV2-S (timm's ``tf_efficientnetv2_s``)."""
    return _create('metalayers_tf_efficientnetv2_s', efficientnetv2, pretrained, size='s', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnetv2_m(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNetV2-M (timm's ``tf_efficientnetv2_m``)."""
    return _create('metalayers_tf_efficientnetv2_m', efficientnetv2, pretrained, size='m', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnetv2_l(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNetV2-L (timm's ``tf_efficientnetv2_l``)."""
    return _create('metalayers_tf_efficientnetv2_l', efficientnetv2, pretrained, size='l', **_tf_ported(kwargs))


@register_model
def metalayers_tf_efficientnetv2_xl(pretrained: bool = False, **kwargs) -> InvResNet:
    """EfficientNetV2-XL (timm's ``tf_efficientnetv2_xl``)."""
    return _create('metalayers_tf_efficientnetv2_xl', efficientnetv2, pretrained, size='xl', **_tf_ported(kwargs))


# -- MobileNetV1 / V2 ----------------------------------------------------------------------------------------
@register_model
def metalayers_mobilenetv1_100(pretrained: bool = False, **kwargs) -> InvResNet:
    """MobileNetV1, width 1.0 (timm's ``mobilenetv1_100``)."""
    return _create('metalayers_mobilenetv1_100', mobilenetv1, pretrained, width_mult=1.0, **kwargs)


@register_model
def metalayers_mobilenetv1_125(pretrained: bool = False, **kwargs) -> InvResNet:
    """MobileNetV1, width 1.25 (timm's ``mobilenetv1_125``)."""
    return _create('metalayers_mobilenetv1_125', mobilenetv1, pretrained, width_mult=1.25, **kwargs)


@register_model
def metalayers_mobilenetv2_050(pretrained: bool = False, **kwargs) -> InvResNet:
    """MobileNetV2, width 0.5 (timm's ``mobilenetv2_050``)."""
    return _create('metalayers_mobilenetv2_050', mobilenetv2, pretrained, width_mult=0.5, **kwargs)


@register_model
def metalayers_mobilenetv2_100(pretrained: bool = False, **kwargs) -> InvResNet:
    """MobileNetV2, width 1.0 (timm's ``mobilenetv2_100``)."""
    return _create('metalayers_mobilenetv2_100', mobilenetv2, pretrained, width_mult=1.0, **kwargs)


@register_model
def metalayers_mobilenetv2_140(pretrained: bool = False, **kwargs) -> InvResNet:
    """MobileNetV2, width 1.4 (timm's ``mobilenetv2_140``)."""
    return _create('metalayers_mobilenetv2_140', mobilenetv2, pretrained, width_mult=1.4, **kwargs)


# -- MNASNet -------------------------------------------------------------------------------------------------
@register_model
def metalayers_mnasnet_100(pretrained: bool = False, **kwargs) -> InvResNet:
    """MNASNet-B1, width 1.0 (timm's ``mnasnet_100``)."""
    return _create('metalayers_mnasnet_100', mnasnet, pretrained, config='b1', **kwargs)


@register_model
def metalayers_semnasnet_100(pretrained: bool = False, **kwargs) -> InvResNet:
    """MNASNet-A1 (with squeeze-excite), width 1.0 (timm's ``semnasnet_100``)."""
    return _create('metalayers_semnasnet_100', mnasnet, pretrained, config='a1', **kwargs)


@register_model
def metalayers_mnasnet_small(pretrained: bool = False, **kwargs) -> InvResNet:
    """MNASNet small (timm's ``mnasnet_small``)."""
    return _create('metalayers_mnasnet_small', mnasnet, pretrained, config='small', **kwargs)
