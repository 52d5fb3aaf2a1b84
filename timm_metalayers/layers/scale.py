"""Scales: ``LayerScale``, a learnable per-channel scale (CaiT, "Going deeper with Image Transformers"), and
``inputscale``, a fixed scalar scale with an activation."""

from typing import List, Optional

import torch
from torch import nn

from ._factory import ActivationArg, check_positive_int, check_real, create_activation


class LayerScale(nn.Module):
    """Multiply each channel by a learnable factor initialised to ``init_value``.

    Args:
        planes: size of the channel dimension of the input.
        init_value: initial value of every factor (the guide's λ); ``<= 0`` or None gives an identity
            without parameters, as in Metalhead. NaN and infinities are refused.
        dim: the channel dimension: -1 for tokens ``(N, L, C)``, 1 for NCHW images.
    """

    def __init__(self, planes: int, init_value: Optional[float], *, dim: int = -1, device=None, dtype=None):
        super().__init__()
        self.planes = check_positive_int(planes, 'planes')
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f'dim must be an int, got {dim!r}')
        if init_value is not None:
            init_value = check_real(init_value, 'init_value')
        self.dim = dim
        self.init_value = init_value
        if init_value is not None and init_value > 0:
            self.gamma = nn.Parameter(torch.full((planes,), float(init_value), device=device, dtype=dtype))
        else:
            self.register_parameter('gamma', None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma
        if gamma is None:
            return x
        dim = self.dim if self.dim >= 0 else x.dim() + self.dim
        if dim < 0 or dim >= x.dim() or x.shape[dim] != self.planes:
            raise ValueError(f'LayerScale(planes={self.planes}, dim={self.dim}) got an input of shape '
                             f'{list(x.shape)}')
        if dim == x.dim() - 1:
            return x * gamma
        shape: List[int] = [1] * x.dim()
        shape[dim] = self.planes
        return x * gamma.view(shape)

    def extra_repr(self) -> str:
        return f'{self.planes}, init_value={self.init_value}, dim={self.dim}'


class Affine(nn.Module):
    """``alpha * x + beta`` per channel of tokens ``(N, L, C)`` (last dimension): ResMLP's "norm", Flux's
    ``Scale(planes)``. ``alpha`` starts at 1, ``beta`` at 0 (timm's ``Affine``; our parameters are ``(C,)``).

    Args:
        planes: number of channels (the last dimension of the input).
    """

    def __init__(self, planes: int, *, device=None, dtype=None):
        super().__init__()
        self.planes = check_positive_int(planes, 'planes')
        self.alpha = nn.Parameter(torch.ones(planes, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(planes, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.planes:
            raise ValueError(f'Affine(planes={self.planes}) got an input of shape {list(x.shape)}')
        return torch.addcmul(self.beta, self.alpha, x)

    def extra_repr(self) -> str:
        return str(self.planes)


class InputScale(nn.Module):
    """``activation(scale * x)`` with a fixed (not learned) scalar ``scale``; build it with ``inputscale``."""

    def __init__(self, scale: float, activation: nn.Module):
        super().__init__()
        self.scale = check_real(scale, 'scale')
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x * self.scale)

    def extra_repr(self) -> str:
        return f'scale={self.scale}'


def inputscale(scale: float, *, activation: ActivationArg = None) -> InputScale:
    """Metalhead's ``inputscale(λ; activation)``: a layer computing ``activation(λ * x)``.

    Args:
        scale: the fixed factor λ (a finite number), e.g. the residual scale of Inception-ResNet.
        activation: applied after scaling (any ``conv_norm`` activation form); None for none.
    """
    act = create_activation(activation)
    return InputScale(scale, nn.Identity() if act is None else act)


__all__ = ['LayerScale', 'Affine', 'InputScale', 'inputscale']
