"""``MultiHeadSelfAttention``: multi-head self-attention over a token sequence (Metalhead's layer)."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_module

from ._factory import check_bool, check_positive_int, check_probability


@register_notrace_module  # checks its input shape, so torch.fx keeps it as one leaf
class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on tokens ``(N, L, dim)``, computed by ``F.scaled_dot_product_attention``.

    Args:
        dim: token width; split evenly across the heads.
        num_heads: number of attention heads (must divide ``dim``).
        qkv_bias: learn a bias in the fused query/key/value projection ``qkv``.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection ``proj``.

    Weights are named as in timm's ``Attention`` (``qkv``, ``proj``), so its checkpoints map one to one.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.dim = check_positive_int(dim, 'dim')
        self.num_heads = check_positive_int(num_heads, 'num_heads')
        if dim % num_heads:
            raise ValueError(f'dim must be divisible by num_heads, got dim={dim} and num_heads={num_heads}')
        check_bool(qkv_bias, 'qkv_bias')
        self.head_dim = dim // num_heads
        dd = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(check_probability(attn_drop, 'attn_drop', allow_none=False))
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(check_probability(proj_drop, 'proj_drop', allow_none=False))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``(N, L, dim)``; ``attn_mask``: optional boolean or additive mask broadcastable to
        ``(N, num_heads, L, L)``."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f'MultiHeadSelfAttention(dim={self.dim}) expects tokens (N, L, {self.dim}), '
                             f'got shape {list(x.shape)}')
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, L, C)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}'


__all__ = ['MultiHeadSelfAttention']
