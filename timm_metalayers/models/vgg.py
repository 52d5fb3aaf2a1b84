"""VGG-11/13/16/19, with and without batch norm, built from ``timm_metalayers.layers``.

As Metalhead's ``vgg(imsize; config, batchnorm, fcsize, dropout_prob)``: a config table of stages (output
channels and number of 3x3 ``conv_norm`` per stage, each stage ending in a 2x2 max pool), then the
fully-connected part. Here the first two fully-connected layers are timm's conv "pre-logits" (a 7x7 and a
1x1 convolution on the unpooled map, so the model takes any input size >= 32 px and equals timm's VGG at every
size), then the head from ``create_classifier``. Paper: https://arxiv.org/abs/1409.1556
"""
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import register_notrace_module
from timm.models import register_model

from ..layers import conv_norm
from ..layers._factory import check_bool, check_positive_int
from ._base import ModelArgs, TimmModel
from ._helpers import build_family_model, init_kaiming, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['VGG', 'vgg', 'vgg_stage', 'ConvMlp', 'VGG_CONFIGS']

# (output channels, number of 3x3 convs) per stage, as Metalhead's VGG_CONFIGS
VGG_CONFIGS: Dict[int, Tuple[Tuple[int, int], ...]] = {
    11: ((64, 1), (128, 1), (256, 2), (512, 2), (512, 2)),
    13: ((64, 2), (128, 2), (256, 2), (512, 2), (512, 2)),
    16: ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
    19: ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4)),
}
STAGE_NAMES = ('stage1', 'stage2', 'stage3', 'stage4', 'stage5')


def vgg_stage(inplanes: int, outplanes: int, depth: int, *, act_layer: Any = 'relu', norm_layer: Any = None
              ) -> List[nn.Module]:
    """The convs of one VGG stage (Metalhead's ``vgg_block`` without its max pool, which the model keeps as a
    module of its own so that the features before it can be taken, as timm does): ``depth`` 3x3 ``conv_norm``."""
    check_positive_int(depth, 'depth')
    layers: List[nn.Module] = []
    for i in range(depth):
        layers += conv_norm(3, inplanes if i == 0 else outplanes, outplanes, act_layer, norm_layer=norm_layer, pad=1,
                            bias=True)  # biased even before a norm, as torchvision's and timm's VGG
    return layers


