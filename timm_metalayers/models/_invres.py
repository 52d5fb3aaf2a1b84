"""Metalhead.jl's inverted-residual builder (``build_invresmodel``) in Python, shared by the families whose
trunk is a stem, stages of mobile blocks and a 1x1 head conv: EfficientNet / EfficientNetV2, MobileNetV1 /
V2 and MNASNet (``efficientnet.py``), and the checkpoint naming they share with timm's MobileNetV3.

A network is a config table, one row per stage (as Metalhead's tables), read by ``invresmodel``:

    (block, kernel, outplanes, expansion, stride, repeats, se_ratio)

``block`` is one of the layers ``dwsep_conv_norm`` (MobileNetV1's block), ``mbconv`` or ``fused_mbconv``; the
first block of a row has the row's stride, the others stride 1; ``se_ratio`` (or None) is the squeeze-excite
width as a fraction of the block's input width (the papers' ``se0.25``).
"""
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import make_divisible

from ..layers import conv_norm, dwsep_conv_norm, fused_mbconv, linear_scheduler, mbconv
from ..layers._factory import ActivationArg, NormArg, check_positive_int, check_probability
from ..layers.conv import PadArg
from ..layers.mbconv import FusedMBConv, MBConv
from ._base import ModelArgs, TimmModel

__all__ = ['InvResNet', 'invresmodel', 'scale_depths', 'stage_feature_info', 'invres_renamer',
           'init_invres_weights']

Row = Tuple[Callable, int, int, float, int, int, Optional[float]]
_BLOCKS = (dwsep_conv_norm, mbconv, fused_mbconv)


class InvResNet(TimmModel):
    """An inverted-residual network with timm's model API; build it with ``invresmodel``.

    ``stem`` (3x3 stride-2 ``conv_norm``) → ``stages`` (one ``nn.Sequential`` of blocks per config row) →
    ``head_conv`` (the 1x1 ``conv_norm`` to ``num_features`` before the pool; ``nn.Identity`` when the network
    has none) → ``head`` (``create_classifier``: pool → flatten → dropout → ``fc``). The features are the stage
    ends, as timm's: ``head_conv`` is the trunk's ``final_conv`` (kept by a prune that keeps the last feature).
    """
    block_pattern = r'^stages\.(\d+)\.(\d+)'
    block_pattern_coarse = r'^stages\.(\d+)'
    final_conv = 'head_conv'

    def __init__(self, stem: nn.Sequential, stages: nn.Sequential, head_conv: nn.Module,
                 feature_info: List[Dict[str, Any]], args: ModelArgs, *, num_features: int):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head_conv = head_conv
        self.attach_head(num_features, feature_info, args)

    @torch.jit.ignore
    def init_weights(self) -> None:
        init_invres_weights(self)


def init_invres_weights(model: nn.Module) -> None:
    """The EfficientNet / MobileNetV3 papers' init (timm's): convs normal with std sqrt(2 / fan_out) per group,
    Linear uniform in +-1/sqrt(out features), zero biases; nothing on 'meta' (nothing to fill)."""
    for module in model.modules():
        if getattr(module, 'weight', None) is None or module.weight.is_meta:
            continue
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.weight.shape[0])
            nn.init.uniform_(module.weight, -bound, bound)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def scale_depths(repeats: Sequence[int], depth_mult: float) -> List[int]:
    """Repeats of each row times ``depth_mult``, rounded up (the EfficientNet paper's ``ceil``, as timm)."""
    if isinstance(depth_mult, bool) or not isinstance(depth_mult, (int, float)) or depth_mult <= 0:
        raise ValueError(f'depth_mult must be a number > 0, got {depth_mult!r}')
    return [int(math.ceil(r * depth_mult)) for r in repeats]


def stage_feature_info(stem_planes: int, stage_planes: Sequence[int], stage_strides: Sequence[int],
                       ) -> List[Dict[str, Any]]:
    """The features of a stem + stages trunk: the last module of each resolution (``stem``, ``stages.i``)."""
    channels = [stem_planes, *stage_planes]
    strides = [2, *stage_strides]
    reductions = [math.prod(strides[:i + 1]) for i in range(len(strides))]
    modules = ['stem'] + [f'stages.{i}' for i in range(len(stage_planes))]
    return [dict(num_chs=chs, reduction=red, module=module)
            for i, (chs, red, module) in enumerate(zip(channels, reductions, modules))
            if i == len(modules) - 1 or reductions[i + 1] != red]


