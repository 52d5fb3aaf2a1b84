"""ResNet, ResNeXt, Wide-ResNet, ResNet-D, SE-ResNet(X)t and Res2Net built from ``timm_metalayers.layers``.

As Metalhead's ``resnet(block, block_repeats; ...)``: one mid-level builder, ``resnet(block, layers, **options)``,
assembles a stem, four stages of ``basicblock`` / ``bottleneck`` / ``bottle2neck`` residual blocks made of
``conv_norm`` lists,
and a head from ``create_classifier``. Stochastic depth and DropBlock rates come from ``linear_scheduler``.
The registered models at the bottom are a few lines each and load timm's ImageNet weights from the Hub.
"""
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from timm.models import register_model

from ..layers import DropBlock, StochasticDepth, conv_norm, create_classifier, linear_scheduler, squeeze_excite
from ..layers._factory import check_bool, check_positive_int, check_probability, create_activation, resolve_norm_layer
from ._base import TimmModel, device_context
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['ResNet', 'ResidualBlock', 'MultiScaleConvs', 'resnet', 'basicblock', 'bottleneck', 'bottle2neck']

AttnArg = Union[None, str, Callable[[int], nn.Module]]
STAGE_NAMES = ('layer1', 'layer2', 'layer3', 'layer4')


class Shortcut(nn.Module):
    """Metalhead's type-A shortcut: a strided identity, zero-padded to the wider channel count."""

    def __init__(self, inplanes: int, outplanes: int, stride: int):
        super().__init__()
        self.pad_channels = outplanes - inplanes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_channels > 0:
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x


def make_shortcut(shortcut_type: str, inplanes: int, outplanes: int, stride: int, norm_layer) -> nn.Module:
    """The skip connection of a block: ``"A"`` strided identity / zero-pad, ``"B"`` 1x1 ``conv_norm`` when
    the shape changes, ``"C"`` 1x1 ``conv_norm`` always, ``"D"`` 2x2 average pool then 1x1 ``conv_norm``."""
    reshapes = stride != 1 or inplanes != outplanes
    if shortcut_type == 'A' or (shortcut_type in ('B', 'D') and not reshapes):
        return Shortcut(inplanes, outplanes, stride) if reshapes else nn.Identity()
    if shortcut_type == 'D' and stride > 1:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(pool, *conv_norm(1, inplanes, outplanes, None, norm_layer=norm_layer))
    if shortcut_type == 'D':
        return nn.Sequential(nn.Identity(), *conv_norm(1, inplanes, outplanes, None, norm_layer=norm_layer))
    return nn.Sequential(*conv_norm(1, inplanes, outplanes, None, norm_layer=norm_layer, stride=stride))


class ResidualBlock(nn.Module):
    """A residual block: ``act(drop_path(attn(branch(x))) + shortcut(x))``.

    The branch is the named ``conv_norm`` sequentials ``conv1``, ``conv2`` (and ``conv3`` for bottlenecks),
    with ``drop_block`` and ``mid_act`` after the 3x3 conv that precedes the last one, as in Metalhead and
    timm. Module names never depend on the regularisers (an absent one is an ``nn.Identity``).
    """

    def __init__(self, convs: Sequence[List[nn.Module]], *, drop_block: Optional[nn.Module], mid_act: nn.Module,
                 attn: Optional[nn.Module], drop_path_prob: Optional[float], shortcut: nn.Module, act: nn.Module):
        super().__init__()
        if len(convs) not in (2, 3):
            raise ValueError(f'a residual block has 2 or 3 convs, got {len(convs)}')
        self.conv1 = nn.Sequential(*convs[0])
        self.conv2 = nn.Sequential(*convs[1])
        self.conv3 = nn.Sequential(*convs[2]) if len(convs) == 3 else nn.Identity()
        self.drop_after_conv1 = len(convs) == 2
        self.drop_block = drop_block if drop_block is not None else nn.Identity()
        self.mid_act = mid_act
        self.attn = attn if attn is not None else nn.Identity()
        self.drop_path = StochasticDepth(drop_path_prob, 'row') if drop_path_prob else nn.Identity()
        self.shortcut = shortcut
        self.act = act

    def zero_init_last(self) -> None:
        """Start the residual branch at zero (its last norm's scale), as timm and Goyal et al. do."""
        last = self.conv2 if self.drop_after_conv1 else self.conv3
        for module in reversed(list(last)):
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.weight is not None:
                nn.init.zeros_(module.weight)
                return

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.drop_after_conv1:
            out = self.conv2(self.mid_act(self.drop_block(out)))
        else:
            out = self.mid_act(self.drop_block(self.conv2(out)))
            out = self.conv3(out)
        out = self.drop_path(self.attn(out))
        out += self.shortcut(x)  # in place, as timm's blocks: one activation-sized allocation less per block
        return self.act(out)


