"""ConvMixer built from ``timm_metalayers.layers``, as Metalhead.jl builds its ``convmixer``.

A patch stem ``conv_norm(patch_size, in_chans, planes, act; stride=patch_size, preact=True)`` (conv → act →
BatchNorm), then ``depth`` blocks, each a ``SkipConnection`` over a depthwise ``conv_norm`` (spatial mixing)
followed by a pointwise ``conv_norm`` (channel mixing), both ``preact``; a ``create_classifier`` head. The
registered ``metalayers_convmixer_*`` models load timm's ConvMixer weights through ``checkpoint_filter_fn``.
"""
import re
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch
from torch import nn
from timm.models import register_model

from ..layers import SkipConnection, conv_norm, create_classifier, linear_scheduler
from ..layers._factory import ActivationArg, NormArg, check_positive_int, check_probability
from ._base import TimmModel, device_context
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['ConvMixer', 'ConvMixerBlock', 'convmixer', 'convmixer_block', 'checkpoint_filter_fn']


class ConvMixerBlock(nn.Sequential):
    """``spatial`` (a ``SkipConnection``) then ``channel`` (a ``conv_norm`` chain), as ``nn.Sequential`` would run
    them, except that ``channel``'s layers are called one by one: the residual sum is then freed as soon as the
    1x1 conv has read it, as in timm's flat block, instead of living until ``channel`` returns (one activation
    fewer at a time in inference; the allocator's page faults made that 4-6% of ConvMixer-1536/20's time on CPU).
    With hooks on ``channel`` itself it is called as a module, so they run."""

    @torch.jit.unused
    def _channel_hooked(self) -> bool:
        return bool(self.channel._forward_hooks or self.channel._forward_pre_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spatial(x)
        if not torch.jit.is_scripting() and self._channel_hooked():  # TorchScript has no module hooks
            return self.channel(x)
        for layer in self.channel:
            x = layer(x)
        return x


def convmixer_block(planes: int, kernel_size: int, activation: ActivationArg = 'gelu', *,
                    norm_layer: NormArg = nn.BatchNorm2d, drop_path: Optional[float] = 0.0) -> ConvMixerBlock:
    """One ConvMixer block: ``spatial`` = ``SkipConnection`` over a depthwise ``kernel_size`` ``conv_norm``,
    then ``channel`` = a 1x1 ``conv_norm``; both conv → activation → norm (``preact``), with conv biases."""
    spatial = nn.Sequential(*conv_norm(kernel_size, planes, planes, activation, norm_layer=norm_layer, preact=True,
                                       groups=planes, pad='symmetric', bias=True))
    channel = nn.Sequential(*conv_norm(1, planes, planes, activation, norm_layer=norm_layer, preact=True, bias=True))
    return ConvMixerBlock(OrderedDict(spatial=SkipConnection(spatial, drop_path), channel=channel))


class ConvMixer(TimmModel):
    """ConvMixer ("Patches Are All You Need?") with timm's model API; any input size.

    Args:
        planes: channels throughout (timm's ``dim``).
        depth: number of blocks.
        kernel_size: side of the depthwise kernels (odd).
        patch_size: side and stride of the stem's patch conv.
        in_chans, num_classes, global_pool, drop_rate: timm's (``drop_rate`` is the head's dropout).
        drop_path_rate: stochastic depth on the spatial residuals, by ``linear_scheduler`` (timm has none).
        act_layer: activation of every ``conv_norm`` (GELU).
        norm_layer: norm of every ``conv_norm`` (BatchNorm).
    """
    stem_pattern = r'^stem'
    block_pattern = r'^blocks\.(\d+)'

    def __init__(self, planes: int = 768, depth: int = 32, *, kernel_size: int = 9, patch_size: int = 7,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = 'avg', drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, act_layer: ActivationArg = 'gelu', norm_layer: NormArg = nn.BatchNorm2d,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int(planes, 'planes')
        check_positive_int(depth, 'depth')
        check_positive_int(patch_size, 'patch_size')
        if check_positive_int(kernel_size, 'kernel_size') % 2 == 0:
            raise ValueError(f'kernel_size must be odd (same padding on both sides), got {kernel_size}')
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        drop_rate = check_probability(drop_rate, 'drop_rate', allow_none=False)
        with device_context(device):
            self.stem = nn.Sequential(*conv_norm(patch_size, in_chans, planes, act_layer, norm_layer=norm_layer,
                                                 preact=True, stride=patch_size, bias=True))
            self.blocks = nn.Sequential(*[
                convmixer_block(planes, kernel_size, act_layer, norm_layer=norm_layer, drop_path=p)
                for p in linear_scheduler(drop_path_rate, depth=depth)])
            self.head = create_classifier(planes, num_classes, pool_layer=global_pool, dropout_prob=drop_rate or None)
        feature_info = [dict(module=f'blocks.{i}', num_chs=planes, reduction=patch_size) for i in range(depth)]
        self.init_model_api(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, num_features=planes,
                            feature_info=feature_info)
        self.finish_init(dtype)


def convmixer(planes: int, depth: int, *, kernel_size: int = 9, patch_size: int = 7, **kwargs: Any) -> ConvMixer:
    """Metalhead's ``convmixer(planes, depth; kernel_size, patch_size, activation, ...)``; ``kwargs`` are
    ``ConvMixer``'s (``act_layer``, ``norm_layer``, ``num_classes``, ...)."""
    return ConvMixer(planes, depth, kernel_size=kernel_size, patch_size=patch_size, **kwargs)


def _timm_to_ours(key: str) -> Optional[str]:
    key = re.sub(r'^blocks\.(\d+)\.0\.fn\.', r'blocks.\1.spatial.branch.', key)
    key = re.sub(r'^blocks\.(\d+)\.([123])\.', lambda m: f'blocks.{m.group(1)}.channel.{int(m.group(2)) - 1}.', key)
    return re.sub(r'^head\.', 'head.fc.', key)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ConvMixer) -> Dict[str, torch.Tensor]:
    """Map a timm ConvMixer checkpoint (or one in our naming) onto ``model``, strictly."""
    return remap_checkpoint(state_dict, model, _timm_to_ours)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ConvMixer:
    if 'dim' in kwargs:
        kwargs['planes'] = kwargs.pop('dim')  # timm's name
    return build_family_model(ConvMixer, variant, pretrained, checkpoint_filter_fn,
                              feature_cfg=dict(out_indices=kwargs.pop('out_indices', 3)), **kwargs)


default_cfgs = twin_pretrained_cfgs({'convmixer_768_32': ('in1k',), 'convmixer_1024_20_ks9_p14': ('in1k',),
                                     'convmixer_1536_20': ('in1k',)}, first_conv='stem.0', classifier='head.fc')


@register_model
def metalayers_convmixer_768_32(pretrained: bool = False, **kwargs: Any) -> ConvMixer:
    """ConvMixer-768/32: 32 blocks of 768 channels, 7x7 kernels and patches, ReLU (timm's ``convmixer_768_32``)."""
    return _create('metalayers_convmixer_768_32', pretrained,
                   **{'planes': 768, 'depth': 32, 'kernel_size': 7, 'patch_size': 7, 'act_layer': 'relu', **kwargs})


@register_model
def metalayers_convmixer_1024_20_ks9_p14(pretrained: bool = False, **kwargs: Any) -> ConvMixer:
    """ConvMixer-1024/20: 9x9 kernels, 14x14 patches (timm's ``convmixer_1024_20_ks9_p14``)."""
    return _create('metalayers_convmixer_1024_20_ks9_p14', pretrained,
                   **{'planes': 1024, 'depth': 20, 'kernel_size': 9, 'patch_size': 14, **kwargs})


@register_model
def metalayers_convmixer_1536_20(pretrained: bool = False, **kwargs: Any) -> ConvMixer:
    """ConvMixer-1536/20: 9x9 kernels, 7x7 patches (timm's ``convmixer_1536_20``)."""
    return _create('metalayers_convmixer_1536_20', pretrained,
                   **{'planes': 1536, 'depth': 20, 'kernel_size': 9, 'patch_size': 7, **kwargs})