def _check_row(row: Sequence, i: int) -> Row:
    if not isinstance(row, (tuple, list)) or len(row) != 7:
        raise ValueError(f'config_table row {i} must be (block, kernel, outplanes, expansion, stride, repeats, '
                         f'se_ratio or None), got {row!r}')
    block, k, c, e, s, n, se = row
    if block not in _BLOCKS:
        raise ValueError(f'config_table[{i}] block must be dwsep_conv_norm, mbconv or fused_mbconv, got {block!r}')
    check_positive_int(k, f'config_table[{i}] kernel')
    check_positive_int(c, f'config_table[{i}] outplanes')
    check_positive_int(s, f'config_table[{i}] stride')
    check_positive_int(n, f'config_table[{i}] repeats')
    if isinstance(e, bool) or not isinstance(e, (int, float)) or e < 1:
        raise ValueError(f'config_table[{i}] expansion must be a number >= 1, got {e!r}')
    if se is not None and (isinstance(se, bool) or not isinstance(se, (int, float)) or not 0 < se <= 1):
        raise ValueError(f'config_table[{i}] se_ratio must be a number in (0, 1] or None, got {se!r}')
    if block is dwsep_conv_norm and (e != 1 or se is not None):
        raise ValueError(f'config_table[{i}]: dwsep_conv_norm has no expansion and no SE, got expansion={e!r}, '
                         f'se_ratio={se!r}')
    return block, k, c, e, s, n, se


def _block(block: Callable, k: int, inplanes: int, outplanes: int, e: float, stride: int, se: Optional[float],
           act: ActivationArg, norm_layer: NormArg, pad: PadArg, drop_path_prob: float) -> nn.Module:
    """One block of a row: the layer the row names, its SE width and drop path as timm's EfficientNet."""
    if block is dwsep_conv_norm:
        return nn.Sequential(*dwsep_conv_norm(k, inplanes, outplanes, act, norm_layer=norm_layer, stride=stride,
                                              pad=pad))
    explanes = inplanes if e == 1 else make_divisible(inplanes * e, 8)
    se_kwargs = None
    if se is not None:  # squeezed width from the block's input width, with the block's activation
        se_planes = explanes if block is mbconv or e != 1 else outplanes
        se_kwargs = dict(rd_planes=round(se_planes * se / e), act_layer=act, gate_layer='sigmoid')
    has_skip = stride == 1 and inplanes == outplanes
    return block(k, inplanes, explanes, outplanes, act, stride=stride, reduction=1 / se if se else None,
                 se_kwargs=se_kwargs, norm_layer=norm_layer, pad=pad,
                 drop_path_prob=drop_path_prob if has_skip else None)


def invresmodel(
        config_table: Sequence[Row],
        *,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        stem_planes: int = 32,
        head_planes: Optional[int] = 1280,
        fix_stem: bool = False,
        round_limit: float = 0.9,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: Union[str, nn.Module, None] = 'avg',
        drop_rate: float = 0.,
        drop_path_rate: float = 0.,
        act_layer: ActivationArg = 'relu',
        norm_layer: NormArg = nn.BatchNorm2d,
        pad: PadArg = 'symmetric',
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
) -> InvResNet:
    """Build an inverted-residual network from a config table (Metalhead.jl's ``build_invresmodel``).

    Args:
        config_table: rows ``(block, kernel, outplanes, expansion, stride, repeats, se_ratio)``, one per stage;
            ``block`` is ``dwsep_conv_norm``, ``mbconv`` or ``fused_mbconv`` (see the module docstring).
        width_mult: width multiplier: the stem and every ``outplanes`` become
            ``make_divisible(planes * width_mult, 8, round_limit=round_limit)``.
        depth_mult: depth multiplier: every ``repeats`` becomes ``ceil(repeats * depth_mult)``.
        stem_planes: width of the stem before scaling.
        head_planes: width of the 1x1 head conv (``conv_norm`` with ``act_layer``, ``head_conv``) after the last
            row, as given (not scaled); None for no head conv (MobileNetV1).
        fix_stem: keep the stem at ``stem_planes`` whatever ``width_mult``.
        round_limit: ``make_divisible``'s limit (0.9: a width never rounds down by more than 10 %).
        num_classes: classes of the output layer; 0 for none (the model returns pooled features).
        in_chans: input channels.
        global_pool: the head's pool (``avg``, ``max``, ``avgmax``, ``catavgmax``, ``meanmax``, a module, ``''``).
        drop_rate: dropout before the output layer.
        drop_path_rate: stochastic depth: ``linear_scheduler(drop_path_rate, depth=<all blocks>)`` gives the
            rate of every block, and each residual block gets a ``StochasticDepth`` with its rate.
        act_layer: activation of the stem, every block (and its squeeze-excite) and the head conv.
        norm_layer: normalisation of every ``conv_norm`` (a class, a ``planes -> module`` callable or a name).
        pad: padding of every kxk conv: ``"symmetric"`` (PyTorch's) or ``"same"`` (TensorFlow's, for TF weights).
        device, dtype: where and in which dtype to create the parameters.
    """
    if isinstance(config_table, str) or not isinstance(config_table, Sequence) or not config_table:
        raise ValueError(f'config_table must be a non-empty list of rows, got {config_table!r}')
    rows = [_check_row(row, i) for i, row in enumerate(config_table)]
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f'width_mult must be a number > 0, got {width_mult!r}')
    repeats = scale_depths([row[5] for row in rows], depth_mult)
    check_positive_int(stem_planes, 'stem_planes')
    if head_planes is not None:
        check_positive_int(head_planes, 'head_planes')
    if pad not in ('symmetric', 'same'):
        raise ValueError(f'pad must be "symmetric" or "same", got {pad!r}')
    drop_path_rate = check_probability(drop_path_rate, 'drop_path_rate', allow_none=False)
    args = ModelArgs(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
                     device=device, dtype=dtype)

    def width(planes: int) -> int:
        return make_divisible(planes * width_mult, 8, round_limit=round_limit)

    schedule = iter(linear_scheduler(drop_path_rate, depth=sum(repeats)))
    with args.device_context():
        stem_out = stem_planes if fix_stem else width(stem_planes)
        stem = nn.Sequential(*conv_norm(3, in_chans, stem_out, act_layer, norm_layer=norm_layer, stride=2,
                                        pad=1 if pad == 'symmetric' else pad))
        stages, inplanes = [], stem_out
        for (block, k, c, e, s, _, se), n in zip(rows, repeats):
            blocks = []
            for j in range(n):
                blocks.append(_block(block, k, inplanes, width(c), e, s if j == 0 else 1, se, act_layer,
                                     norm_layer, pad, next(schedule)))
                inplanes = width(c)
            stages.append(nn.Sequential(*blocks))
        if head_planes is not None:
            head_conv: nn.Module = nn.Sequential(*conv_norm(1, inplanes, head_planes, act_layer,
                                                            norm_layer=norm_layer))
        else:
            head_conv = nn.Identity()
        feature_info = stage_feature_info(stem_out, [width(row[2]) for row in rows], [row[4] for row in rows])
        model = InvResNet(stem, nn.Sequential(*stages), head_conv, feature_info, args,
                          num_features=head_planes or inplanes)
    model.finish_init(args.dtype)
    return model


