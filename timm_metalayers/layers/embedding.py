"""Transformer inputs (Metalhead's ``PatchEmbedding``, ``ClassTokens``, ``ViPosEmbedding``)."""

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_module, resample_abs_pos_embed, trunc_normal_

from ._factory import NormArg, check_bool, check_positive_int, create_norm, pair, resolve_norm_layer

Size2 = Union[int, Tuple[int, int]]


@register_notrace_module  # checks its input shape, so torch.fx keeps it as one leaf
class PatchEmbedding(nn.Module):
    """Cut an image into ``patch_size`` patches and project each to ``embed_dim`` (a strided convolution).

    Args:
        img_size: image size the model is built for (int or ``(H, W)``); sets ``grid_size`` and ``num_patches``.
        patch_size: patch side (int or ``(h, w)``).
        in_chans: channels of the input image.
        embed_dim: width of each patch token.
        norm_layer: normalisation of the tokens (None for none).
        flatten: return tokens ``(N, H*W, embed_dim)``; False returns the ``(N, embed_dim, H, W)`` map.
        dynamic_img_size: accept any image size divisible by the patch size, not only ``img_size``.
        dynamic_img_pad: zero-pad the image on the bottom/right up to a multiple of the patch size.
        bias: learn a bias in the projection.
        fixed_size_reason: why the model needs exactly ``img_size`` (e.g. its token mixing is sized for the
            number of patches); the error for another image size then says so and names the size needed,
            instead of suggesting ``dynamic_img_size``.
    """
    strict_img_size: torch.jit.Final[bool]
    dynamic_img_pad: torch.jit.Final[bool]
    flatten: torch.jit.Final[bool]

    def __init__(self, img_size: Size2 = 224, patch_size: Size2 = 16, in_chans: int = 3, embed_dim: int = 768, *,
                 norm_layer: NormArg = None, flatten: bool = True, dynamic_img_size: bool = False,
                 dynamic_img_pad: bool = False, bias: bool = True, fixed_size_reason: str = '', device=None,
                 dtype=None):
        super().__init__()
        self.patch_size: Tuple[int, int] = pair(patch_size, 'patch_size')
        self.img_size, self.grid_size, self.num_patches = self._grid(img_size)
        self.in_chans = check_positive_int(in_chans, 'in_chans')
        self.embed_dim = check_positive_int(embed_dim, 'embed_dim')
        self.flatten = check_bool(flatten, 'flatten')
        self.strict_img_size = not check_bool(dynamic_img_size, 'dynamic_img_size')
        self.dynamic_img_pad = check_bool(dynamic_img_pad, 'dynamic_img_pad')
        check_bool(bias, 'bias')
        if not isinstance(fixed_size_reason, str):
            raise TypeError(f'fixed_size_reason must be a string, got {fixed_size_reason!r}')
        self.fixed_size_reason = fixed_size_reason
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias,
                              device=device, dtype=dtype)
        norm = resolve_norm_layer(norm_layer)
        self.norm = nn.Identity() if norm is None else create_norm(norm, embed_dim)

    def _grid(self, img_size: Size2) -> Tuple[Tuple[int, int], Tuple[int, int], int]:
        img_size = pair(img_size, 'img_size')
        grid = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        if grid[0] < 1 or grid[1] < 1:
            raise ValueError(f'img_size={img_size} is smaller than patch_size={self.patch_size}')
        return img_size, grid, grid[0] * grid[1]

    def set_input_size(self, img_size: Size2) -> None:
        """Build for another image size: updates ``img_size``, ``grid_size`` and ``num_patches``."""
        self.img_size, self.grid_size, self.num_patches = self._grid(img_size)

    def feat_ratio(self) -> int:
        """The reduction of the token grid relative to the image (the larger patch side)."""
        return max(self.patch_size)

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid ``(H, W)`` for an image of ``img_size`` (rounded up when padding)."""
        if self.dynamic_img_pad:
            return (-(-img_size[0] // self.patch_size[0]), -(-img_size[1] // self.patch_size[1]))
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f'PatchEmbedding(in_chans={self.in_chans}) expects images (N, {self.in_chans}, H, W), '
                             f'got shape {list(x.shape)}')
        H, W = x.shape[-2], x.shape[-1]
        ph, pw = self.patch_size
        if self.strict_img_size:
            if H != self.img_size[0] or W != self.img_size[1]:
                if self.fixed_size_reason:
                    raise ValueError(f'this model needs images of size {self.img_size} ({self.fixed_size_reason}), '
                                     f'got ({H}, {W}); build it with img_size=({H}, {W}) for that size')
                raise ValueError(f'PatchEmbedding(img_size={self.img_size}) got an image of size ({H}, {W}); '
                                 f'build it with dynamic_img_size=True to accept other sizes')
        elif not self.dynamic_img_pad and (H % ph != 0 or W % pw != 0):
            raise ValueError(f'image size ({H}, {W}) is not divisible by patch_size={self.patch_size}; '
                             f'use dynamic_img_pad=True to pad it')
        if self.dynamic_img_pad:
            x = F.pad(x, (0, (pw - W % pw) % pw, 0, (ph - H % ph) % ph))
        x = self.proj(x)
        if self.flatten:
            return self.norm(x.flatten(2).transpose(1, 2))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f'img_size={self.img_size}, patch_size={self.patch_size}, '
                f'dynamic_img_size={not self.strict_img_size}')


@register_notrace_module
class ClassTokens(nn.Module):
    """Prepend a learnable class token to each sequence: ``(N, L, dim) → (N, 1 + L, dim)``.

    Args:
        dim: token width.
    """

    def __init__(self, dim: int, *, device=None, dtype=None):
        super().__init__()
        self.dim = check_positive_int(dim, 'dim')
        self.token = nn.Parameter(torch.zeros(1, 1, dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f'ClassTokens(dim={self.dim}) expects tokens (N, L, {self.dim}), got shape {list(x.shape)}')
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)

    def extra_repr(self) -> str:
        return f'{self.dim}'


@register_notrace_module
class ViPosEmbedding(nn.Module):
    """Learned position embedding added to ``num_tokens`` tokens of width ``dim``.

    The first ``num_prefix_tokens`` tokens (the class token) have their own embedding; the others form a
    ``grid_size`` grid of patches, which ``forward(x, grid_size)``, ``resample`` and ``set_grid_size`` resample
    (timm's ``resample_abs_pos_embed``, bicubic with antialiasing) for images of another size.

    Args:
        num_tokens: patches plus prefix tokens, e.g. ``14 * 14 + 1`` for ViT-B/16 at 224.
        dim: token width.
        num_prefix_tokens: leading tokens that are not patches (1 for the class token).
        grid_size: the patch grid ``(H, W)``; defaults to a square grid.
    """

    def __init__(self, num_tokens: int, dim: int, *, num_prefix_tokens: int = 1,
                 grid_size: Optional[Size2] = None, device=None, dtype=None):
        super().__init__()
        check_positive_int(num_tokens, 'num_tokens')
        self.dim = check_positive_int(dim, 'dim')
        self.num_prefix_tokens = check_positive_int(num_prefix_tokens, 'num_prefix_tokens', allow_zero=True)
        num_patches = num_tokens - num_prefix_tokens
        if grid_size is None:
            side = math.isqrt(max(num_patches, 0))
            if num_patches < 1 or side * side != num_patches:
                raise ValueError(f'num_tokens={num_tokens} with num_prefix_tokens={num_prefix_tokens} leaves '
                                 f'{num_patches} patches, not a square grid; pass grid_size=(H, W)')
            grid_size = (side, side)
        grid = pair(grid_size, 'grid_size')
        if grid[0] * grid[1] != num_patches:
            raise ValueError(f'grid_size={grid} has {grid[0] * grid[1]} patches but num_tokens={num_tokens} with '
                             f'num_prefix_tokens={num_prefix_tokens} leaves {num_patches}')
        self.grid_size: Tuple[int, int] = grid
        self.weight = nn.Parameter(torch.empty(1, num_tokens, dim, device=device, dtype=dtype))
        trunc_normal_(self.weight, std=0.02)

    def resample(self, grid_size: Size2) -> torch.Tensor:
        """The embedding for a ``grid_size`` patch grid (prefix tokens kept as they are)."""
        grid = pair(grid_size, 'grid_size')
        return self._resample([grid[0], grid[1]])

    def _resample(self, grid: List[int]) -> torch.Tensor:
        return resample_abs_pos_embed(self.weight, new_size=grid, old_size=[self.grid_size[0], self.grid_size[1]],
                                      num_prefix_tokens=self.num_prefix_tokens)

    @torch.jit.ignore
    def set_grid_size(self, grid_size: Size2) -> None:
        """Resample the learned embedding in place to a new patch grid (``requires_grad`` is kept)."""
        grid = pair(grid_size, 'grid_size')
        if grid == self.grid_size:
            return
        with torch.no_grad():
            weight = self.resample(grid)
        self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        self.grid_size = grid

    def forward(self, x: torch.Tensor, grid_size: Optional[List[int]] = None) -> torch.Tensor:
        """Add the embedding to ``x`` (``(N, num_tokens, dim)``); ``grid_size`` resamples it for another grid."""
        pos = self.weight
        if grid_size is not None and (grid_size[0] != self.grid_size[0] or grid_size[1] != self.grid_size[1]):
            pos = self._resample(grid_size)
        if x.dim() != 3 or x.shape[1] != pos.shape[1] or x.shape[2] != self.dim:
            raise ValueError(f'ViPosEmbedding expects tokens (N, {pos.shape[1]}, {self.dim}), got shape '
                             f'{list(x.shape)}; pass grid_size=(H, W) for another patch grid')
        return x + pos

    def extra_repr(self) -> str:
        return f'num_tokens={self.weight.shape[1]}, dim={self.dim}, num_prefix_tokens={self.num_prefix_tokens}, ' \
               f'grid_size={self.grid_size}'


__all__ = ['PatchEmbedding', 'ClassTokens', 'ViPosEmbedding']
