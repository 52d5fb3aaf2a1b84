"""DenseNet-121/161/169/201 built from ``timm_metalayers.layers``.

As Metalhead's ``densenet(inplanes, growth_rates; reduction, ...)``: a ``conv_norm`` stem and max pool, dense blocks
of ``dense_bottleneck`` layers (each concatenates its ``growth_rate`` new maps to its input: Metalhead's
``SkipConnection(..., cat_channels)``), ``transition`` layers (a 1x1 ``conv_norm`` with ``revnorm=True`` and a 2x2
average pool) between them, a final norm, and a ``create_classifier`` head. The layers are pre-activation
(norm → act → conv, as the paper and timm; Metalhead's ``revnorm`` puts the activation after the conv): the
``conv_norm`` lists take a norm layer that carries the activation (``resolve_norm_act_layer``).
Paper: https://arxiv.org/abs/1608.06993
"""
import re
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from timm.models import register_model

from ..layers import cat_channels, conv_norm
from ..layers._factory import check_positive_int, check_probability, check_real, resolve_norm_act_layer
from ._base import ModelArgs, TimmModel
from ._helpers import build_family_model, init_kaiming, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['DenseNet', 'DenseBottleneck', 'densenet', 'dense_bottleneck', 'dense_block', 'transition']


class DenseBottleneck(nn.Module):
    """``cat_channels(x, drop(branch(x)))``: Metalhead's ``SkipConnection(branch, cat_channels)``."""

    def __init__(self, branch: List[nn.Module], drop_rate: float = 0.0):
        super().__init__()
        self.branch = nn.Sequential(*branch)
        self.drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cat_channels(x, self.drop(self.branch(x)))


def dense_bottleneck(inplanes: int, growth_rate: int, *, expansion: int = 4, norm_act_layer: Any = None,
                     drop_rate: float = 0.0) -> DenseBottleneck:
    """A DenseNet layer: norm-act → 1x1 conv to ``expansion * growth_rate`` → norm-act → 3x3 conv to
    ``growth_rate``, both ``conv_norm(..., revnorm=True)``; its output is its input with the new maps appended."""
    check_positive_int(expansion, 'expansion')
    norm = dict(norm_layer=norm_act_layer or resolve_norm_act_layer(nn.BatchNorm2d, 'relu'), revnorm=True)
    width = expansion * growth_rate
    return DenseBottleneck([*conv_norm(1, inplanes, width, None, **norm),
                            *conv_norm(3, width, growth_rate, None, pad=1, **norm)], drop_rate)


def dense_block(inplanes: int, growth_rates: Sequence[int], **kwargs) -> List[DenseBottleneck]:
    """The ``dense_bottleneck`` layers of a dense block, each adding ``growth_rates[i]`` maps."""
    layers = []
    for rate in growth_rates:
        layers.append(dense_bottleneck(inplanes, rate, **kwargs))
        inplanes += rate
    return layers


def transition(inplanes: int, outplanes: int, *, norm_act_layer: Any = None) -> List[nn.Module]:
    """Between dense blocks: norm-act → 1x1 conv (``conv_norm`` with ``revnorm=True``) → 2x2 average pool."""
    norm_act_layer = norm_act_layer or resolve_norm_act_layer(nn.BatchNorm2d, 'relu')
    return [*conv_norm(1, inplanes, outplanes, None, norm_layer=norm_act_layer, revnorm=True),
            nn.AvgPool2d(kernel_size=2, stride=2)]


