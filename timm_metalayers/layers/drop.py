"""Regularisers of the guide: ``DropBlock`` / ``dropblock``, ``StochasticDepth`` and ``linear_scheduler``."""

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._factory import check_bool, check_positive_int, check_probability, check_real


def _check_gamma_scale(gamma_scale: object) -> float:
    gamma_scale = check_real(gamma_scale, 'gamma_scale')
    if gamma_scale < 0:
        raise ValueError(f'gamma_scale must be >= 0, got {gamma_scale}')
    return float(gamma_scale)


def _check_4d(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ValueError(f'{who} expects x to be a 4-D NCHW tensor, got a {x.dim()}-D tensor of shape '
                         f'{list(x.shape)}')


def _check_generator(generator: object) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f'generator must be a torch.Generator or None, got {generator!r}')
    return generator


# Seeds are drawn as a Bernoulli process over the N * C * valid_h * valid_w positions where a whole block fits
# (one independent mask per sample and channel). With the small seed rates DropBlock uses (a few per mille),
# drawing the gaps between seeds (geometric) is exact and needs ~gamma * n random numbers instead of n;
# above this rate a dense Bernoulli draw is cheaper.
_GAP_SEED_RATE_MAX = 0.25
# Below this much max-pool work (seed positions x block area) a dense mask is cheaper than the sparse one.
_SPARSE_MIN_WORK = 32768


def _num_gaps(n: int, gamma: float) -> int:
    """Gaps to draw at once: the mean count plus 10 standard deviations; more are drawn if ever short."""
    mean = n * gamma
    return int(mean + 10.0 * math.sqrt(mean) + 64.0)


