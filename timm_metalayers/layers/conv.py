"""Convolution + normalisation blocks: ``conv_norm`` and ``basic_conv_bn``."""

import functools
from typing import List, Optional, Tuple, Union

from torch import nn

from ._factory import ActivationArg, NormArg, check_positive_int, create_activation, create_norm, pair, \
    resolve_norm_layer

PadArg = Union[int, Tuple[int, int], str]


def _conv_padding(pad: PadArg, kernel_size: Tuple[int, int], stride: int, dilation: int):
    if isinstance(pad, str):
        if pad != 'same':
            raise ValueError(f'pad must be an int, a pair of ints or "same", got {pad!r}')
        if all(k % 2 == 1 for k in kernel_size):
            return tuple(dilation * (k - 1) // 2 for k in kernel_size)
        if stride == 1:
            return 'same'
        raise ValueError(f'pad="same" with an even kernel_size={kernel_size} needs stride=1, got stride={stride}')
    if isinstance(pad, (tuple, list)):
        if len(pad) != 2 or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pad):
            raise ValueError(f'pad must be an int >= 0, a pair of them or "same", got {pad!r}')
        return tuple(pad)
    return check_positive_int(pad, 'pad', allow_zero=True)


def conv_norm(
        kernel_size: Union[int, Tuple[int, int]],
        inplanes: int,
        outplanes: int,
        activation: ActivationArg = 'relu',
        *,
        norm_layer: NormArg = nn.BatchNorm2d,
        revnorm: bool = False,
        preact: bool = False,
        stride: int = 1,
        pad: PadArg = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: Optional[bool] = None,
) -> List[nn.Module]:
    """A convolution with its normalisation layer and activation, as a list to splat into ``nn.Sequential``.

    Args:
        kernel_size: size of the convolution kernel (an int or ``(kh, kw)``).
        inplanes: number of input feature maps.
        outplanes: number of output feature maps.
        activation: activation after the block: a timm name, an ``nn.Module`` class or instance,
            a function on tensors, or None for none.
        norm_layer: normalisation layer: a class, a ``planes -> nn.Module`` callable or a timm name;
            None (or ``nn.Identity``) means no normalisation.
        revnorm: put the normalisation before the convolution (it then normalises ``inplanes``).
        preact: put the activation before the normalisation (not together with ``revnorm``).
        stride, pad, dilation, groups: as for ``nn.Conv2d``; ``pad`` may also be ``"same"``.
        bias: convolution bias; by default only when there is no normalisation layer.

    Returns:
        ``[conv, norm, act]``; ``[norm, conv, act]`` with ``revnorm``; ``[conv, act, norm]`` with ``preact``;
        ``[conv, act]`` without a norm layer. The activation is left out when it is None.
    """
    kernel_size = pair(kernel_size, 'kernel_size')
    check_positive_int(inplanes, 'inplanes')
    check_positive_int(outplanes, 'outplanes')
    check_positive_int(stride, 'stride')
    check_positive_int(dilation, 'dilation')
    check_positive_int(groups, 'groups')
    if inplanes % groups or outplanes % groups:
        raise ValueError(f'groups={groups} must divide inplanes={inplanes} and outplanes={outplanes}')
    if bias is not None and not isinstance(bias, bool):
        raise TypeError(f'bias must be True, False or None, got {bias!r}')
    norm_factory = resolve_norm_layer(norm_layer)
    if preact and revnorm:
        raise ValueError('preact=True and revnorm=True cannot be combined: preact puts the activation '
                         'before a norm that follows the conv, revnorm puts the norm before the conv')
    if norm_factory is None and (preact or revnorm):
        raise ValueError(f'preact={preact} / revnorm={revnorm} need a norm layer, got norm_layer={norm_layer!r}')

    if bias is None:
        bias = norm_factory is None
    padding = _conv_padding(pad, kernel_size, stride, dilation)
    conv = nn.Conv2d(inplanes, outplanes, kernel_size, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=bias)
    act = create_activation(activation, inplace=True)

    if norm_factory is None:
        layers = [conv, act]
    elif revnorm:
        layers = [create_norm(norm_factory, inplanes), conv, act]
    elif preact:
        layers = [conv, act, create_norm(norm_factory, outplanes)]
    else:
        layers = [conv, create_norm(norm_factory, outplanes), act]
    return [layer for layer in layers if layer is not None]


def basic_conv_bn(
        kernel_size: Union[int, Tuple[int, int]],
        inplanes: int,
        outplanes: int,
        activation: ActivationArg = 'relu',
        *,
        batchnorm: bool = True,
        **kwargs,
) -> List[nn.Module]:
    """``conv_norm`` with TensorFlow's batch-norm defaults (eps 1e-3), as the Inception family uses.

    Args:
        kernel_size, inplanes, outplanes, activation: as for ``conv_norm``.
        batchnorm: add ``BatchNorm2d(eps=1e-3)`` after the convolution; False gives a biased conv and no norm.
        kwargs: passed on to ``conv_norm`` (``stride``, ``pad``, ...).
    """
    if 'norm_layer' in kwargs:
        raise TypeError('basic_conv_bn chooses its own norm layer; use batchnorm=True/False, '
                        f'or conv_norm for norm_layer={kwargs["norm_layer"]!r}')
    norm_layer = functools.partial(nn.BatchNorm2d, eps=1e-3) if batchnorm else None
    return conv_norm(kernel_size, inplanes, outplanes, activation, norm_layer=norm_layer, **kwargs)


__all__ = ['conv_norm', 'basic_conv_bn']