def _activation(act_layer) -> nn.Module:
    return create_activation(act_layer, inplace=True, argname='act_layer') or nn.Identity()


def basicblock(inplanes: int, planes: int, *, stride: int = 1, cardinality: int = 1, base_width: int = 64,
               reduction_factor: int = 1, act_layer='relu', norm_layer=nn.BatchNorm2d, revnorm: bool = False,
               attn_layer=None, drop_block: Optional[nn.Module] = None, drop_path_prob: Optional[float] = None,
               shortcut: Optional[nn.Module] = None) -> ResidualBlock:
    """ResNet-18/34 block: 3x3 ``conv_norm`` → DropBlock → act → 3x3 ``conv_norm``."""
    if cardinality != 1 or base_width != 64:
        raise ValueError(f'basicblock supports only cardinality=1 and base_width=64, '
                         f'got cardinality={cardinality}, base_width={base_width}')
    first_planes = planes // reduction_factor
    norm = dict(norm_layer=norm_layer, revnorm=revnorm)
    convs = [conv_norm(3, inplanes, first_planes, None, stride=stride, pad=1, **norm),
             conv_norm(3, first_planes, planes, None, pad=1, **norm)]
    return ResidualBlock(convs, drop_block=drop_block, mid_act=_activation(act_layer),
                         attn=attn_layer(planes) if attn_layer else None, drop_path_prob=drop_path_prob,
                         shortcut=shortcut if shortcut is not None else nn.Identity(), act=_activation(act_layer))


basicblock.expansion = 1


def bottleneck(inplanes: int, planes: int, *, stride: int = 1, cardinality: int = 1, base_width: int = 64,
               reduction_factor: int = 1, act_layer='relu', norm_layer=nn.BatchNorm2d, revnorm: bool = False,
               attn_layer=None, drop_block: Optional[nn.Module] = None, drop_path_prob: Optional[float] = None,
               shortcut: Optional[nn.Module] = None) -> ResidualBlock:
    """ResNet-50+ block: 1x1 ``conv_norm`` → grouped 3x3 ``conv_norm`` → DropBlock → act → 1x1 ``conv_norm``."""
    width = int(planes * (base_width / 64)) * cardinality
    first_planes = width // reduction_factor
    outplanes = planes * bottleneck.expansion
    norm = dict(norm_layer=norm_layer, revnorm=revnorm)
    convs = [conv_norm(1, inplanes, first_planes, act_layer, **norm),
             conv_norm(3, first_planes, width, None, stride=stride, pad=1, groups=cardinality, **norm),
             conv_norm(1, width, outplanes, None, **norm)]
    return ResidualBlock(convs, drop_block=drop_block, mid_act=_activation(act_layer),
                         attn=attn_layer(outplanes) if attn_layer else None, drop_path_prob=drop_path_prob,
                         shortcut=shortcut if shortcut is not None else nn.Identity(), act=_activation(act_layer))


bottleneck.expansion = 4


