"""AlexNet as Metalhead.jl's ``alexnet`` (torchvision's one-GPU variant): five ``conv_norm`` convolutions with
max pools, a 6x6 adaptive average pool and the two 4096-wide hidden layers of ``create_classifier``.

Paper: `ImageNet Classification with Deep Convolutional Neural Networks` -
https://papers.nips.cc/paper/2012/hash/c399862d3b9d6b76c8436e924a68c45b-Abstract.html

Twin of ``torchvision.models.alexnet``; torchvision's state dicts load through ``checkpoint_filter_fn``.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import register_model

from ..layers import conv_norm, create_classifier
from ..layers._factory import ActivationArg, NormArg, check_positive_int
from ._base import ModelArgs
from ._helpers import build_family_model, remap_checkpoint
from ._torchvision import ConvStagesNet, torchvision_pretrained_cfgs

__all__ = ['AlexNet', 'alexnet', 'checkpoint_filter_fn']

# (kernel, out channels, stride, padding) of each conv, per stage; stages after the first start with a
# 3x3/2 max pool, and a last stage is that pool alone.
ALEXNET_CONVS: Tuple[Tuple[Tuple[int, int, int, int], ...], ...] = (
    ((11, 64, 4, 2),),
    ((5, 192, 1, 2),),
    ((3, 384, 1, 1), (3, 256, 1, 1), (3, 256, 1, 1)),
    (),
)


class AlexNet(ConvStagesNet):
    """AlexNet with timm's model API: ``stem`` (11x11/4 conv) → ``stages`` (max pool + convs) → ``head``
    (6x6 average pool → flatten → two 4096-wide hidden layers with ReLU and dropout → ``fc``)."""


def _pool(global_pool: Union[str, nn.Module], pool_size: int) -> nn.Module:
    if isinstance(global_pool, nn.Module):
        return global_pool
    pools = {'avg': nn.AdaptiveAvgPool2d, 'max': nn.AdaptiveMaxPool2d}
    if global_pool not in pools:
        raise ValueError(f'global_pool={global_pool!r}: AlexNet\'s hidden layers read a {pool_size}x{pool_size} '
                         f'grid; use "avg", "max" or a module')
    return pools[global_pool](pool_size)


def alexnet(
        *,
        hidden_planes: Sequence[int] = (4096, 4096),
        pool_size: int = 6,
        drop_rate: float = 0.5,
        act_layer: ActivationArg = 'relu',
        norm_layer: NormArg = None,
        **timm_args: Any,
) -> AlexNet:
    """Build an AlexNet (Metalhead.jl's ``alexnet``).

    Args:
        hidden_planes: widths of the head's hidden layers.
        pool_size: the adaptive pool's output grid (6: 256 x 6 x 6 features into the first hidden layer).
        drop_rate: dropout after each hidden layer (0.5 as Metalhead and torchvision).
        act_layer: activation of every conv and hidden layer.
        norm_layer: normalisation after every conv (none by default, as the paper's network here).
        timm_args: timm's ``num_classes`` (0: the model returns the last hidden features), ``in_chans``,
            ``global_pool`` (``"avg"``: adaptive average pool to ``pool_size``, ``"max"`` or a module), ``device``,
            ``dtype`` (``ModelArgs``).
    """
    args = ModelArgs.take('alexnet', timm_args, drop_rate=drop_rate)
    check_positive_int(pool_size, 'pool_size')
    in_chans = args.in_chans
    with args.device_context():
        def conv(cin: int, spec: Tuple[int, int, int, int]) -> nn.Sequential:
            k, cout, stride, pad = spec
            return nn.Sequential(*conv_norm(k, cin, cout, act_layer, norm_layer=norm_layer, stride=stride, pad=pad))
        stem = conv(in_chans, ALEXNET_CONVS[0][0])
        inplanes, reduction = ALEXNET_CONVS[0][0][1], ALEXNET_CONVS[0][0][2]
        feature_info = [dict(num_chs=inplanes, reduction=reduction, module='stem')]
        stages = []
        for s, convs in enumerate(ALEXNET_CONVS[1:]):
            blocks = [nn.MaxPool2d(3, stride=2)]
            for spec in convs:
                blocks.append(conv(inplanes, spec))
                inplanes = spec[1]
            stages.append(nn.Sequential(*blocks))
            reduction *= 2
            feature_info.append(dict(num_chs=inplanes, reduction=reduction, module=f'stages.{s}'))
        head = create_classifier(inplanes, tuple(hidden_planes), args.num_classes, (act_layer, None),
                                 pool_layer=_pool(args.global_pool, pool_size), dropout_prob=args.drop_rate or None)
        model = AlexNet(stem, nn.Sequential(*stages), head, feature_info, args)
    model.finish_init(args.dtype)
    return model


# torchvision's checkpoint: features.{0,3,6,8,10} (convs), classifier.{1,4,6} (Linear layers).
_TORCHVISION_NAMES = {
    'features.0': 'stem.0', 'features.3': 'stages.0.1.0', 'features.6': 'stages.1.1.0',
    'features.8': 'stages.1.2.0', 'features.10': 'stages.1.3.0',
    'classifier.1': 'head.hidden', 'classifier.4': 'head.hidden1', 'classifier.6': 'head.fc',
}


def _rename(key: str) -> Optional[str]:
    module, _, leaf = key.rpartition('.')
    return f'{_TORCHVISION_NAMES[module]}.{leaf}' if module in _TORCHVISION_NAMES else key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: AlexNet) -> Dict[str, torch.Tensor]:
    """Map a torchvision ``alexnet`` state dict (or one of ours) onto ``model``, strictly:
    ``CheckpointMismatchError`` names every unmapped, missing or mis-shaped key."""
    return remap_checkpoint(state_dict, model, _rename)


default_cfgs = torchvision_pretrained_cfgs({'metalayers_alexnet': ('alexnet', {}, (6, 6))}, first_conv='stem.0')


@register_model
def metalayers_alexnet(pretrained: bool = False, **kwargs) -> AlexNet:
    """AlexNet (torchvision's ``alexnet``)."""
    # four features (output strides 4, 8, 16, 32): timm's default out_indices would ask for five
    return build_family_model(alexnet, 'metalayers_alexnet', pretrained, checkpoint_filter_fn,
                              feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)