@register_notrace_module  # fx cannot trace the size check in forward (timm's ConvMlp is a leaf too)
class ConvMlp(nn.Module):
    """VGG's first two fully-connected layers as convolutions on the unpooled map (timm's "pre-logits"):
    ``fc1`` a ``kernel_size`` conv (the 7x7 window of the original 4096-unit layer), dropout, ``fc2`` a 1x1 conv,
    each with its activation (``fc1`` to ``hidden_planes``, by default ``outplanes``). A map smaller than the
    kernel is first average-pooled up to it, as timm does."""

    def __init__(self, inplanes: int, outplanes: int, *, hidden_planes: Optional[int] = None, kernel_size: int = 7,
                 act_layer: Any = 'relu', drop_rate: float = 0.0):
        super().__init__()
        self.kernel_size = check_positive_int(kernel_size, 'kernel_size')
        hidden_planes = check_positive_int(hidden_planes or outplanes, 'hidden_planes')
        self.fc1 = nn.Sequential(*conv_norm(kernel_size, inplanes, hidden_planes, act_layer, norm_layer=None))
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Sequential(*conv_norm(1, hidden_planes, outplanes, act_layer, norm_layer=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < self.kernel_size or x.shape[-1] < self.kernel_size:
            x = F.adaptive_avg_pool2d(x, (max(self.kernel_size, x.shape[-2]), max(self.kernel_size, x.shape[-1])))
        return self.fc2(self.drop(self.fc1(x)))


class VGG(TimmModel):
    """A VGG assembled by ``vgg(...)``, with timm's model API.

    Modules: ``stage1``..``stage5`` (``conv_norm`` chains), each followed by its 2x2 max pool ``pool1``..``pool5``,
    ``pre_logits`` (``ConvMlp``,
    run by ``forward_head`` before the head) and ``head`` (a ``create_classifier`` head on its 4096 features).
    """
    stem_pattern = r'^stage1\.0\.'
    block_pattern = r'^stage(\d+)'

    def __init__(
            self,
            config: Sequence[Tuple[int, int]] = VGG_CONFIGS[16],
            *,
            batchnorm: bool = False,
            fcsize: int = 4096,
            mlp_ratio: float = 1.0,
            act_layer: Any = 'relu',
            norm_layer: Any = nn.BatchNorm2d,
            **timm_args: Any,
    ):
        """``timm_args``: timm's ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate`` (dropout in the
        pre-logits and the head), ``device``, ``dtype`` (``ModelArgs``)."""
        super().__init__()
        args = ModelArgs.take('VGG', timm_args)
        if not isinstance(config, (list, tuple)) or not config:
            raise ValueError(f'config must list (output channels, number of convs) per stage, got {config!r}')
        if len(config) > len(STAGE_NAMES):
            raise ValueError(f'config has at most {len(STAGE_NAMES)} stages, got {len(config)}')
        for i, row in enumerate(config):
            if not isinstance(row, (list, tuple)) or len(row) != 2:
                raise ValueError(f'config[{i}] must be (output channels, number of convs), got {row!r}')
            check_positive_int(row[0], f'config[{i}] output channels')
            check_positive_int(row[1], f'config[{i}] number of convs')
        check_bool(batchnorm, 'batchnorm')
        check_positive_int(fcsize, 'fcsize')
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0 \
                or int(fcsize * mlp_ratio) < 1:
            raise ValueError(f'mlp_ratio must be a number > 0 that leaves fcsize * mlp_ratio >= 1, got {mlp_ratio!r}')
        norm_layer = norm_layer if batchnorm else None

        with args.device_context():
            feature_info = []
            channels, reduction = args.in_chans, 1
            for i, ((outplanes, depth), name) in enumerate(zip(config, STAGE_NAMES)):
                self.add_module(name, nn.Sequential(*vgg_stage(channels, outplanes, depth, act_layer=act_layer,
                                                               norm_layer=norm_layer)))
                self.add_module(f'pool{i + 1}', nn.MaxPool2d(kernel_size=2, stride=2))
                channels = outplanes
                # as timm: each stage's feature is taken before its max pool, and the last pool's output
                feature_info.append(dict(num_chs=channels, reduction=reduction, module=name))
                reduction *= 2
            feature_info.append(dict(num_chs=channels, reduction=reduction, module=f'pool{len(config)}'))
            self.pre_logits = ConvMlp(channels, fcsize, hidden_planes=int(fcsize * mlp_ratio), act_layer=act_layer,
                                      drop_rate=args.drop_rate)
            self.attach_head(channels, feature_info, args, head_planes=fcsize)
        self.finish_init(args.dtype)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal convs (fan out), Linear weights ~ N(0, 0.01), zero biases, as timm's VGG."""
        init_kaiming(self, linear_std=0.01)


def vgg(depth_or_config: Any = 16, **options) -> VGG:
    """Build a VGG, like Metalhead's ``vgg``: ``depth_or_config`` is 11, 13, 16 or 19 (``VGG_CONFIGS``) or a
    table of ``(output channels, number of convs)`` per stage.

    Options: ``batchnorm`` (a norm after every conv), ``fcsize`` (width of the pre-logits, 4096), ``mlp_ratio``
    (width of the 7x7 pre-logits conv relative to ``fcsize``, timm's argument), ``act_layer``,
    ``norm_layer`` (used when ``batchnorm``), ``drop_rate`` (dropout in the pre-logits and the head),
    ``global_pool``, ``num_classes``, ``in_chans``.
    """
    if isinstance(depth_or_config, int) and not isinstance(depth_or_config, bool):
        if depth_or_config not in VGG_CONFIGS:
            raise ValueError(f'depth_or_config={depth_or_config} is not a VGG depth; use one of {sorted(VGG_CONFIGS)} '
                             f'or a config table')
        depth_or_config = VGG_CONFIGS[depth_or_config]
    return VGG(depth_or_config, **options)


def _timm_rename(config: Sequence[Tuple[int, int]], batchnorm: bool) -> Dict[str, str]:
    """timm's ``features.<i>`` indices onto ``stageN.<j>`` / ``poolN``."""
    per_conv = 3 if batchnorm else 2
    names, index = {}, 0
    for s, (_, depth) in enumerate(config):
        for j in range(depth * per_conv):
            names[f'features.{index}.'] = f'{STAGE_NAMES[s]}.{j}.'
            index += 1
        names[f'features.{index}.'] = f'pool{s + 1}.'
        index += 1
    return names


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VGG) -> Dict[str, torch.Tensor]:
    """Map a timm VGG checkpoint onto ``model`` (its conv pre-logits onto ``pre_logits.fc1/fc2``); every key
    mapped, every shape checked; a checkpoint already in this package's naming passes through unchanged."""
    config = [(stage[0].out_channels, sum(isinstance(m, nn.Conv2d) for m in stage))
              for name, stage in model.named_children() if name.startswith('stage')]
    batchnorm = any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.stage1)
    names = _timm_rename(config, batchnorm)

    def rename(key: str) -> Optional[str]:
        match = re.match(r'^features\.\d+\.', key)
        if match:
            return names.get(match.group(0), match.group(0)) + key[match.end():]
        return re.sub(r'^pre_logits\.(fc\d)\.', r'pre_logits.\1.0.', key)
    return remap_checkpoint(state_dict, model, rename)