# ---------------------------------------------------------------------------------------------------------
# timm's checkpoints of its EfficientNet / MobileNetV3 family: conv_stem/bn1, blocks.{stage}.{block}.<part>,
# conv_head [bn2], classifier. The parts of each timm block class, in our blocks' names:
_IR_PARTS = {'conv_pw': 'expand.0', 'bn1': 'expand.1', 'conv_dw': 'dw.0', 'bn2': 'dw.1',
             'se.conv_reduce': 'se.reduce.0', 'se.conv_expand': 'se.expand.0', 'conv_pwl': 'project.0',
             'bn3': 'project.1'}                                  # InvertedResidual -> mbconv
_DS_PARTS = {'conv_dw': 'dw.0', 'bn1': 'dw.1', 'se.conv_reduce': 'se.reduce.0', 'se.conv_expand': 'se.expand.0',
             'conv_pw': 'project.0', 'bn2': 'project.1'}         # DepthwiseSeparableConv -> mbconv without expand
_ER_PARTS = {'conv_exp': 'expand.0', 'bn1': 'expand.1', 'se.conv_reduce': 'se.reduce.0',
             'se.conv_expand': 'se.expand.0', 'conv_pwl': 'project.0', 'bn2': 'project.1'}  # EdgeResidual
_CN_PARTS = {'conv': 'expand.0', 'bn1': 'expand.1'}              # ConvBnAct -> fused_mbconv, expansion 1
_DSA_PARTS = {'conv_dw': '0', 'bn1': '1', 'conv_pw': '3', 'bn2': '4'}  # DS with pw act -> dwsep_conv_norm
_STAGE_CONV_PARTS = {'conv': '0', 'bn1': '1'}                    # a ConvBnAct stage -> a conv_norm stage
_BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.(\d+)\.(.+)\.([^.]+)$')
_TOP_KEY = re.compile(r'^([^.]+)\.([^.]+)$')


def _block_parts(block: nn.Module) -> Dict[str, str]:
    if isinstance(block, FusedMBConv):
        return _CN_PARTS if isinstance(block.project, nn.Identity) else _ER_PARTS
    if isinstance(block, MBConv):
        return _DS_PARTS if isinstance(block.expand, nn.Identity) else _IR_PARTS
    return _DSA_PARTS


def invres_renamer(stages: nn.Sequential, top_parts: Dict[str, str]) -> Callable[[str], str]:
    """timm's key → ours for a stem + ``stages`` trunk; ``top_parts`` maps timm's top-level modules
    (``conv_stem``, ``bn1``, ``conv_head``, ...). Keys it cannot place come back unchanged (and are reported)."""
    def rename(key: str) -> str:
        m = _BLOCK_KEY.match(key)
        if m is not None:
            s, b, part, leaf = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            if s >= len(stages) or b >= len(stages[s]):
                return key
            stage = stages[s]
            if isinstance(stage[0], nn.Conv2d):  # a conv_norm stage (MobileNetV3's final conv)
                parts = _STAGE_CONV_PARTS if b == 0 else {}
                return f'stages.{s}.{parts[part]}.{leaf}' if part in parts else key
            parts = _block_parts(stage[b])
            return f'stages.{s}.{b}.{parts[part]}.{leaf}' if part in parts else key
        m = _TOP_KEY.match(key)
        if m is not None and m.group(1) in top_parts:
            return f'{top_parts[m.group(1)]}.{m.group(2)}'
        return key

    return rename