class MultiScaleConvs(nn.Module):
    """Res2Net's hierarchical 3x3 convs: the input is split into ``scale`` groups of ``width`` channels; group
    ``i`` (plus the previous group's output, unless ``cascade`` is off) goes through ``convs[i]``; the last group
    passes through ``pool`` (an ``nn.Identity`` inside a stage); the outputs are concatenated in order."""

    def __init__(self, convs: Sequence[List[nn.Module]], width: int, *, pool: Optional[nn.Module], cascade: bool,
                 passthrough: bool):
        super().__init__()
        self.convs = nn.ModuleList(nn.Sequential(*c) for c in convs)
        self.pool = pool if pool is not None else nn.Identity()
        self.width = width
        self.cascade = cascade
        self.passthrough = passthrough

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(x, self.width, 1)
        outs: List[torch.Tensor] = []
        out = splits[0]
        for i, conv in enumerate(self.convs):
            out = splits[i] if i == 0 or not self.cascade else out + splits[i]
            out = conv(out)
            outs.append(out)
        if self.passthrough:
            outs.append(self.pool(splits[-1]))
        return torch.cat(outs, 1)


def bottle2neck(inplanes: int, planes: int, *, stride: int = 1, cardinality: int = 1, base_width: int = 26,
                scale: int = 4, reduction_factor: int = 1, act_layer='relu', norm_layer=nn.BatchNorm2d,
                revnorm: bool = False, attn_layer=None, drop_block: Optional[nn.Module] = None,
                drop_path_prob: Optional[float] = None, shortcut: Optional[nn.Module] = None) -> ResidualBlock:
    """Res2Net block (Metalhead's ``bottle2neck``): 1x1 ``conv_norm`` to ``scale`` groups of ``width`` channels →
    ``MultiScaleConvs`` (``scale - 1`` grouped 3x3 ``conv_norm``, each fed the previous one's output; the first
    block of a stage runs them side by side and average-pools the pass-through group) → DropBlock → 1x1
    ``conv_norm``. The pass-through group is the last one, as in timm's Res2Net (Metalhead puts it first)."""
    check_positive_int(scale, 'scale')
    if reduction_factor != 1:
        raise ValueError(f'bottle2neck supports only reduction_factor=1, '
                         f'got reduction_factor={reduction_factor}')
    width = int(math.floor(planes * (base_width / 64.0))) * cardinality
    outplanes = planes * bottle2neck.expansion
    is_first = stride != 1 or inplanes != outplanes
    norm = dict(norm_layer=norm_layer, revnorm=revnorm)
    scale_convs = [conv_norm(3, width, width, act_layer, stride=stride, pad=1, groups=cardinality, **norm)
                   for _ in range(max(1, scale - 1))]
    pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1) if is_first and scale > 1 else None
    multi_scale = MultiScaleConvs(scale_convs, width, pool=pool, cascade=not is_first, passthrough=scale > 1)
    convs = [conv_norm(1, inplanes, width * scale, act_layer, **norm),
             [multi_scale],
             conv_norm(1, width * scale, outplanes, None, **norm)]
    return ResidualBlock(convs, drop_block=drop_block, mid_act=nn.Identity(),
                         attn=attn_layer(outplanes) if attn_layer else None, drop_path_prob=drop_path_prob,
                         shortcut=shortcut if shortcut is not None else nn.Identity(), act=_activation(act_layer))


bottle2neck.expansion = 4

_BLOCKS = {'basicblock': basicblock, 'basic': basicblock, 'bottleneck': bottleneck, 'bottle2neck': bottle2neck}


def _resolve_block(block) -> Callable[..., ResidualBlock]:
    if isinstance(block, str):
        if block not in _BLOCKS:
            raise ValueError(f'block={block!r} is not a block name; use "basicblock", "bottleneck" or "bottle2neck"')
        return _BLOCKS[block]
    if not callable(block) or not hasattr(block, 'expansion'):
        raise TypeError(f'block must be basicblock, bottleneck, bottle2neck or a callable with an .expansion, '
                        f'got {block!r}')
    return block