def _create_vgg(variant: str, pretrained: bool, depth: int, batchnorm: bool, **kwargs) -> VGG:
    # features_only gives all six features by default, as timm's VGG
    return build_family_model(VGG, variant, pretrained, checkpoint_filter_fn, config=VGG_CONFIGS[depth],
                              batchnorm=batchnorm, feature_cfg=dict(out_indices=(0, 1, 2, 3, 4, 5)), **kwargs)


default_cfgs = twin_pretrained_cfgs({f'vgg{d}{bn}': ('tv_in1k',) for d in VGG_CONFIGS for bn in ('', '_bn')},
                                    first_conv='stage1.0', classifier='head.fc')


@register_model
def metalayers_vgg11(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-11 (configuration A)."""
    return _create_vgg('metalayers_vgg11', pretrained, 11, False, **kwargs)


@register_model
def metalayers_vgg11_bn(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-11 with batch norm after every conv."""
    return _create_vgg('metalayers_vgg11_bn', pretrained, 11, True, **kwargs)


@register_model
def metalayers_vgg13(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-13 (configuration B)."""
    return _create_vgg('metalayers_vgg13', pretrained, 13, False, **kwargs)


@register_model
def metalayers_vgg13_bn(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-13 with batch norm after every conv."""
    return _create_vgg('metalayers_vgg13_bn', pretrained, 13, True, **kwargs)


@register_model
def metalayers_vgg16(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-16 (configuration D)."""
    return _create_vgg('metalayers_vgg16', pretrained, 16, False, **kwargs)


@register_model
def metalayers_vgg16_bn(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-16 with batch norm after every conv."""
    return _create_vgg('metalayers_vgg16_bn', pretrained, 16, True, **kwargs)


@register_model
def metalayers_vgg19(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-19 (configuration E)."""
    return _create_vgg('metalayers_vgg19', pretrained, 19, False, **kwargs)


@register_model
def metalayers_vgg19_bn(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-19 with batch norm after every conv."""
    return _create_vgg('metalayers_vgg19_bn', pretrained, 19, True, **kwargs)
