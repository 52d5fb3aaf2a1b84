"""MobileNetV3 built from ``timm_metalayers.layers``: ``conv_norm`` stem, ``mbconv`` stages with ``squeeze_excite``,
and the hidden form of ``create_classifier`` as its "efficient head".

Paper: `Searching for MobileNetV3` - https://arxiv.org/abs/1905.02244

As Metalhead.jl's ``mobilenetv3``, the network is read from a table of inverted-residual rows and a width
multiplier; the registered models are timm's ``mobilenetv3_large_100`` / ``mobilenetv3_small_{100,075,050}``
architectures and load timm's Hub weights through ``checkpoint_filter_fn``.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from timm.layers import make_divisible
from timm.models import register_model

from ..layers import conv_norm, create_classifier, linear_scheduler, mbconv
from ..layers._factory import ActivationArg, NormArg, check_positive_int, check_probability
from ..layers.pool import create_pool
from ._base import ModelArgs, TimmModel
from ._invres import init_invres_weights, invres_renamer, stage_feature_info
from ._helpers import build_family_model, conv_to_linear, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['MobileNetV3', 'mobilenetv3', 'MOBILENETV3_CONFIGS', 'checkpoint_filter_fn']

Row = Tuple[int, int, float, int, int, Optional[float], str]

# MobileNetV3 as Metalhead.jl's table (and the paper's Tables 1 and 2): (hidden width of the head, rows).
# A row is (kernel, out channels, expansion, stride, repeats, SE reduction or None, activation); the
# first block of a row has the row's stride, the others stride 1. "hard_swish" stands for the network's
# act_layer (hard-swish by default), "relu" is always ReLU. Consecutive rows with the same output width
# form a stage. The small table's last row has stride 2 (14x14 -> 7x7), as in the paper and timm;
# Metalhead's table has 1 there.
MOBILENETV3_CONFIGS: Dict[str, Tuple[int, List[Row]]] = {
    'small': (1024, [
        (3, 16, 1, 2, 1, 4, 'relu'),
        (3, 24, 4.5, 2, 1, None, 'relu'),
        (3, 24, 3.67, 1, 1, None, 'relu'),
        (5, 40, 4, 2, 1, 4, 'hard_swish'),
        (5, 40, 6, 1, 2, 4, 'hard_swish'),
        (5, 48, 3, 1, 2, 4, 'hard_swish'),
        (5, 96, 6, 2, 3, 4, 'hard_swish'),
    ]),
    'large': (1280, [
        (3, 16, 1, 1, 1, None, 'relu'),
        (3, 24, 4, 2, 1, None, 'relu'),
        (3, 24, 3, 1, 1, None, 'relu'),
        (5, 40, 3, 2, 3, 4, 'relu'),
        (3, 80, 6, 2, 1, None, 'hard_swish'),
        (3, 80, 2.5, 1, 1, None, 'hard_swish'),
        (3, 80, 2.3, 1, 2, None, 'hard_swish'),
        (3, 112, 6, 1, 2, 4, 'hard_swish'),
        (5, 160, 6, 2, 3, 4, 'hard_swish'),
    ]),
}
_NETWORK_ACT = 'hard_swish'


class MobileNetV3(TimmModel):
    """MobileNetV3 with timm's model API. Build it with ``mobilenetv3(...)`` or ``timm.create_model``.

    ``stem`` (3x3 stride-2 ``conv_norm``) → ``stages`` (``mbconv`` blocks, then a 1x1 ``conv_norm`` to the
    final width as the last stage) → ``head`` (``create_classifier`` hidden form: global pool → flatten →
    ``hidden`` Linear → hard-swish → dropout → ``fc``). Without pooling (``global_pool=''``) the head's layers
    are 1x1 convs with the same weights, so the model returns an NCHW map.
    """
    block_pattern = r'^stages\.(\d+)\.(\d+)'
    block_pattern_coarse = r'^stages\.(\d+)'

    def __init__(
            self,
            stem: nn.Sequential,
            stages: nn.Sequential,
            feature_info: List[Dict[str, Any]],
            args: ModelArgs,
            *,
            hidden_planes: int,
            head_act_layer: ActivationArg = _NETWORK_ACT,
    ):
        super().__init__()
        self.stem = stem
        self.stages = stages
        num_features = feature_info[-1]['num_chs']
        unpooled = create_pool(args.global_pool, argname='global_pool') is None
        head = create_classifier(num_features, hidden_planes, args.num_classes, (head_act_layer, None),
                                 use_conv=(unpooled, unpooled), pool_layer=args.global_pool,
                                 dropout_prob=args.drop_rate or None).convs_when_unpooled()
        self.attach_head(num_features, feature_info, args, head=head)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """timm's MobileNetV3 init (the paper's): ``init_invres_weights``."""
        init_invres_weights(self)


def _check_row(row: Sequence, i: int) -> Row:
    if not isinstance(row, (tuple, list)) or len(row) != 7:
        raise ValueError(f'config_table row {i} must be (kernel, out channels, expansion, stride, repeats, '
                         f'SE reduction or None, activation), got {row!r}')
    k, c, e, s, n, r, a = row
    check_positive_int(c, f'config_table[{i}] out channels')
    check_positive_int(s, f'config_table[{i}] stride')
    check_positive_int(n, f'config_table[{i}] repeats')
    if isinstance(e, bool) or not isinstance(e, (int, float)) or e < 1:
        raise ValueError(f'config_table[{i}] expansion must be a number >= 1, got {e!r}')
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0):
        raise ValueError(f'config_table[{i}] SE reduction must be a number > 0 or None, got {r!r}')
    return k, c, e, s, n, r, a


def mobilenetv3(
        config_table: Union[str, Sequence[Row]] = 'large',
        width_mult: float = 1.0,
        *,
        hidden_planes: Optional[int] = None,
        stem_planes: int = 16,
        fix_stem: Optional[bool] = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: Union[str, nn.Module, None] = 'avg',
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.,
        act_layer: ActivationArg = _NETWORK_ACT,
        norm_layer: NormArg = nn.BatchNorm2d,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
) -> MobileNetV3:
    """Build a MobileNetV3 from a table of inverted-residual rows (Metalhead.jl's ``mobilenetv3``).

    Args:
        config_table: ``"small"``, ``"large"`` or a list of rows ``(kernel, out channels, expansion, stride,
            repeats, SE reduction or None, activation)`` (see ``MOBILENETV3_CONFIGS``).
        width_mult: width multiplier; every width is rounded with timm's ``make_divisible`` (multiples of 8).
        hidden_planes: width of the head's hidden layer (1024 small, 1280 large; needed for a custom table).
        stem_planes: width of the stem before scaling.
        fix_stem: keep the stem at ``stem_planes`` whatever the width; by default when ``width_mult < 0.75``
            (as timm, so timm's weights fit).
        num_classes: classes of the output layer; 0 for none (the model returns pre-logits features).
        in_chans: input channels.
        global_pool: the head's pool (``avg``, ``max``, ``avgmax``, ``catavgmax``, ``meanmax``, a module,
            or ``''`` for none: the head then runs as 1x1 convs and returns a map).
        drop_rate: dropout after the head's hidden layer (0.2 as Metalhead).
        drop_path_rate: stochastic depth; ``linear_scheduler(drop_path_rate, depth=<residual blocks>)`` gives
            one ``StochasticDepth`` per residual block.
        act_layer: the network's activation (stem, "hard_swish" rows, final conv, head); ReLU rows stay ReLU
            and the squeeze-excite keeps its ReLU / hard-sigmoid.
        norm_layer: normalisation of every ``conv_norm`` (a class, a ``planes -> module`` callable or a name).
        device, dtype: where and in which dtype to create the parameters.
    """
    if isinstance(config_table, str):
        if config_table not in MOBILENETV3_CONFIGS:
            raise ValueError(f'config_table={config_table!r}: use one of {sorted(MOBILENETV3_CONFIGS)} '
                             'or a list of rows')
        default_hidden, rows = MOBILENETV3_CONFIGS[config_table]
        hidden_planes = default_hidden if hidden_planes is None else hidden_planes
    else:
        rows = config_table
        if hidden_planes is None:
            raise ValueError('hidden_planes is needed with a custom config_table (1024 small, 1280 large)')
    rows = [_check_row(row, i) for i, row in enumerate(rows)]
    if not rows:
        raise ValueError('config_table has no rows')
    check_positive_int(hidden_planes, 'hidden_planes')
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f'width_mult must be a number > 0, got {width_mult!r}')
    drop_path_rate = check_probability(drop_path_rate, 'drop_path_rate', allow_none=False)
    args = ModelArgs(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
                     device=device, dtype=dtype)

    def act(name: str) -> ActivationArg:
        return act_layer if name == _NETWORK_ACT else name

    def width(planes: float) -> int:
        return make_divisible(planes * width_mult, 8)

    # Blocks per stage: (kernel, inplanes, explanes, outplanes, stride, SE reduction, activation)
    if fix_stem is None:
        fix_stem = width_mult < 0.75
    stem_out = stem_planes if fix_stem else width(stem_planes)
    stage_specs: List[List[tuple]] = []
    inplanes, prev_c = stem_out, None
    for k, c, e, s, n, r, a in rows:
        if c != prev_c:
            stage_specs.append([])
            prev_c = c
        outplanes = width(c)
        for j in range(n):
            explanes = make_divisible(inplanes * e, 8)
            stage_specs[-1].append((k, inplanes, explanes, outplanes, s if j == 0 else 1, r, act(a)))
            inplanes = outplanes
    # the final 1x1 conv to (last width x last expansion): 960 large, 576 small
    final_planes = width(rows[-1][1] * rows[-1][2])

    residual = [spec[4] == 1 and spec[1] == spec[3] for stage in stage_specs for spec in stage]
    schedule = iter(linear_scheduler(drop_path_rate, depth=sum(residual)))

    with args.device_context():
        stem = nn.Sequential(*conv_norm(3, in_chans, stem_out, act_layer, norm_layer=norm_layer, stride=2, pad=1))
        stages = []
        for stage in stage_specs:
            blocks = []
            for k, cin, cexp, cout, s, r, a in stage:
                has_skip = s == 1 and cin == cout
                blocks.append(mbconv(k, cin, cexp, cout, a, stride=s, reduction=r, norm_layer=norm_layer,
                                     drop_path_prob=next(schedule) if has_skip else None))
            stages.append(nn.Sequential(*blocks))
        stages.append(nn.Sequential(*conv_norm(1, inplanes, final_planes, act_layer, norm_layer=norm_layer)))
        stages = nn.Sequential(*stages)

        stage_planes = [stage[-1][3] for stage in stage_specs] + [final_planes]
        strides = [max(spec[4] for spec in stage) for stage in stage_specs] + [1]
        feature_info = stage_feature_info(stem_out, stage_planes, strides)

        model = MobileNetV3(stem, stages, feature_info, args, hidden_planes=hidden_planes, head_act_layer=act_layer)
    model.finish_init(args.dtype)
    return model


# ---------------------------------------------------------------------------------------------------------
# timm's checkpoints: the naming of timm's EfficientNet family (``invres_renamer``), with the head's hidden
# layer stored as ``conv_head``.
_TOP_PARTS = {'conv_stem': 'stem.0', 'bn1': 'stem.1', 'conv_head': 'head.hidden', 'classifier': 'head.fc'}


def _reshape_head(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's 1x1 ``conv_head`` as our Linear ``hidden``, a Linear weight as a 1x1 conv in an unpooled head."""
    value = conv_to_linear(key, value, target)
    if value.dim() == 2 and target.dim() == 4 and target.shape[2:] == (1, 1):
        value = value[:, :, None, None]
    return value


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MobileNetV3) -> Dict[str, torch.Tensor]:
    """Map a timm ``mobilenetv3_*`` checkpoint (or one of ours) onto ``model``, strictly.

    Raises ``CheckpointMismatchError`` (a ``ValueError``) naming every unmapped, missing or mis-shaped key.
    """
    return remap_checkpoint(state_dict, model, invres_renamer(model.stages, _TOP_PARTS),
                            reshape=_reshape_head)


