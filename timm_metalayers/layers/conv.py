"""Convolution + normalisation blocks: ``conv_norm`` and ``basic_conv_bn``."""

import functools
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import nn
from timm.layers import create_conv2d

from ._factory import ActivationArg, NormArg, check_bool, check_positive_int, create_activation, create_norm, pair, \
    resolve_norm_layer

PadArg = Union[int, Tuple[int, int], str]
InitArg = Optional[Callable[[torch.Tensor], Any]]


def _create_conv(inplanes: int, outplanes: int, kernel_size: Tuple[int, int], *, stride: int, pad: PadArg,
                 dilation: int, groups: int, bias: bool) -> nn.Conv2d:
    """The convolution of ``conv_norm``: an ``nn.Conv2d``, or timm's ``Conv2dSame`` when TF "same" needs it."""
    geometry = dict(stride=stride, dilation=dilation, groups=groups, bias=bias)
    if isinstance(pad, str):
        if pad == 'same':
            # TensorFlow's SAME: static symmetric padding when it is exact, else timm's Conv2dSame pads
            # each input asymmetrically (the extra row / column at the end), as TF does.
            return create_conv2d(inplanes, outplanes, kernel_size, padding='same', **geometry)
        if pad == 'symmetric':
            spans = tuple(dilation * (k - 1) for k in kernel_size)
            if any(span % 2 for span in spans):
                raise ValueError(f'pad="symmetric" needs an odd kernel extent dilation * (k - 1) + 1, got '
                                 f'kernel_size={kernel_size}, dilation={dilation}; use pad="same" (TensorFlow\'s '
                                 f'asymmetric padding) instead')
            return nn.Conv2d(inplanes, outplanes, kernel_size, padding=tuple(span // 2 for span in spans), **geometry)
        raise ValueError(f'pad must be an int, a pair of ints, "same" or "symmetric", got {pad!r}')
    if isinstance(pad, (tuple, list)):
        if len(pad) != 2 or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in pad):
            raise ValueError(f'pad must be an int >= 0, a pair of them, "same" or "symmetric", got {pad!r}')
        padding = tuple(pad)
    else:
        padding = check_positive_int(pad, 'pad', allow_zero=True)
    return nn.Conv2d(inplanes, outplanes, kernel_size, padding=padding, **geometry)


def _apply_init(conv: nn.Conv2d, init: InitArg) -> None:
    """Initialise ``conv.weight`` with ``init``: in place (``nn.init.*_``) or from the tensor it returns."""
    if init is None:
        return
    with torch.no_grad():
        value = init(conv.weight)
        if value is None or value is conv.weight:
            return
        if not isinstance(value, torch.Tensor) or value.shape != conv.weight.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f'init must fill the weight in place or return a tensor of its shape '
                             f'{tuple(conv.weight.shape)}, got {shape}')
        conv.weight.copy_(value)


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
        init: InitArg = None,
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
        stride, dilation, groups: as for ``nn.Conv2d``.
        pad: an int or ``(ph, pw)`` for zero padding on both sides; ``"same"`` for TensorFlow's SAME padding
            (output ``ceil(H / stride)``, the extra row / column at the end when the total is odd, computed
            per input size when the stride is above 1: timm's ``Conv2dSame``); ``"symmetric"`` for
            ``dilation * (k - 1) // 2`` on every side (PyTorch / timm's default, Flux's ``SamePad``; odd kernels).
        bias: convolution bias; by default only when there is no normalisation layer.
        init: initialisation of the conv weight (the guide's ``init``): a callable given the weight tensor
            that fills it in place (``nn.init.kaiming_normal_``, ...) or returns a tensor of its shape;
            None keeps PyTorch's default.

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
    check_bool(revnorm, 'revnorm')
    check_bool(preact, 'preact')
    if init is not None and not callable(init):
        raise TypeError(f'init must be a callable given the conv weight (e.g. nn.init.kaiming_normal_) or None, '
                        f'got {init!r}')
    norm_factory = resolve_norm_layer(norm_layer)
    if preact and revnorm:
        raise ValueError('preact=True and revnorm=True cannot be combined: preact puts the activation '
                         'before a norm that follows the conv, revnorm puts the norm before the conv')
    if norm_factory is None and (preact or revnorm):
        raise ValueError(f'preact={preact} / revnorm={revnorm} need a norm layer, got norm_layer={norm_layer!r}')

    if bias is None:
        bias = norm_factory is None
    conv = _create_conv(inplanes, outplanes, kernel_size, stride=stride, pad=pad, dilation=dilation, groups=groups,
                        bias=bias)
    _apply_init(conv, init)
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
        kwargs: passed on to ``conv_norm`` (``stride``, ``pad``, ``init``, ...).
    """
    check_bool(batchnorm, 'batchnorm')
    if 'norm_layer' in kwargs:
        raise TypeError('basic_conv_bn chooses its own norm layer; use batchnorm=True/False, '
                        f'or conv_norm for norm_layer={kwargs["norm_layer"]!r}')
    norm_layer = functools.partial(nn.BatchNorm2d, eps=1e-3) if batchnorm else None
    return conv_norm(kernel_size, inplanes, outplanes, activation, norm_layer=norm_layer, **kwargs)


__all__ = ['conv_norm', 'basic_conv_bn']
