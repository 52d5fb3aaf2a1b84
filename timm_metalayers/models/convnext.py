"""ConvNeXt built from ``timm_metalayers.layers``, as Metalhead.jl builds its ``convnext``.

A patchify stem (``conv_norm`` with a 4x4 stride-4 conv and ``ChannelLayerNorm``), four stages of
``convnext_block``s, each stage after the first opening with a ``conv_norm(..., revnorm=True)`` downsample
(norm, then a 2x2 stride-2 conv), and a ``create_classifier`` head that normalises after the pool (pool →
``ChannelLayerNorm`` → fc, timm's ``head.norm``). Each block is
``SkipConnection`` over dwconv7x7 → ``swapdims`` → LayerNorm → ``mlp_block`` → ``LayerScale`` → ``swapdims``.
The registered ``metalayers_convnext_*`` models load timm's ConvNeXt weights from the Hub through
``checkpoint_filter_fn``.
"""
import re
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models import register_model

from ..layers import (ChannelLayerNorm, LayerNormV2, LayerScale, SkipConnection, conv_norm, create_classifier,
                      linear_scheduler, mlp_block, swapdims)
from ..layers._factory import (ActivationArg, NormArg, check_positive_int, check_probability, check_real,
                               create_norm, resolve_norm_layer)
from ._base import TimmModel, device_context
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['ConvNeXt', 'convnext', 'convnext_block', 'checkpoint_filter_fn']


def convnext_block(planes: int, drop_path: Optional[float] = 0.0, ls_init_value: Optional[float] = 1e-6, *,
                   kernel_size: int = 7, mlp_ratio: float = 4.0, conv_bias: bool = True,
                   act_layer: ActivationArg = 'gelu', norm_layer: NormArg = None) -> SkipConnection:
    """Metalhead's ``convnextblock(planes, stochastic_depth_prob, layerscale_init)``: ``SkipConnection`` over
    ``conv_dw`` (depthwise ``kernel_size`` conv) → ``to_nhwc`` (``swapdims``) → ``norm`` → ``mlp``
    (``mlp_block``) → ``ls`` (``LayerScale``) → ``to_nchw``, with ``StochasticDepth(drop_path)``.

    ``norm`` is a channels-last ``LayerNormV2`` (eps 1e-6) by default, timm's order of operations (as fast as a
    ``ChannelLayerNorm`` before the permute, with the same keys and numbers: BENCHMARKS.md). A ``norm_layer`` is an
    NCHW norm and goes before ``to_nhwc``; the entries keep their names either way.
    """
    check_positive_int(planes, 'planes')
    if check_real(mlp_ratio, 'mlp_ratio') <= 0:
        raise ValueError(f'mlp_ratio must be > 0, got {mlp_ratio!r}')
    factory = resolve_norm_layer(norm_layer)
    layers = [('conv_dw', conv_norm(kernel_size, planes, planes, None, norm_layer=None, groups=planes,
                                    pad='symmetric', bias=conv_bias)[0])]
    to_nhwc = ('to_nhwc', swapdims((0, 2, 3, 1)))
    if factory is None:
        layers += [to_nhwc, ('norm', LayerNormV2(planes, eps=1e-6))]
    else:
        layers += [('norm', create_norm(factory, planes)), to_nhwc]
    layers += [('mlp', mlp_block(planes, int(mlp_ratio * planes), activation=act_layer, bias=conv_bias)),
               ('ls', LayerScale(planes, ls_init_value)),
               ('to_nchw', swapdims((0, 3, 1, 2)))]
    return SkipConnection(nn.Sequential(OrderedDict(layers)), drop_path)


def _per_stage(value: Union[int, Sequence[int]], nstages: int, argname: str) -> Sequence[int]:
    values = (value,) * nstages if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != nstages:
        raise ValueError(f'{argname} must be an int or one value per stage ({nstages}), got {value!r}')
    for v in values:
        check_positive_int(v, argname)
    return values