def _seed_starts_from_gaps(gaps: torch.Tensor, n: int, gamma: float,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Flat indices (increasing, int64) of the seeds among ``n`` Bernoulli(gamma) trials, from geometric gaps."""
    ends = gaps.cumsum(0)  # 1-based trial of each success
    last = float(ends[-1])
    chunks: List[torch.Tensor] = [ends]
    while last < n:  # the drawn gaps did not reach the end (about never): draw more, the process stays exact
        more = torch.empty(gaps.shape, dtype=gaps.dtype, device=gaps.device).geometric_(gamma, generator=generator)
        more = more.cumsum(0) + last
        chunks.append(more)
        last = float(more[-1])
    ends = torch.cat(chunks) if len(chunks) > 1 else ends
    return (ends[ends <= n] - 1).to(torch.int64)


def _rescale_(keep: torch.Tensor) -> torch.Tensor:
    """Divide a 0/1 keep mask in place by its mean, so the mean activation is kept; all-zero stays zeros."""
    return keep.div_(keep.mean().clamp_(min=1.0 / keep.numel()))


def _sparse_keep_mask(starts: torch.Tensor, N: int, C: int, H: int, W: int, bh: int, bw: int) -> torch.Tensor:
    """The rescaled float32 keep mask (N, C, H, W) of the seeds at flat ``starts`` of the (N * C, vh, vw) grid.

    The same values as ``_dense_keep_mask`` on those seeds, built by index: the (rare) seeds are expanded into
    their blocks instead of max-pooling every channel (PyTorch's CPU ``max_pool2d`` with stride 1 makes
    ``bh * bw`` strided loads for every pixel).
    """
    vh, vw = H - bh + 1, W - bw + 1
    plane = torch.div(starts, vh * vw, rounding_mode='floor')
    within = starts - plane * (vh * vw)
    row = torch.div(within, vw, rounding_mode='floor')
    first = starts + plane * (H * W - vh * vw) + row * (W - vw)  # flat index of each block's top-left pixel
    block: List[int] = []
    for a in range(bh):
        for b in range(bw):
            block.append(a * W + b)
    offsets = torch.tensor(block, dtype=torch.int64, device=starts.device)
    covered = (first.unsqueeze(1) + offsets).view(-1)
    keep = torch.ones(N * C * H * W, dtype=torch.float32, device=starts.device).index_fill_(0, covered, 0.0)
    return _rescale_(keep).view(N, C, H, W)


def _dense_keep_mask(seeds: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """The rescaled float32 keep mask of a dense (N, C, vh, vw) 0/1 seed map: each seed's block by a max-pool."""
    if bh > 1 or bw > 1:
        seeds = F.pad(seeds, (bw - 1, bw - 1, bh - 1, bh - 1))
        dropped = F.max_pool2d(seeds, (bh, bw), stride=1)
    else:
        dropped = seeds
    return _rescale_(1.0 - dropped)


# Under torch.compile the gap-to-mask step runs as an opaque custom op: its data-dependent sizes stay inside
# it, so the graph has no break (fullgraph=True works) and static shapes. The random gaps are drawn in the
# graph, so the op itself is a pure function of its inputs.
_keep_mask_op = None
if hasattr(torch.library, 'custom_op'):  # torch >= 2.4
    try:
        @torch.library.custom_op('timm_metalayers::dropblock_keep_mask', mutates_args=(), device_types='cpu')
        def _keep_mask_op(gaps: torch.Tensor, N: int, C: int, H: int, W: int, bh: int, bw: int,
                          gamma: float) -> torch.Tensor:
            n = N * C * (H - bh + 1) * (W - bw + 1)
            return _sparse_keep_mask(_seed_starts_from_gaps(gaps, n, gamma), N, C, H, W, bh, bw)

        @_keep_mask_op.register_fake
        def _(gaps, N, C, H, W, bh, bw, gamma):
            return gaps.new_empty((N, C, H, W), dtype=torch.float32)
    except RuntimeError:  # already registered (the module was loaded twice)
        _keep_mask_op = None


@torch.jit.unused
def _compiled_keep_mask(gaps: torch.Tensor, N: int, C: int, H: int, W: int, bh: int, bw: int,
                        gamma: float) -> torch.Tensor:
    if _keep_mask_op is None:  # torch < 2.4: the seeds as a dense map, then the max-pool
        n = N * C * (H - bh + 1) * (W - bw + 1)
        seeds = torch.zeros(n, dtype=torch.float32, device=gaps.device)
        seeds.index_fill_(0, _seed_starts_from_gaps(gaps, n, gamma), 1.0)
        return _dense_keep_mask(seeds.view(N, C, H - bh + 1, W - bw + 1), bh, bw)
    return _keep_mask_op(gaps, N, C, H, W, bh, bw, gamma)


def _dropblock(x: torch.Tensor, drop_block_prob: float, block_size: int, gamma_scale: float,
               generator: Optional[torch.Generator] = None, couple_channels: bool = False) -> torch.Tensor:
    """The training-time computation; arguments are already validated and ``x`` is 4-D."""
    if x.numel() == 0:  # an empty batch (or map): nothing to drop, and no mean to rescale by
        return x
    N, C, H, W = x.shape
    if couple_channels:  # one mask per sample, broadcast over the channels
        C = 1
    if drop_block_prob >= 1.0:
        # Everything is dropped: zeros (still x times a mask, so gradients are zeros), never 0 / 0.
        keep = torch.zeros((1, 1, 1, 1), dtype=torch.float32, device=x.device)
        return x * keep.to(x.dtype)
    # Clip the block to the map in every term, so a block larger than the map still gives 0 <= gamma <= 1.
    bh, bw = min(block_size, H), min(block_size, W)
    valid_h, valid_w = H - bh + 1, W - bw + 1
    gamma = gamma_scale * drop_block_prob * H * W / (bh * bw) / (valid_h * valid_w)
    gamma = min(max(gamma, 0.0), 1.0)
    # Seeds only where a whole block fits; each seed drops the block that starts at it, so every
    # dropped region is a union of whole (bh, bw) blocks, for odd and even sizes alike.
    # (The mask never requires grad, so no torch.no_grad() is needed.)
    n = N * C * valid_h * valid_w
    # Small masks (a mask per sample shared by the channels, small maps) are cheapest dense: the sparse
    # path's dozen small ops cost more than max-pooling a few thousand values.
    sparse = x.is_cpu and n * bh * bw >= 32768  # _SPARSE_MIN_WORK (a literal, for TorchScript)
    if sparse and 0.0 < gamma <= 0.25:  # _GAP_SEED_RATE_MAX (a literal, for TorchScript)
        gaps = torch.empty(_num_gaps(n, gamma), dtype=torch.float64, device=x.device)
        gaps.geometric_(gamma, generator=generator)
        if torch.compiler.is_compiling():
            keep = _compiled_keep_mask(gaps, N, C, H, W, bh, bw, gamma)
        else:
            keep = _sparse_keep_mask(_seed_starts_from_gaps(gaps, n, gamma, generator), N, C, H, W, bh, bw)
        return x * keep.to(x.dtype)
    seeds = torch.empty((N, C, valid_h, valid_w), dtype=torch.float32, device=x.device)
    seeds.bernoulli_(gamma, generator=generator)
    if sparse and not torch.compiler.is_compiling():
        keep = _sparse_keep_mask(seeds.view(-1).nonzero().view(-1), N, C, H, W, bh, bw)
    else:  # small masks, accelerators (nonzero would wait for the host) and torch.compile (static shapes)
        keep = _dense_keep_mask(seeds, bh, bw)
    return x * keep.to(x.dtype)


def dropblock(x: torch.Tensor, drop_block_prob: Optional[float], block_size: int, gamma_scale: float = 1.0,
              active: bool = True, *, generator: Optional[torch.Generator] = None,
              couple_channels: bool = False) -> torch.Tensor:
    """Zero random ``block_size x block_size`` squares of each sample and channel of ``x`` (NCHW).

    Args:
        x: the input, a 4-D NCHW tensor.
        drop_block_prob: probability of dropping a block; None or 0 returns ``x``, 1 returns zeros.
        block_size: side of the dropped squares (clipped to the feature map, so any size >= 1 works).
        gamma_scale: factor on gamma, the seed rate computed as in the DropBlock paper.
        active: False returns ``x`` unchanged (what a model does in eval mode).
        generator: a ``torch.Generator`` for reproducible masks (None uses the global RNG).
        couple_channels: True draws one mask per sample, shared by all channels (timm's
            ``DropBlock2d`` default, the DropBlock paper); False (the guide's) one per sample and channel.

    Kept values are rescaled so the mean activation is preserved. Package developers use this;
    models use ``DropBlock``.
    """
    drop_block_prob = check_probability(drop_block_prob, 'drop_block_prob')
    check_positive_int(block_size, 'block_size')
    gamma_scale = _check_gamma_scale(gamma_scale)
    _check_generator(generator)
    check_bool(couple_channels, 'couple_channels')
    check_bool(active, 'active')
    _check_4d(x, 'dropblock')
    if not active or not drop_block_prob:
        return x
    return _dropblock(x, drop_block_prob, block_size, gamma_scale, generator, couple_channels)


class DropBlock(nn.Module):
    """DropBlock: in training, zero contiguous square regions of the input; an exact identity in eval.

    Args:
        drop_block_prob: probability of dropping a block (1 - the "survival probability" some papers use);
            None or 0 makes the layer an identity, 1 zeroes everything.
        block_size: side of the squares to drop; clipped to the feature map, so even sizes and sizes
            larger than the map work.
        gamma_scale: multiplicative factor on gamma, the seed rate of the DropBlock paper.
        generator: a ``torch.Generator`` for reproducible masks (None uses the global RNG).
        couple_channels: False (the guide's default) draws a mask for every sample and channel; True one
            mask per sample shared by all channels, as timm's ``DropBlock2d`` does by default.

    Kept values are rescaled so the mean activation is preserved. Input: a 4-D NCHW tensor.
    """

    def __init__(self, drop_block_prob: Optional[float] = 0.1, block_size: int = 7, gamma_scale: float = 1.0,
                 *, generator: Optional[torch.Generator] = None, couple_channels: bool = False):
        super().__init__()
        self.drop_block_prob = check_probability(drop_block_prob, 'drop_block_prob') or 0.0
        self.block_size = check_positive_int(block_size, 'block_size')
        self.gamma_scale = _check_gamma_scale(gamma_scale)
        self.generator = _check_generator(generator)
        self.couple_channels = check_bool(couple_channels, 'couple_channels')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d(x, 'DropBlock')
        if not self.training or self.drop_block_prob == 0.0:
            return x
        return _dropblock(x, self.drop_block_prob, self.block_size, self.gamma_scale, self.generator,
                          self.couple_channels)

    def extra_repr(self) -> str:
        s = f'drop_block_prob={self.drop_block_prob}, block_size={self.block_size}, gamma_scale={self.gamma_scale}'
        return s + (', couple_channels=True' if self.couple_channels else '')


class StochasticDepth(nn.Module):
    """Stochastic depth: in training, drop a residual branch so the input passes through the skip only.

    Args:
        p: probability of dropping (1 - the "survival probability" some papers use); None or 0 makes
            it an identity.
        mode: ``"row"`` drops each sample of the batch independently, ``"batch"`` zeroes the whole
            input at once.
        generator: a ``torch.Generator`` for reproducible draws (None uses the global RNG).

    In training, survivors are scaled by ``1 / (1 - p)``; with ``p = 1`` the output is zeros.
    In eval mode it is an identity. Works on any tensor whose first dimension is the batch.
    """

    def __init__(self, p: Optional[float], mode: str = 'row', *, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.p = check_probability(p, 'p') or 0.0
        if not isinstance(mode, str) or mode not in ('row', 'batch'):
            raise ValueError(f'mode must be "row" or "batch", got {mode!r}')
        self.mode = mode
        self.generator = _check_generator(generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep_prob = 1.0 - self.p
        if self.mode == 'row':
            shape = [x.shape[0]] + [1] * (x.dim() - 1)
        else:
            shape = [1] * x.dim()
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob, generator=self.generator)
        if keep_prob > 0.0:
            mask.div_(keep_prob)  # in place: the mask is ours and never requires grad
        return x * mask

    def extra_repr(self) -> str:
        return f'p={self.p}, mode={self.mode!r}'


def linear_scheduler(drop_prob: Optional[float] = 0.0, *, depth: int,
                     start_value: float = 0.0) -> List[Optional[float]]:
    """Drop probabilities for ``depth`` blocks under the linear scaling rule.

    Args:
        drop_prob: the probability the schedule heads towards (not reached); None gives ``[None] * depth``.
        depth: number of values (blocks), >= 0.
        start_value: the first value.

    Returns ``depth`` values evenly spaced from ``start_value`` towards ``drop_prob``, not including
    ``drop_prob``: ``linear_scheduler(0.1, depth=4) == [0.0, 0.025, 0.05, 0.075]``.
    """
    check_positive_int(depth, 'depth', allow_zero=True)
    if drop_prob is None:
        return [None] * depth
    drop_prob = check_probability(drop_prob, 'drop_prob', allow_none=False)
    start_value = check_probability(start_value, 'start_value', allow_none=False)
    # Rounded to 15 significant digits so 0.1 * 3 / 4 reads 0.075, not 0.07500000000000001.
    return [float(f'{start_value + (drop_prob - start_value) * i / depth:.15g}') for i in range(depth)]


__all__ = ['DropBlock', 'dropblock', 'StochasticDepth', 'linear_scheduler']
