"""SqueezeNet 1.0 and 1.1 as Metalhead.jl's ``squeezenet``: ``fire`` modules (a 1x1 squeeze, then 1x1 and 3x3
expand branches in a ``Parallel`` whose outputs are concatenated) and a 1x1-conv classifier pooled last.

Paper: `SqueezeNet: AlexNet-level accuracy with 50x fewer parameters` - https://arxiv.org/abs/1602.07360

Twins of ``torchvision.models.squeezenet1_0`` / ``squeezenet1_1``; torchvision's state dicts load through
``checkpoint_filter_fn``.
"""
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import register_model

from ..layers import conv_norm, create_classifier
from ..layers._factory import ActivationArg, NormArg, check_positive_int
from ._base import ModelArgs
from ._helpers import build_family_model, remap_checkpoint
from ._inception import Parallel
from ._torchvision import ConvStagesNet, torchvision_pretrained_cfgs

__all__ = ['SqueezeNet', 'fire', 'squeezenet', 'SQUEEZENET_CONFIGS', 'checkpoint_filter_fn']

Fire = Tuple[int, int, int]
# version -> (stem kernel, stem width, stages); a stage is a 3x3/2 max pool then fire modules
# (squeeze planes, expand 1x1 planes, expand 3x3 planes), as torchvision's (Metalhead's table is 1.1's
# with 1.0's stem).
SQUEEZENET_CONFIGS: Dict[str, Tuple[int, int, List[List[Fire]]]] = {
    '1_0': (7, 96, [[(16, 64, 64), (16, 64, 64), (32, 128, 128)],
                    [(32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256)],
                    [(64, 256, 256)]]),
    '1_1': (3, 64, [[(16, 64, 64), (16, 64, 64)],
                    [(32, 128, 128), (32, 128, 128)],
                    [(48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]]),
}


def fire(inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int, *,
         act_layer: ActivationArg = 'relu', norm_layer: NormArg = None) -> nn.Sequential:
    """Metalhead's ``fire``: ``squeeze`` (1x1) → ``expand`` = ``Parallel`` (1x1 | 3x3), concatenated."""
    def conv(k: int, cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(*conv_norm(k, cin, cout, act_layer, norm_layer=norm_layer, pad=k // 2))
    return nn.Sequential(OrderedDict(
        squeeze=conv(1, inplanes, squeeze_planes),
        expand=Parallel(conv(1, squeeze_planes, expand1x1_planes), conv(3, squeeze_planes, expand3x3_planes)),
    ))


class SqueezeNet(ConvStagesNet):
    """SqueezeNet with timm's model API: ``stem`` (conv + ReLU) → ``stages`` (max pool + fire modules) →
    ``head`` (dropout → 1x1 conv → ReLU → global pool, ``create_classifier(..., pool_last=True)``)."""

    @torch.jit.ignore
    def init_weights(self) -> None:
        """As torchvision: Kaiming-uniform convs, the classifier conv normal (std 0.01), zero biases."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if name == 'head.fc':
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _check_config(config: object) -> Tuple[int, int, List[List[Fire]]]:
    if isinstance(config, str):
        if config not in SQUEEZENET_CONFIGS:
            raise ValueError(f'config={config!r}: use one of {sorted(SQUEEZENET_CONFIGS)} or '
                             '(stem kernel, stem width, stages of (squeeze, expand1x1, expand3x3) rows)')
        return SQUEEZENET_CONFIGS[config]
    if not isinstance(config, (tuple, list)) or len(config) != 3 or not config[2]:
        raise ValueError(f'config must be (stem kernel, stem width, non-empty list of stages), got {config!r}')
    kernel, width, stages = config
    check_positive_int(kernel, 'config stem kernel')
    check_positive_int(width, 'config stem width')
    for s, stage in enumerate(stages):
        if not stage:
            raise ValueError(f'config stage {s} has no fire modules')
        for b, row in enumerate(stage):
            if not isinstance(row, (tuple, list)) or len(row) != 3:
                raise ValueError(f'config stage {s} row {b} must be (squeeze, expand1x1, expand3x3), got {row!r}')
            for value, what in zip(row, ('squeeze', 'expand1x1', 'expand3x3')):
                check_positive_int(value, f'config stage {s} row {b} {what}')
    return kernel, width, [list(stage) for stage in stages]


def squeezenet(
        config: Union[str, Tuple[int, int, Sequence[Sequence[Fire]]]] = '1_1',
        *,
        drop_rate: float = 0.5,
        act_layer: ActivationArg = 'relu',
        norm_layer: NormArg = None,
        **timm_args: Any,
) -> SqueezeNet:
    """Build a SqueezeNet (Metalhead.jl's ``squeezenet``).

    Args:
        config: ``"1_0"``, ``"1_1"`` or ``(stem kernel, stem width, stages)``, a stage being a list of fire
            rows ``(squeeze planes, expand1x1 planes, expand3x3 planes)`` after a 3x3/2 max pool.
        drop_rate: dropout before the classifier (0.5 as Metalhead and torchvision).
        act_layer: activation of every conv (and of the classifier, as the paper's final ReLU).
        norm_layer: normalisation after every conv (none by default, as the paper).
        timm_args: timm's ``num_classes`` (of the 1x1-conv classifier; 0: the model returns pooled features),
            ``in_chans``, ``global_pool`` (the pool after the classifier; ``''`` for none), ``device``, ``dtype``
            (``ModelArgs``).
    """
    kernel, width, stages_cfg = _check_config(config)
    args = ModelArgs.take('squeezenet', timm_args, drop_rate=drop_rate)
    with args.device_context():
        stem = nn.Sequential(*conv_norm(kernel, args.in_chans, width, act_layer, norm_layer=norm_layer, stride=2))
        stages, inplanes = [], width
        feature_info = [dict(num_chs=width, reduction=2, module='stem')]
        for s, stage in enumerate(stages_cfg):
            blocks: List[nn.Module] = [nn.MaxPool2d(3, stride=2, ceil_mode=True)]
            for squeeze, e1, e3 in stage:
                blocks.append(fire(inplanes, squeeze, e1, e3, act_layer=act_layer, norm_layer=norm_layer))
                inplanes = e1 + e3
            stages.append(nn.Sequential(*blocks))
            feature_info.append(dict(num_chs=inplanes, reduction=2 ** (s + 2), module=f'stages.{s}'))
        head = create_classifier(inplanes, args.num_classes, act_layer, use_conv=True, pool_last=True,
                                 pool_layer=args.global_pool, dropout_prob=args.drop_rate or None)
        model = SqueezeNet(stem, nn.Sequential(*stages), head, feature_info, args)
    model.finish_init(args.dtype)
    return model


# ---------------------------------------------------------------------------------------------------------
# torchvision's checkpoints: features.{i} (conv, ReLU, pools and Fire: squeeze, expand1x1, expand3x3),
# classifier.1 (the 1x1 conv).

_FIRE_PARTS = {'squeeze': 'squeeze.0', 'expand1x1': 'expand.branch0.0', 'expand3x3': 'expand.branch1.0'}


def _torchvision_renamer(model: SqueezeNet) -> Callable[[str], Optional[str]]:
    paths = {'0': 'stem'}  # torchvision's features index -> our module path
    index = 2  # after the conv and its ReLU: each stage's max pool, then its fire modules
    for s, stage in enumerate(model.stages):
        for b in range(len(stage)):
            paths[str(index)] = f'stages.{s}.{b}'
            index += 1

    def rename(key: str) -> Optional[str]:
        parts = key.split('.')
        if parts[0] == 'classifier' and len(parts) == 3 and parts[1] == '1':
            return f'head.fc.{parts[2]}'
        if parts[0] != 'features' or len(parts) < 3 or parts[1] not in paths:
            return key
        if len(parts) == 3:
            return f'{paths[parts[1]]}.0.{parts[2]}'
        if len(parts) == 4 and parts[2] in _FIRE_PARTS:
            return f'{paths[parts[1]]}.{_FIRE_PARTS[parts[2]]}.{parts[3]}'
        return key

    return rename


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: SqueezeNet) -> Dict[str, torch.Tensor]:
    """Map a torchvision ``squeezenet1_0`` / ``squeezenet1_1`` state dict (or one of ours) onto ``model``,
    strictly: ``CheckpointMismatchError`` names every unmapped, missing or mis-shaped key."""
    return remap_checkpoint(state_dict, model, _torchvision_renamer(model))


def _create_squeezenet(variant: str, config: str, pretrained: bool = False, **kwargs) -> SqueezeNet:
    # four features (output strides 2, 4, 8, 16): timm's default out_indices would ask for five
    return build_family_model(squeezenet, variant, pretrained, checkpoint_filter_fn, config=config,
                              feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


default_cfgs = torchvision_pretrained_cfgs({
    'metalayers_squeezenet1_0': ('squeezenet1_0', {}, (13, 13)),
    'metalayers_squeezenet1_1': ('squeezenet1_1', {}, (13, 13)),
}, first_conv='stem.0')


@register_model
def metalayers_squeezenet1_0(pretrained: bool = False, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.0 (torchvision's ``squeezenet1_0``)."""
    return _create_squeezenet('metalayers_squeezenet1_0', '1_0', pretrained, **kwargs)


@register_model
def metalayers_squeezenet1_1(pretrained: bool = False, **kwargs) -> SqueezeNet:
    """SqueezeNet 1.1 (torchvision's ``squeezenet1_1``: 2.4x less computation than 1.0)."""
    return _create_squeezenet('metalayers_squeezenet1_1', '1_1', pretrained, **kwargs)
