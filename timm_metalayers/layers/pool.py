"""Pooling: ``AdaptiveMeanMaxPool`` and the pool names timm's ``global_pool`` argument uses."""

import math
import operator
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import SelectAdaptivePool2d

from ._factory import pair


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two NCHW tensors along the channels (a ``connection`` for ``AdaptiveMeanMaxPool``)."""
    return torch.cat((a, b), dim=1)


class AdaptiveMeanMaxPool(nn.Module):
    """Adaptive mean pooling and adaptive max pooling of the same input, joined by ``connection``.

    Args:
        connection: how to join the two poolings; ``operator.add`` (default, their sum) or
            ``cat_channels`` (concatenation, twice the channels), or any function of two tensors.
            An int or tuple here is taken as ``output_size`` (the guide's ``AdaptiveMeanMaxPool((2, 2))``).
        output_size: spatial size after pooling.
    """

    def __init__(self, connection: Union[Callable, int, Tuple[int, int]] = operator.add,
                 output_size: Union[int, Tuple[int, int]] = (1, 1)):
        super().__init__()
        if isinstance(connection, (int, tuple, list)) and not isinstance(connection, bool):
            connection, output_size = operator.add, connection
        if not callable(connection):
            raise TypeError(f'connection must be a function of two tensors, got {connection!r}')
        self.output_size = pair(output_size, 'output_size')
        self.connection = connection
        self.mode = 'add' if connection is operator.add else 'cat' if connection is cat_channels else 'custom'

    @torch.jit.unused
    def _custom_connection(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.connection(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.adaptive_avg_pool2d(x, self.output_size)
        peak = F.adaptive_max_pool2d(x, self.output_size)
        if self.mode == 'add':
            return mean + peak
        if self.mode == 'cat':
            return torch.cat((mean, peak), dim=1)
        return self._custom_connection(mean, peak)

    def feat_mult(self) -> int:
        """How many times the input channels the output has (2 when concatenating)."""
        return 2 if self.mode == 'cat' else 1

    def extra_repr(self) -> str:
        name = getattr(self.connection, '__name__', repr(self.connection))
        return f'connection={name}, output_size={self.output_size}'


POOL_NAMES = ('avg', 'max', 'avgmax', 'catavgmax', 'meanmax', '')


class _AvgMaxPool2d(nn.Module):
    """timm's ``avgmax`` (``0.5 * (avg + max)``) or ``catavgmax`` (``cat((avg, max), 1)``), scriptable.

    timm's own ``AdaptiveAvgMaxPool2d`` / ``AdaptiveCatAvgMaxPool2d`` do not pass ``torch.jit.script``
    (a ``Union`` output size); these compute the same thing with the same ops.
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]] = 1, cat: bool = False):
        super().__init__()
        self.output_size = pair(output_size, 'output_size')
        self.cat = cat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_avg = F.adaptive_avg_pool2d(x, self.output_size)
        x_max = F.adaptive_max_pool2d(x, self.output_size)
        if self.cat:
            return torch.cat((x_avg, x_max), 1)
        return 0.5 * (x_avg + x_max)

    def extra_repr(self) -> str:
        return f'output_size={self.output_size}, cat={self.cat}'


class TokenPool(nn.Module):
    """Global pooling of tokens ``(N, L, C) → (N, C)``: ``'avg'`` (mean over the tokens), ``'max'`` or
    ``'avgmax'`` (half their sum), as the MLP mixers pool their patch tokens."""

    def __init__(self, pool_type: str = 'avg'):
        super().__init__()
        if pool_type not in TOKEN_POOL_NAMES:
            raise ValueError(f'pool_type must be one of {TOKEN_POOL_NAMES} for tokens, got {pool_type!r}')
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f'TokenPool expects tokens (N, L, C), got shape {list(x.shape)}')
        if self.pool_type == 'avg':
            return x.mean(dim=1)
        if self.pool_type == 'max':
            return x.amax(dim=1)
        return 0.5 * (x.mean(dim=1) + x.amax(dim=1))

    def extra_repr(self) -> str:
        return repr(self.pool_type)


TOKEN_POOL_NAMES = ('avg', 'max', 'avgmax')


def create_pool(pool_layer: Union[str, nn.Module, None], *, argname: str = 'pool_layer',
                tokens: bool = False) -> Optional[nn.Module]:
    """A pooling module from a module, None, or one of timm's ``global_pool`` names.

    Args:
        pool_layer: an ``nn.Module`` (returned as is; ``nn.Identity`` means none), None or ``""`` for no
            pooling, or a name: ``"avg"``, ``"max"``, ``"avgmax"`` (half the sum of the two) and
            ``"catavgmax"`` (the two concatenated, twice the channels) with timm's meanings, as
            timm's ``SelectAdaptivePool2d`` (without flatten, and scriptable); ``"meanmax"`` is
            ``AdaptiveMeanMaxPool()`` (their sum).
        argname: the argument name used in error messages.
        tokens: the input is tokens ``(N, L, C)``, not a map: a name gives a ``TokenPool``
            (``"avg"``, ``"max"``, ``"avgmax"``).
    """
    if pool_layer is None:
        return None
    if tokens and isinstance(pool_layer, str) and pool_layer:
        if pool_layer not in TOKEN_POOL_NAMES:
            raise ValueError(f'{argname}={pool_layer!r} cannot pool tokens; use one of {TOKEN_POOL_NAMES + ("",)}')
        return TokenPool(pool_layer)
    if isinstance(pool_layer, str):
        if pool_layer not in POOL_NAMES:
            raise ValueError(f'{argname}={pool_layer!r} is not a pool name; use one of {POOL_NAMES}')
        if pool_layer == '':
            return None
        if pool_layer == 'meanmax':
            return AdaptiveMeanMaxPool()
        pool = SelectAdaptivePool2d(pool_type=pool_layer, flatten=False)
        if pool_layer in ('avgmax', 'catavgmax'):
            pool.pool = _AvgMaxPool2d(1, cat=pool_layer == 'catavgmax')
        return pool
    if isinstance(pool_layer, nn.Module):
        if isinstance(pool_layer, nn.Identity) or (isinstance(pool_layer, SelectAdaptivePool2d)
                                                   and pool_layer.is_identity()):
            return None
        return pool_layer
    raise TypeError(f'{argname} must be an nn.Module, a pool name {POOL_NAMES} or None, '
                    f'got {pool_layer!r} of type {type(pool_layer).__name__}')


def pool_feat_mult(pool: Optional[nn.Module]) -> int:
    """Features per input channel after ``pool`` and a flatten: the concatenation factor times the output area."""
    if pool is None:
        return 1
    mult = pool.feat_mult() if hasattr(pool, 'feat_mult') else 1
    output_size = getattr(pool, 'output_size', None)
    if output_size is None and isinstance(pool, SelectAdaptivePool2d):
        output_size = getattr(pool.pool, 'output_size', 1)
    if output_size is not None:
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if all(isinstance(s, int) for s in sizes):
            mult *= math.prod(sizes)
    return mult


__all__ = ['AdaptiveMeanMaxPool', 'TokenPool', 'cat_channels', 'create_pool', 'pool_feat_mult', 'POOL_NAMES',
           'TOKEN_POOL_NAMES']