def _create_mobilenetv3(variant: str, config_table: str, width_mult: float, pretrained: bool = False,
                        **kwargs) -> MobileNetV3:
    return build_family_model(mobilenetv3, variant, pretrained, checkpoint_filter_fn,
                              config_table=config_table, width_mult=width_mult, **kwargs)


# The weights are timm's, mapped by checkpoint_filter_fn.
default_cfgs = twin_pretrained_cfgs({
    'mobilenetv3_large_100': ('ra_in1k', 'miil_in21k_ft_in1k'),
    'mobilenetv3_small_050': ('lamb_in1k',),
    'mobilenetv3_small_075': ('lamb_in1k',),
    'mobilenetv3_small_100': ('lamb_in1k',),
}, first_conv='stem.0', classifier='head.fc')


@register_model
def metalayers_mobilenetv3_large_100(pretrained: bool = False, **kwargs) -> MobileNetV3:
    """MobileNetV3-Large, width 1.0 (timm's ``mobilenetv3_large_100``)."""
    return _create_mobilenetv3('metalayers_mobilenetv3_large_100', 'large', 1.0, pretrained, **kwargs)


@register_model
def metalayers_mobilenetv3_small_100(pretrained: bool = False, **kwargs) -> MobileNetV3:
    """MobileNetV3-Small, width 1.0 (timm's ``mobilenetv3_small_100``)."""
    return _create_mobilenetv3('metalayers_mobilenetv3_small_100', 'small', 1.0, pretrained, **kwargs)


@register_model
def metalayers_mobilenetv3_small_075(pretrained: bool = False, **kwargs) -> MobileNetV3:
    """MobileNetV3-Small, width 0.75 (timm's ``mobilenetv3_small_075``)."""
    return _create_mobilenetv3('metalayers_mobilenetv3_small_075', 'small', 0.75, pretrained, **kwargs)


@register_model
def metalayers_mobilenetv3_small_050(pretrained: bool = False, **kwargs) -> MobileNetV3:
    """MobileNetV3-Small, width 0.5 (timm's ``mobilenetv3_small_050``)."""
    return _create_mobilenetv3('metalayers_mobilenetv3_small_050', 'small', 0.5, pretrained, **kwargs)
