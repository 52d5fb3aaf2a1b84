"""``swapdims``: a layer permuting the dimensions of its input."""

from typing import List, Sequence

import torch
from torch import nn


class SwapDims(nn.Module):
    """``x.permute(perm)`` as a layer, e.g. ``SwapDims((0, 2, 3, 1))`` turns NCHW into NHWC."""

    def __init__(self, perm: Sequence[int]):
        super().__init__()
        if isinstance(perm, (str, bytes)) or not isinstance(perm, Sequence) or \
                any(isinstance(p, bool) or not isinstance(p, int) for p in perm):
            raise TypeError(f'perm must be a tuple of dimension indices, got {perm!r}')
        if sorted(perm) != list(range(len(perm))):
            raise ValueError(f'perm must be a permutation of 0..{len(perm) - 1}, got {tuple(perm)}')
        self.perm: List[int] = list(perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != len(self.perm):
            raise ValueError(f'SwapDims(perm={self.perm}) expects a {len(self.perm)}-D input, got shape '
                             f'{list(x.shape)}')
        return x.permute(self.perm)

    def extra_repr(self) -> str:
        return f'perm={tuple(self.perm)}'


def swapdims(perm: Sequence[int]) -> SwapDims:
    """Metalhead's ``swapdims(perm)``: a layer computing ``x.permute(perm)``.

    Args:
        perm: a permutation of ``0 .. ndim - 1`` in PyTorch's dimension order (0-based; Metalhead's is 1-based
            over Julia's reversed WHCN order), e.g. ``(0, 2, 1)`` swaps tokens and features of ``(N, L, C)``.
    """
    return SwapDims(perm)


__all__ = ['swapdims', 'SwapDims']