def _resolve_attn(attn_layer: AttnArg) -> Optional[Callable[[int], nn.Module]]:
    if attn_layer is None or attn_layer == '':
        return None
    if isinstance(attn_layer, str):
        if attn_layer != 'se':
            raise ValueError(f'attn_layer={attn_layer!r} is not known; use "se", a callable planes -> module or None')
        return squeeze_excite
    if not callable(attn_layer):
        raise TypeError(f'attn_layer must be "se", a callable planes -> nn.Module or None, got {attn_layer!r}')
    return attn_layer


def make_stem(stem_type: str, in_chans: int, inplanes: int, stem_width: int, act_layer, norm_layer,
              revnorm: bool) -> List[nn.Module]:
    """The stem as a flat ``conv_norm`` list: ``"default"`` 7x7/2; ``"deep"`` three 3x3 (first one /2);
    ``"deep_tiered"`` the same with a narrower first conv."""
    kw = dict(norm_layer=norm_layer, revnorm=revnorm)
    if stem_type == 'default':
        return conv_norm(7, in_chans, inplanes, act_layer, stride=2, pad=3, **kw)
    if stem_type not in ('deep', 'deep_tiered'):
        raise ValueError(f'stem_type={stem_type!r} is not known; use "default", "deep" or "deep_tiered"')
    first = 3 * (stem_width // 4) if stem_type == 'deep_tiered' else stem_width
    return [*conv_norm(3, in_chans, first, act_layer, stride=2, pad=1, **kw),
            *conv_norm(3, first, stem_width, act_layer, pad=1, **kw),
            *conv_norm(3, stem_width, inplanes, act_layer, pad=1, **kw)]


class ResNet(TimmModel):
    """A ResNet assembled by ``resnet(...)``, with timm's model API.

    Modules: ``stem`` (a ``conv_norm`` chain, stride 2), ``stem_pool``, ``layer1``..``layer4``
    (``ResidualBlock`` sequences) and ``head`` (a ``create_classifier`` head).
    """
    block_pattern = r'^layer(\d+)\.(\d+)'
    block_pattern_coarse = r'^layer(\d+)'

    def __init__(
            self,
            block: Union[str, Callable[..., ResidualBlock]],
            layers: Sequence[int],
            *,
            num_classes: int = 1000,
            in_chans: int = 3,
            cardinality: int = 1,
            base_width: int = 64,
            inplanes: int = 64,
            stem_width: int = 32,
            stem_type: str = 'default',
            stem_pool: str = 'max',
            shortcut_type: str = 'B',
            reduction_factor: int = 1,
            act_layer: Any = 'relu',
            norm_layer: Any = nn.BatchNorm2d,
            revnorm: bool = False,
            attn_layer: AttnArg = None,
            block_args: Optional[Dict[str, Any]] = None,
            global_pool: Union[str, nn.Module] = 'avg',
            head_hidden_size: Optional[int] = None,
            drop_rate: float = 0.0,
            drop_path_rate: Optional[float] = 0.0,
            drop_block_rate: Optional[float] = 0.0,
            drop_block_couple_channels: bool = True,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        block = _resolve_block(block)
        if not isinstance(layers, (list, tuple)) or len(layers) != 4:
            raise ValueError(f'layers must list the number of blocks of the 4 stages, got {layers!r}')
        for n in layers:
            check_positive_int(n, 'layers[i]')
        for name, value in (('cardinality', cardinality), ('base_width', base_width), ('inplanes', inplanes),
                            ('stem_width', stem_width), ('reduction_factor', reduction_factor),
                            ('in_chans', in_chans)):
            check_positive_int(value, name)
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        if shortcut_type not in ('A', 'B', 'C', 'D'):
            raise ValueError(f'shortcut_type={shortcut_type!r} is not known; use "A", "B", "C" or "D"')
        if stem_pool not in ('max', 'conv'):
            raise ValueError(f'stem_pool={stem_pool!r} is not known; use "max" or "conv"')
        drop_rate = check_probability(drop_rate, 'drop_rate') or 0.0
        check_probability(drop_path_rate, 'drop_path_rate')
        check_probability(drop_block_rate, 'drop_block_rate')
        check_bool(drop_block_couple_channels, 'drop_block_couple_channels')
        norm_layer = resolve_norm_layer(norm_layer)
        attn = _resolve_attn(attn_layer)
        if block_args is not None and not isinstance(block_args, dict):
            raise TypeError(f'block_args must be a dict of extra block options (e.g. dict(scale=4)) or None, '
                            f'got {block_args!r}')
        block_args = dict(block_args or {})

        with device_context(device):
            self.stem = nn.Sequential(*make_stem(stem_type, in_chans, inplanes, stem_width, act_layer, norm_layer,
                                                 revnorm))
            if stem_pool == 'conv':
                self.stem_pool = nn.Sequential(*conv_norm(3, inplanes, inplanes, act_layer, stride=2, pad=1,
                                                          norm_layer=norm_layer, revnorm=revnorm))
            else:
                self.stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            feature_info = [dict(num_chs=inplanes, reduction=2, module='stem')]

            # One schedule over all blocks of the network, as Metalhead's resnet does.
            depth = sum(layers)
            drop_paths = linear_scheduler(drop_path_rate or 0.0, depth=depth)
            drop_blocks = linear_scheduler(drop_block_rate or 0.0, depth=depth)
            coupled = dict(couple_channels=drop_block_couple_channels)
            dropblock_args = (None, None, dict(block_size=5, gamma_scale=0.25, **coupled),
                              dict(block_size=3, gamma_scale=1.0, **coupled))
            block_idx, reduction, channels = 0, 4, inplanes
            for stage_idx, (num_blocks, stage_name) in enumerate(zip(layers, STAGE_NAMES)):
                planes = 64 * 2 ** stage_idx
                stride = 1 if stage_idx == 0 else 2
                reduction *= stride
                outplanes = planes * block.expansion
                blocks = []
                for i in range(num_blocks):
                    block_stride = stride if i == 0 else 1
                    db = None
                    if dropblock_args[stage_idx] is not None and drop_blocks[block_idx] > 0:
                        db = DropBlock(drop_blocks[block_idx], **dropblock_args[stage_idx])
                    blocks.append(block(
                        channels, planes, stride=block_stride, cardinality=cardinality, base_width=base_width,
                        reduction_factor=reduction_factor, act_layer=act_layer, norm_layer=norm_layer,
                        revnorm=revnorm, attn_layer=attn, drop_block=db, drop_path_prob=drop_paths[block_idx],
                        shortcut=make_shortcut(shortcut_type, channels, outplanes, block_stride, norm_layer),
                        **block_args,
                    ))
                    channels = outplanes
                    block_idx += 1
                self.add_module(stage_name, nn.Sequential(*blocks))
                feature_info.append(dict(num_chs=channels, reduction=reduction, module=stage_name))

            hidden = (head_hidden_size,) if head_hidden_size else ()
            self.head = create_classifier(channels, *hidden, num_classes, pool_layer=global_pool,
                                          dropout_prob=drop_rate or None)
            self.init_model_api(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                                num_features=channels, feature_info=feature_info)
            self.init_weights(zero_init_last=zero_init_last)
        self.finish_init(dtype)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Kaiming-normal convs, unit/zero norms, and optionally a zero last norm in every residual branch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if isinstance(module, ResidualBlock):
                    module.zero_init_last()


def resnet(block: Union[str, Callable[..., ResidualBlock]], layers: Sequence[int], **options) -> ResNet:
    """Build a ResNet-like model, like Metalhead's ``resnet(block, block_repeats; ...)``.

    Args:
        block: ``basicblock`` (ResNet-18/34), ``bottleneck`` (50 and deeper, ResNeXt, Wide-ResNet) or
            ``bottle2neck`` (Res2Net, Res2NeXt), or a name.
        layers: blocks per stage, e.g. ``[3, 4, 6, 3]`` for ResNet-50.
        cardinality, base_width: groups and width per group of the bottleneck's 3x3 conv (ResNeXt: 32, 4).
        stem_type: ``"default"`` (7x7), ``"deep"`` or ``"deep_tiered"`` (three 3x3); ``stem_width`` their width.
        stem_pool: ``"max"`` (3x3 max pool) or ``"conv"`` (a strided 3x3 ``conv_norm``).
        shortcut_type: ``"A"``, ``"B"`` (default), ``"C"`` or ``"D"`` (average pool + 1x1 conv).
        reduction_factor: divides the width of each block's first conv.
        act_layer, norm_layer, revnorm: passed to every ``conv_norm``.
        attn_layer: ``"se"`` or a callable ``planes -> module`` applied to each branch (squeeze-and-excite).
        block_args: extra options of the block, e.g. ``dict(scale=4)`` (Res2Net's number of groups).
        drop_rate: dropout of the head; drop_path_rate: stochastic depth, scheduled over all blocks;
        drop_block_rate: DropBlock in stages 3 and 4, scheduled over all blocks.
        drop_block_couple_channels: True (default, as timm's ResNet and the DropBlock paper) drops the same
            blocks in every channel of a sample; False draws a mask per channel, as Metalhead does.
        global_pool: the head's pool (a timm ``global_pool`` name or a module such as ``AdaptiveMeanMaxPool()``).
        head_hidden_size: a hidden layer in the head (the hidden form of ``create_classifier``).
        num_classes, in_chans: classes (0 for a feature extractor) and input channels.
    """
    return ResNet(block, layers, **options)


def _tv_rename(stem_type: str) -> Callable[[str], Optional[str]]:
    """Rename timm's ResNet keys onto this module tree."""
    def rename(key: str) -> Optional[str]:
        if stem_type == 'default':
            key = re.sub(r'^conv1\.', 'stem.0.', key)
            key = re.sub(r'^bn1\.', 'stem.1.', key)
        else:
            key = re.sub(r'^conv1\.(\d+)\.', r'stem.\1.', key)
            key = re.sub(r'^bn1\.', 'stem.7.', key)
        key = re.sub(r'^(layer\d+\.\d+)\.conv(\d)\.', r'\1.conv\2.0.', key)
        key = re.sub(r'^(layer\d+\.\d+)\.bn(\d)\.', r'\1.conv\2.1.', key)
        key = re.sub(r'^(layer\d+\.\d+)\.convs\.(\d+)\.', r'\1.conv2.0.convs.\2.0.', key)  # Res2Net
        key = re.sub(r'^(layer\d+\.\d+)\.bns\.(\d+)\.', r'\1.conv2.0.convs.\2.1.', key)
        key = re.sub(r'^(layer\d+\.\d+)\.se\.fc1\.', r'\1.attn.reduce.0.', key)
        key = re.sub(r'^(layer\d+\.\d+)\.se\.fc2\.', r'\1.attn.expand.0.', key)
        key = re.sub(r'^(layer\d+\.\d+)\.downsample\.', r'\1.shortcut.', key)
        key = re.sub(r'^fc\.', 'head.fc.', key)
        return key
    return rename


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: ResNet) -> Dict[str, torch.Tensor]:
    """Map a timm ResNet checkpoint onto ``model`` (every key mapped, every shape checked); a checkpoint
    already in this package's naming passes through unchanged."""
    stem_type = 'default' if model.stem[0].kernel_size == (7, 7) else 'deep'
    return remap_checkpoint(state_dict, model, _tv_rename(stem_type))


def _create_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    return build_family_model(ResNet, variant, pretrained, checkpoint_filter_fn, **kwargs)


_TAGS = {
    'resnet18': ('tv_in1k', 'a1_in1k'),
    'resnet34': ('tv_in1k', 'a1_in1k'),
    'resnet50': ('tv_in1k', 'tv2_in1k', 'a1_in1k'),
    'resnet101': ('tv_in1k', 'tv2_in1k', 'a1_in1k'),
    'resnet152': ('tv_in1k', 'tv2_in1k', 'a1_in1k'),
    'resnet50d': ('ra2_in1k', 'a1_in1k'),
    'resnext50_32x4d': ('tv_in1k', 'tv2_in1k', 'a1_in1k'),
    'resnext101_32x8d': ('tv_in1k', 'tv2_in1k'),
    'wide_resnet50_2': ('tv_in1k', 'tv2_in1k', 'racm_in1k'),
    'wide_resnet101_2': ('tv_in1k', 'tv2_in1k'),
    'seresnet50': ('ra2_in1k', 'a1_in1k'),
    'seresnext50_32x4d': ('gluon_in1k', 'racm_in1k'),
    'seresnext101_32x8d': ('ah_in1k',),
    'res2net50_26w_4s': ('in1k',),
    'res2net50_14w_8s': ('in1k',),
    'res2net50_26w_6s': ('in1k',),
    'res2net50_26w_8s': ('in1k',),
    'res2net50_48w_2s': ('in1k',),
    'res2net101_26w_4s': ('in1k',),
    'res2next50': ('in1k',),
}

default_cfgs = twin_pretrained_cfgs(_TAGS, first_conv='stem.0', classifier='head.fc')


@register_model
def metalayers_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18: ``basicblock`` x [2, 2, 2, 2]."""
    return _create_resnet('metalayers_resnet18', pretrained, block=basicblock, layers=[2, 2, 2, 2], **kwargs)


@register_model
def metalayers_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-34: ``basicblock`` x [3, 4, 6, 3]."""
    return _create_resnet('metalayers_resnet34', pretrained, block=basicblock, layers=[3, 4, 6, 3], **kwargs)


@register_model
def metalayers_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50: ``bottleneck`` x [3, 4, 6, 3]."""
    return _create_resnet('metalayers_resnet50', pretrained, block=bottleneck, layers=[3, 4, 6, 3], **kwargs)


@register_model
def metalayers_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101: ``bottleneck`` x [3, 4, 23, 3]."""
    return _create_resnet('metalayers_resnet101', pretrained, block=bottleneck, layers=[3, 4, 23, 3], **kwargs)


@register_model
def metalayers_resnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-152: ``bottleneck`` x [3, 8, 36, 3]."""
    return _create_resnet('metalayers_resnet152', pretrained, block=bottleneck, layers=[3, 8, 36, 3], **kwargs)


@register_model
def metalayers_resnet50d(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50-D: deep stem (width 32) and type-D (average-pool) shortcuts."""
    return _create_resnet('metalayers_resnet50d', pretrained, block=bottleneck, layers=[3, 4, 6, 3],
                          stem_type='deep', stem_width=32, shortcut_type='D', **kwargs)


@register_model
def metalayers_resnext50_32x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d: bottlenecks with 32 groups of width 4."""
    return _create_resnet('metalayers_resnext50_32x4d', pretrained, block=bottleneck, layers=[3, 4, 6, 3],
                          cardinality=32, base_width=4, **kwargs)


@register_model
def metalayers_resnext101_32x8d(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d: bottlenecks with 32 groups of width 8."""
    return _create_resnet('metalayers_resnext101_32x8d', pretrained, block=bottleneck, layers=[3, 4, 23, 3],
                          cardinality=32, base_width=8, **kwargs)


@register_model
def metalayers_wide_resnet50_2(pretrained: bool = False, **kwargs) -> ResNet:
    """Wide ResNet-50-2: bottlenecks twice as wide inside."""
    return _create_resnet('metalayers_wide_resnet50_2', pretrained, block=bottleneck, layers=[3, 4, 6, 3],
                          base_width=128, **kwargs)


@register_model
def metalayers_wide_resnet101_2(pretrained: bool = False, **kwargs) -> ResNet:
    """Wide ResNet-101-2: bottlenecks twice as wide inside."""
    return _create_resnet('metalayers_wide_resnet101_2', pretrained, block=bottleneck, layers=[3, 4, 23, 3],
                          base_width=128, **kwargs)


@register_model
def metalayers_seresnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """SE-ResNet-50: ResNet-50 with squeeze-and-excitation (``squeeze_excite``) on every branch."""
    return _create_resnet('metalayers_seresnet50', pretrained, block=bottleneck, layers=[3, 4, 6, 3],
                          attn_layer='se', **kwargs)


@register_model
def metalayers_seresnext50_32x4d(pretrained: bool = False, **kwargs) -> ResNet:
    """SE-ResNeXt-50 32x4d: ResNeXt-50 with squeeze-and-excitation on every branch."""
    return _create_resnet('metalayers_seresnext50_32x4d', pretrained, block=bottleneck, layers=[3, 4, 6, 3],
                          cardinality=32, base_width=4, attn_layer='se', **kwargs)


@register_model
def metalayers_seresnext101_32x8d(pretrained: bool = False, **kwargs) -> ResNet:
    """SE-ResNeXt-101 32x8d: ResNeXt-101 32x8d with squeeze-and-excitation on every branch."""
    return _create_resnet('metalayers_seresnext101_32x8d', pretrained, block=bottleneck, layers=[3, 4, 23, 3],
                          cardinality=32, base_width=8, attn_layer='se', **kwargs)


def _create_res2net(variant: str, pretrained: bool, layers: Sequence[int], base_width: int, scale: int,
                    **kwargs) -> ResNet:
    return _create_resnet(variant, pretrained, block=bottle2neck, layers=layers, base_width=base_width,
                          block_args=dict(scale=scale), **kwargs)


@register_model
def metalayers_res2net50_26w_4s(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2Net-50 26w x 4s: ``bottle2neck`` x [3, 4, 6, 3], 4 groups of width 26."""
    return _create_res2net('metalayers_res2net50_26w_4s', pretrained, [3, 4, 6, 3], 26, 4, **kwargs)


@register_model
def metalayers_res2net50_14w_8s(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2Net-50 14w x 8s: 8 groups of width 14."""
    return _create_res2net('metalayers_res2net50_14w_8s', pretrained, [3, 4, 6, 3], 14, 8, **kwargs)


@register_model
def metalayers_res2net50_26w_6s(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2Net-50 26w x 6s: 6 groups of width 26."""
    return _create_res2net('metalayers_res2net50_26w_6s', pretrained, [3, 4, 6, 3], 26, 6, **kwargs)


@register_model
def metalayers_res2net50_26w_8s(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2Net-50 26w x 8s: 8 groups of width 26."""
    return _create_res2net('metalayers_res2net50_26w_8s', pretrained, [3, 4, 6, 3], 26, 8, **kwargs)


@register_model
def metalayers_res2net50_48w_2s(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2Net-50 48w x 2s: 2 groups of width 48."""
    return _create_res2net('metalayers_res2net50_48w_2s', pretrained, [3, 4, 6, 3], 48, 2, **kwargs)


@register_model
def metalayers_res2net101_26w_4s(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2Net-101 26w x 4s: ``bottle2neck`` x [3, 4, 23, 3]."""
    return _create_res2net('metalayers_res2net101_26w_4s', pretrained, [3, 4, 23, 3], 26, 4, **kwargs)


@register_model
def metalayers_res2next50(pretrained: bool = False, **kwargs) -> ResNet:
    """Res2NeXt-50: Res2Net-50 with grouped 3x3 convs (cardinality 8, width 4 per group, 4 scales)."""
    return _create_res2net('metalayers_res2next50', pretrained, [3, 4, 6, 3], 4, 4, cardinality=8, **kwargs)
