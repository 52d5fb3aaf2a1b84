"""Normalisation layers of the guide: ``LayerNormV2``, ``ChannelLayerNorm`` and ``prenorm``."""

import numbers
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._factory import ActivationArg, NormArg, check_bool, check_positive_int, check_real, create_activation, \
    create_norm, resolve_norm_layer

_UNSET: Any = object()  # "activation not given as a keyword"


def _activation_or_identity(activation: ActivationArg) -> nn.Module:
    act = create_activation(activation)
    return nn.Identity() if act is None else act


def _check_eps(eps: object) -> float:
    eps = check_real(eps, 'eps')
    if eps <= 0:
        raise ValueError(f'eps must be > 0 (it keeps the division finite), got {eps}')
    return eps


class LayerNormV2(nn.LayerNorm):
    """PyTorch's LayerNorm (eps inside the square root) over the trailing ``size`` dims, then an activation.

    The guide's ``LayerNormV2(size..., λ)``: ``LayerNormV2(768)``, ``LayerNormV2(7, 7)``, ``LayerNormV2(8, "gelu")``
    (a last positional that is not an int is the activation) or ``LayerNormV2(8, activation="gelu")``.

    Args:
        size: the trailing dimensions to normalise (ints, or one tuple of them), optionally followed by
            the activation.
        activation: applied after the normalisation (None for none).
        affine: learn a per-element scale and shift.
        eps: added to the variance before the square root; > 0.
    """

    def __init__(self, *size_act: Union[int, Sequence[int], ActivationArg], activation: ActivationArg = _UNSET,
                 affine: bool = True, eps: float = 1e-5, device=None, dtype=None):
        size = size_act
        if size and not isinstance(size[-1], (numbers.Number, tuple, list, torch.Size)):
            if activation is not _UNSET:
                raise TypeError(f'LayerNormV2 got the activation twice: {size[-1]!r} after the sizes and '
                                f'activation={activation!r}')
            size, activation = size[:-1], size[-1]
        if activation is _UNSET:
            activation = None
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        if not size:
            raise ValueError('LayerNormV2 needs at least one size, got none')
        for s in size:
            check_positive_int(s, 'size')
        check_bool(affine, 'affine')
        eps = _check_eps(eps)
        super().__init__(size, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)
        self.act = _activation_or_identity(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.normalized_shape)
        if x.dim() < n or list(x.shape[x.dim() - n:]) != list(self.normalized_shape):
            raise ValueError(f'LayerNormV2(size={list(self.normalized_shape)}) expects x to end in those '
                             f'dimensions, got shape {list(x.shape)}')
        return self.act(F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps))


class ChannelLayerNorm(nn.Module):
    """LayerNorm across the channels of each pixel of an NCHW tensor, then scale, shift and activation.

    Numerically the same as timm's ``LayerNorm2d``; channels_last inputs stay channels_last.

    Args:
        planes: number of channels of the input (the guide's ``sz``).
        activation: applied after the normalisation (None for none).
        eps: added to the variance before the square root (PyTorch's convention); > 0.
        affine: learn the per-channel scale (``weight``) and shift (``bias``).
    """

    def __init__(self, planes: int, activation: ActivationArg = None, *, eps: float = 1e-6,
                 affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.planes = check_positive_int(planes, 'planes')
        self.eps = _check_eps(eps)
        if check_bool(affine, 'affine'):
            self.weight = nn.Parameter(torch.ones(planes, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(planes, device=device, dtype=dtype))
        else:
            self.register_parameter('weight', None)
            self.register_parameter('bias', None)
        self.act = _activation_or_identity(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'ChannelLayerNorm expects x to be a 4-D NCHW tensor, got a {x.dim()}-D tensor '
                             f'of shape {list(x.shape)}')
        if x.shape[1] != self.planes:
            raise ValueError(f'ChannelLayerNorm(planes={self.planes}) got x with {x.shape[1]} channels '
                             f'(shape {list(x.shape)})')
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.planes,), self.weight, self.bias, self.eps)
        return self.act(x.permute(0, 3, 1, 2))

    def extra_repr(self) -> str:
        return f'{self.planes}, eps={self.eps}'


def prenorm(planes: int, block: nn.Module, *, norm_layer: NormArg = nn.LayerNorm) -> nn.Sequential:
    """Put a normalisation layer in front of ``block``: ``nn.Sequential(norm_layer(planes), block)``.

    Args:
        planes: size of the dimension to normalise.
        block: the block that follows the normalisation.
        norm_layer: the normalisation layer (class, ``planes -> module`` callable or timm name).
    """
    check_positive_int(planes, 'planes')
    if not isinstance(block, nn.Module):
        raise TypeError(f'block must be an nn.Module, got {block!r} of type {type(block).__name__}')
    factory = resolve_norm_layer(norm_layer)
    if factory is None:
        raise ValueError(f'prenorm needs a norm layer, got norm_layer={norm_layer!r}')
    return nn.Sequential(create_norm(factory, planes), block)


__all__ = ['LayerNormV2', 'ChannelLayerNorm', 'prenorm']