class DenseNet(TimmModel):
    """A DenseNet assembled by ``densenet(...)``, with timm's model API.

    Modules: ``stem`` (7x7/2 ``conv_norm``), ``stem_pool``, ``denseblock1``..``denseblockN`` with ``transition1``..
    between them, ``norm5`` (the final norm-act) and ``head``.
    """
    block_pattern = r'^(?:denseblock|transition)(\d+)'

    def __init__(
            self,
            growth_rate: int = 32,
            block_config: Sequence[int] = (6, 12, 24, 16),
            *,
            num_init_features: int = 64,
            expansion: int = 4,
            reduction: float = 0.5,
            act_layer: Any = 'relu',
            norm_layer: Any = nn.BatchNorm2d,
            proj_drop_rate: float = 0.0,
            **timm_args: Any,
    ):
        """``timm_args``: timm's ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate`` (the head's dropout),
        ``device``, ``dtype`` (``ModelArgs``)."""
        super().__init__()
        args = ModelArgs.take('DenseNet', timm_args)
        check_positive_int(growth_rate, 'growth_rate')
        if not isinstance(block_config, (list, tuple)) or not block_config:
            raise ValueError(f'block_config must list the number of layers of each dense block, got {block_config!r}')
        for i, n in enumerate(block_config):
            check_positive_int(n, f'block_config[{i}]')
        check_positive_int(num_init_features, 'num_init_features')
        reduction = check_real(reduction, 'reduction')
        if not 0 < reduction <= 1:
            raise ValueError(f'reduction must be in (0, 1], got {reduction}')
        proj_drop_rate = check_probability(proj_drop_rate, 'proj_drop_rate') or 0.0
        norm_act = resolve_norm_act_layer(norm_layer, act_layer)
        if norm_act is None:
            raise ValueError(f'DenseNet needs a norm layer, got norm_layer={norm_layer!r}')

        with args.device_context():
            self.stem = nn.Sequential(*conv_norm(7, args.in_chans, num_init_features, act_layer, stride=2, pad=3,
                                                 norm_layer=norm_layer))
            self.stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            feature_info = [dict(num_chs=num_init_features, reduction=2, module='stem')]
            channels, stride = num_init_features, 4
            for i, num_layers in enumerate(block_config):
                self.add_module(f'denseblock{i + 1}', nn.Sequential(*dense_block(
                    channels, [growth_rate] * num_layers, expansion=expansion, norm_act_layer=norm_act,
                    drop_rate=proj_drop_rate)))
                channels += num_layers * growth_rate
                if i != len(block_config) - 1:
                    feature_info.append(dict(num_chs=channels, reduction=stride, module=f'denseblock{i + 1}'))
                    outplanes = int(channels * reduction)
                    self.add_module(f'transition{i + 1}', nn.Sequential(*transition(
                        channels, outplanes, norm_act_layer=norm_act)))
                    channels, stride = outplanes, stride * 2
            self.norm5 = norm_act(channels)
            feature_info.append(dict(num_chs=channels, reduction=stride, module='norm5'))
            self.attach_head(channels, feature_info, args)
        self.finish_init(args.dtype)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal convs (fan in), zero Linear bias: torchvision's DenseNet init."""
        init_kaiming(self, mode='fan_in', zero_linear_bias=True)


def densenet(growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16), **options) -> DenseNet:
    """Build a DenseNet, like Metalhead's ``densenet``: ``block_config`` layers per dense block, each adding
    ``growth_rate`` maps; ``num_init_features`` stem width, ``expansion`` bottleneck width factor (4),
    ``reduction`` of the transitions (0.5), ``act_layer``/``norm_layer`` for every norm-act, ``drop_rate`` (head),
    ``proj_drop_rate`` (dropout on each layer's new maps), ``global_pool``, ``num_classes``, ``in_chans``."""
    return DenseNet(growth_rate, block_config, **options)


def _timm_rename(key: str) -> Optional[str]:
    key = re.sub(r'^features\.conv0\.', 'stem.0.', key)
    key = re.sub(r'^features\.norm0\.', 'stem.1.', key)
    match = re.match(r'^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)([12])\.', key)
    if match:
        block, layer, kind, index = match.groups()
        position = (int(index) - 1) * 2 + (kind == 'conv')
        return f'denseblock{block}.{int(layer) - 1}.branch.{position}.' + key[match.end():]
    key = re.sub(r'^features\.transition(\d+)\.norm\.', r'transition\1.0.', key)
    key = re.sub(r'^features\.transition(\d+)\.conv\.', r'transition\1.1.', key)
    key = re.sub(r'^features\.norm5\.', 'norm5.', key)
    return re.sub(r'^classifier\.', 'head.fc.', key)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: DenseNet) -> Dict[str, torch.Tensor]:
    """Map a timm (torchvision-named) DenseNet checkpoint onto ``model``: every key mapped, every shape checked;
    a checkpoint already in this package's naming passes through unchanged."""
    return remap_checkpoint(state_dict, model, _timm_rename)


def _create_densenet(variant: str, pretrained: bool, growth_rate: int, block_config: Sequence[int],
                     **kwargs) -> DenseNet:
    return build_family_model(DenseNet, variant, pretrained, checkpoint_filter_fn, growth_rate=growth_rate,
                              block_config=block_config, **kwargs)


default_cfgs = twin_pretrained_cfgs({
    'densenet121': ('ra_in1k', 'tv_in1k'),
    'densenet161': ('tv_in1k',),
    'densenet169': ('tv_in1k',),
    'densenet201': ('tv_in1k',),
}, first_conv='stem.0', classifier='head.fc')


@register_model
def metalayers_densenet121(pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16)."""
    return _create_densenet('metalayers_densenet121', pretrained, 32, (6, 12, 24, 16), **kwargs)


@register_model
def metalayers_densenet161(pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-161: growth 48, stem width 96, blocks (6, 12, 36, 24)."""
    return _create_densenet('metalayers_densenet161', pretrained, 48, (6, 12, 36, 24), num_init_features=96,
                            **kwargs)


@register_model
def metalayers_densenet169(pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-169: growth 32, blocks (6, 12, 32, 32)."""
    return _create_densenet('metalayers_densenet169', pretrained, 32, (6, 12, 32, 32), **kwargs)


@register_model
def metalayers_densenet201(pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-201: growth 32, blocks (6, 12, 48, 32)."""
    return _create_densenet('metalayers_densenet201', pretrained, 32, (6, 12, 48, 32), **kwargs)
