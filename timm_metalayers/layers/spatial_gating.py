"""gMLP's spatial gating unit: half of the channels gate the other half through a projection across tokens."""

import torch
from torch import nn

from ._factory import NormArg, check_positive_int, create_norm, resolve_norm_layer


class SpatialGatingUnit(nn.Module):
    """Split the features of ``(N, npatches, planes)`` tokens in halves ``u, v``; return ``u * proj(norm(v))``,
    where ``proj`` is a Linear layer across the ``npatches`` tokens ("Pay Attention to MLPs").

    ``proj`` starts as weight ~ N(0, 1e-6), bias 1 (timm's initialisation), so the unit begins close to
    ``u``: each token gated by one. Parameter names are those of timm's ``SpatialGatingUnit``
    (``norm.*``, ``proj.*``). The output has ``planes // 2`` features.

    Args:
        planes: features of the input; even.
        npatches: number of tokens (the sequence length).
        norm_layer: normalisation of the gate half (``planes // 2`` features): a class, a ``planes -> module``
            callable or a timm name; ``nn.LayerNorm`` by default.
    """

    def __init__(self, planes: int, npatches: int, *, norm_layer: NormArg = nn.LayerNorm):
        super().__init__()
        check_positive_int(planes, 'planes')
        self.npatches = check_positive_int(npatches, 'npatches')
        if planes % 2:
            raise ValueError(f'planes must be even (half of the features gate the other half), got {planes}')
        factory = resolve_norm_layer(norm_layer)
        self.norm = nn.Identity() if factory is None else create_norm(factory, planes // 2)
        self.proj = nn.Linear(npatches, npatches)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's initialisation of the gate projection: weight ~ N(0, 1e-6), bias 1."""
        nn.init.normal_(self.proj.weight, std=1e-6)
        nn.init.ones_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        v = self.proj(self.norm(v).transpose(-1, -2))
        return u * v.transpose(-1, -2)

    def extra_repr(self) -> str:
        return f'npatches={self.npatches}'


__all__ = ['SpatialGatingUnit']