class ConvNeXt(TimmModel):
    """ConvNeXt with timm's model API (see the module docstring for the structure).

    Args:
        depths: blocks per stage.
        planes: channels per stage (timm's ``dims``); as many as ``depths``.
        kernel_size: depthwise kernel, one for all stages or one per stage (timm's ``kernel_sizes``).
        patch_size: side of the stem's patchify conv.
        ls_init_value: ``LayerScale`` initial value; None leaves it off.
        mlp_ratio: hidden width of the block MLPs relative to the planes.
        head_hidden_size: a hidden layer (GELU) in the head after the norm, as timm's ``head_hidden_size``.
        conv_bias: biases in the convs and MLPs.
        in_chans, num_classes, global_pool, drop_rate: timm's; ``drop_rate`` is the head's dropout.
        drop_path_rate: stochastic depth, scheduled over all blocks by ``linear_scheduler``.
        act_layer: activation of the MLPs (GELU).
        norm_layer: an NCHW norm for the stem, downsamples, blocks and head (default ``ChannelLayerNorm`` with
            eps 1e-6; the blocks then use the equal channels-last ``LayerNormV2``).
    """
    stem_pattern = r'^stem'
    block_pattern = [(r'^stages\.(\d+)\.downsample', (0,)), (r'^stages\.(\d+)\.blocks\.(\d+)', None)]
    block_pattern_coarse = r'^stages\.(\d+)'

    def __init__(
            self,
            depths: Sequence[int] = (3, 3, 9, 3),
            planes: Sequence[int] = (96, 192, 384, 768),
            *,
            kernel_size: Union[int, Sequence[int]] = 7,
            patch_size: int = 4,
            ls_init_value: Optional[float] = 1e-6,
            mlp_ratio: float = 4.0,
            head_hidden_size: Optional[int] = None,
            conv_bias: bool = True,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            act_layer: ActivationArg = 'gelu',
            norm_layer: NormArg = None,
            output_stride: int = 32,
            device=None,
            dtype=None,
    ):
        super().__init__()
        depths = tuple(depths) if isinstance(depths, (list, tuple)) else depths
        if not isinstance(depths, tuple) or not depths:
            raise ValueError(f'depths must be a non-empty list of blocks per stage, got {depths!r}')
        nstages = len(depths)
        depths = _per_stage(depths, nstages, 'depths')
        planes = _per_stage(planes, nstages, 'planes')
        kernel_sizes = _per_stage(kernel_size, nstages, 'kernel_size')
        check_positive_int(patch_size, 'patch_size')
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        check_positive_int(in_chans, 'in_chans')
        if head_hidden_size is not None:
            check_positive_int(head_hidden_size, 'head_hidden_size')
        if output_stride != 32:
            raise ValueError(f'output_stride={output_stride!r}: this ConvNeXt has no dilated stages (only 32)')
        drop_rate = check_probability(drop_rate, 'drop_rate', allow_none=False)
        norm = resolve_norm_layer(norm_layer) or partial(ChannelLayerNorm, eps=1e-6)
        block_norm = None if norm_layer is None else norm

        with device_context(device):
            self.stem = nn.Sequential(*conv_norm(patch_size, in_chans, planes[0], None, norm_layer=norm,
                                                 stride=patch_size, bias=conv_bias))
            rates = iter(linear_scheduler(drop_path_rate, depth=sum(depths)))
            stages = []
            for i, (depth, width) in enumerate(zip(depths, planes)):
                downsample = nn.Identity() if i == 0 else nn.Sequential(
                    *conv_norm(2, planes[i - 1], width, None, norm_layer=norm, revnorm=True, stride=2,
                               bias=conv_bias))
                blocks = nn.Sequential(*[
                    convnext_block(width, next(rates), ls_init_value, kernel_size=kernel_sizes[i],
                                   mlp_ratio=mlp_ratio, conv_bias=conv_bias, act_layer=act_layer,
                                   norm_layer=block_norm)
                    for _ in range(depth)])
                stages.append(nn.Sequential(OrderedDict(downsample=downsample, blocks=blocks)))
            self.stages = nn.Sequential(*stages)
            if head_hidden_size is None:
                head = create_classifier(planes[-1], num_classes, pool_layer=global_pool,
                                         dropout_prob=drop_rate or None, norm_layer=norm)
            else:
                head = create_classifier(planes[-1], head_hidden_size, num_classes, ('gelu', None),
                                         pool_layer=global_pool, dropout_prob=drop_rate or None, norm_layer=norm)
            self.head = head.convs_when_unpooled()
        feature_info = [dict(module=f'stages.{i}', num_chs=planes[i], reduction=patch_size * 2 ** i)
                        for i in range(nstages)]
        self.init_model_api(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                            num_features=planes[-1], feature_info=feature_info)
        self.init_weights()
        self.finish_init(dtype)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """timm's ConvNeXt initialisation: truncated normal (std 0.02) conv and Linear weights, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def convnext(depths: Sequence[int], planes: Sequence[int], **kwargs: Any) -> ConvNeXt:
    """Metalhead's ``convnext(depths, planes; ...)``: a ConvNeXt with ``depths`` blocks of ``planes`` channels
    per stage; ``kwargs`` are ``ConvNeXt``'s (``kernel_size``, ``ls_init_value``, ``drop_path_rate``, ...)."""
    return ConvNeXt(depths, planes, **kwargs)


def _timm_to_ours(key: str) -> Optional[str]:
    key = re.sub(r'^(stages\.\d+\.blocks\.\d+)\.gamma$', r'\1.branch.ls.gamma', key)
    key = re.sub(r'^(stages\.\d+\.blocks\.\d+)\.(conv_dw|norm|mlp)\.', r'\1.branch.\2.', key)
    key = re.sub(r'^head\.pre_logits\.fc\.', 'head.hidden.', key)
    return key  # stem.*, stages.*.downsample.*, head.norm, head.fc keep timm's names


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ConvNeXt) -> Dict[str, torch.Tensor]:
    """Map a timm ConvNeXt checkpoint (or one in our naming) onto ``model``: every key mapped, every shape
    checked, errors naming the keys."""
    return remap_checkpoint(state_dict, model, _timm_to_ours)


def _create(variant: str, pretrained: bool, depths: Sequence[int], planes: Sequence[int], /, **kwargs: Any
            ) -> ConvNeXt:
    kwargs.setdefault('planes', kwargs.pop('dims', planes))  # timm's name for the widths
    if 'kernel_sizes' in kwargs:
        kwargs['kernel_size'] = kwargs.pop('kernel_sizes')
    kwargs.setdefault('depths', depths)
    return build_family_model(ConvNeXt, variant, pretrained, checkpoint_filter_fn,
                              feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


# timm's default tag first (the default of our model too).
_FB = ('fb_in1k', 'fb_in22k', 'fb_in22k_ft_in1k_384')
_IN12K = ('in12k_ft_in1k', 'in12k', 'in12k_ft_in1k_384')
_TAGS = {
    'convnext_tiny': _IN12K + ('fb_in22k_ft_in1k',) + _FB + ('dinov3_lvd1689m', 'eupe_lvd1689m'),
    'convnext_small': _IN12K + ('fb_in22k_ft_in1k',) + _FB + ('dinov3_lvd1689m', 'eupe_lvd1689m'),
    'convnext_base': ('fb_in22k_ft_in1k',) + _FB + (
        'clip_laion2b', 'clip_laion2b_augreg', 'clip_laion2b_augreg_ft_in1k', 'clip_laion2b_augreg_ft_in12k',
        'clip_laion2b_augreg_ft_in12k_in1k', 'clip_laion2b_augreg_ft_in12k_in1k_384', 'clip_laiona',
        'clip_laiona_320', 'clip_laiona_augreg_320', 'clip_laiona_augreg_ft_in1k_384', 'dinov3_lvd1689m',
        'eupe_lvd1689m'),
    'convnext_large': ('fb_in22k_ft_in1k',) + _FB + ('dinov3_lvd1689m',),
    'convnext_xlarge': ('fb_in22k_ft_in1k', 'fb_in22k', 'fb_in22k_ft_in1k_384'),
}
default_cfgs = twin_pretrained_cfgs(_TAGS, first_conv='stem.0', classifier='head.fc')


@register_model
def metalayers_convnext_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T: [3, 3, 9, 3] blocks of [96, 192, 384, 768] (timm's ``convnext_tiny``)."""
    return _create('metalayers_convnext_tiny', pretrained, (3, 3, 9, 3), (96, 192, 384, 768), **kwargs)


@register_model
def metalayers_convnext_small(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-S: [3, 3, 27, 3] blocks of [96, 192, 384, 768] (timm's ``convnext_small``)."""
    return _create('metalayers_convnext_small', pretrained, (3, 3, 27, 3), (96, 192, 384, 768), **kwargs)


@register_model
def metalayers_convnext_base(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-B: [3, 3, 27, 3] blocks of [128, 256, 512, 1024] (timm's ``convnext_base``)."""
    return _create('metalayers_convnext_base', pretrained, (3, 3, 27, 3), (128, 256, 512, 1024), **kwargs)


@register_model
def metalayers_convnext_large(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-L: [3, 3, 27, 3] blocks of [192, 384, 768, 1536] (timm's ``convnext_large``)."""
    return _create('metalayers_convnext_large', pretrained, (3, 3, 27, 3), (192, 384, 768, 1536), **kwargs)


@register_model
def metalayers_convnext_xlarge(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt-XL: [3, 3, 27, 3] blocks of [256, 512, 1024, 2048] (timm's ``convnext_xlarge``)."""
    return _create('metalayers_convnext_xlarge', pretrained, (3, 3, 27, 3), (256, 512, 1024, 2048), **kwargs)
