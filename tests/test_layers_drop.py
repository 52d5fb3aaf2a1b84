"""DropBlock / dropblock, StochasticDepth and linear_scheduler: statistics, shapes, errors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from timm_metalayers.layers import DropBlock, StochasticDepth, dropblock, linear_scheduler


# ---------------------------------------------------------------------------------------------
# helpers, written independently of the implementation
# ---------------------------------------------------------------------------------------------

def expected_zero_fraction(H, W, p, block, gamma_scale=1.0):
    """Exact E[fraction of zeros] for seeds placed (with rate gamma) where a whole block fits."""
    bh, bw = min(block, H), min(block, W)
    vh, vw = H - bh + 1, W - bw + 1
    gamma = min(gamma_scale * p * H * W / (bh * bw) / (vh * vw), 1.0)

    def cover(n, b, v):  # how many seed rows/cols cover each position
        return np.array([min(i, v - 1) - max(0, i - b + 1) + 1 for i in range(n)])

    c = np.outer(cover(H, bh, vh), cover(W, bw, vw))
    return float(np.mean(1.0 - (1.0 - gamma) ** c))


def is_union_of_blocks(zero_mask: np.ndarray, bh: int, bw: int) -> bool:
    """True when the 2-D boolean mask is a union of whole (bh, bw) rectangles inside the map:
    it equals its own morphological opening by that rectangle."""
    opened = ndimage.binary_opening(zero_mask, structure=np.ones((bh, bw), dtype=bool), border_value=0)
    return bool(np.array_equal(opened, zero_mask))


def test_union_of_blocks_checker_can_fail():
    m = np.zeros((8, 8), dtype=bool)
    m[2:5, 3:6] = True
    assert is_union_of_blocks(m, 3, 3)
    m[7, 0] = True  # a lone pixel is not a whole block
    assert not is_union_of_blocks(m, 3, 3)
    m = np.zeros((8, 8), dtype=bool)
    m[0:2, 0:3] = True  # 2x3 region is not a union of 3x3 blocks
    assert not is_union_of_blocks(m, 3, 3)


# ---------------------------------------------------------------------------------------------
# DropBlock statistics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('block', [3, 4])
def test_dropblock_zero_fraction_close_to_prob(block):
    torch.manual_seed(0)
    p, H, W = 0.1, 16, 16
    m = DropBlock(p, block).train()
    x = torch.ones(64, 4, H, W)
    fracs = [(m(x) == 0).float().mean().item() for _ in range(10)]
    frac = float(np.mean(fracs))
    # the exact expectation of the seeding scheme (overlapping blocks make it slightly below p) ...
    assert frac == pytest.approx(expected_zero_fraction(H, W, p, block), abs=0.004)
    # ... and the paper's intent: the fraction dropped is close to drop_block_prob
    assert frac == pytest.approx(p, abs=0.015)


def test_dropblock_gamma_scale_scales_seed_rate():
    torch.manual_seed(1)
    x = torch.ones(64, 4, 12, 12)
    frac = np.mean([(dropblock(x, 0.2, 3, 0.5) == 0).float().mean().item() for _ in range(10)])
    assert frac == pytest.approx(expected_zero_fraction(12, 12, 0.2, 3, 0.5), abs=0.005)
    assert frac < 0.13
    # gamma_scale = 0 drops nothing: output equals the input
    assert torch.equal(dropblock(x, 0.5, 3, 0.0), x)


def test_dropblock_kept_values_rescaled_and_mean_preserved():
    torch.manual_seed(2)
    m = DropBlock(0.25, 3).train()
    ones = torch.ones(8, 3, 10, 10)
    for _ in range(5):
        y = m(ones)
        kept = y[y != 0]
        # every kept value gets the same factor: numel / number kept, so the mean is exactly kept
        assert torch.allclose(kept, torch.full_like(kept, y.numel() / kept.numel()))
        assert y.mean().item() == pytest.approx(1.0, abs=1e-5)
    x = torch.rand(8, 3, 10, 10) + 0.5
    ratios = [(m(x).mean() / x.mean()).item() for _ in range(50)]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.01)
    # and the output differs from the input (it really drops something)
    assert not torch.equal(m(x), x)


@pytest.mark.parametrize('block,shape', [(1, (9, 9)), (2, (9, 10)), (3, (11, 9)), (4, (12, 12)), (5, (13, 11))])
def test_dropblock_zeroed_regions_are_whole_blocks(block, shape):
    torch.manual_seed(3)
    y = DropBlock(0.3, block).train()(torch.ones(4, 3, *shape))
    assert y.shape == (4, 3, *shape)
    zeros = (y == 0).numpy()
    assert zeros.any() and not zeros.all()
    for n in range(4):
        for c in range(3):
            assert is_union_of_blocks(zeros[n, c], block, block), (n, c)


def test_dropblock_block_larger_than_map():
    torch.manual_seed(4)
    p = 0.3
    m = DropBlock(p, 20).train()
    y = m(torch.ones(200, 50, 6, 5))
    assert y.shape == (200, 50, 6, 5) and torch.isfinite(y).all()
    planes = (y == 0).flatten(2)
    whole = planes.all(-1)
    # a clipped block covers the whole map: each plane is dropped entirely or not at all
    assert torch.equal(planes.any(-1), whole)
    # gamma with the clipped block is exactly p here, so the fraction of dropped planes is p
    assert whole.float().mean().item() == pytest.approx(p, abs=0.015)
    # planes are dropped independently per channel and per sample (no correlation)
    w = whole.float()
    assert (w[:, :-1] * w[:, 1:]).mean().item() == pytest.approx(p * p, abs=0.015)
    assert (w[:-1] * w[1:]).mean().item() == pytest.approx(p * p, abs=0.015)


def test_dropblock_clipped_on_one_side_only():
    torch.manual_seed(5)
    y = DropBlock(0.3, 7).train()(torch.ones(6, 4, 6, 12))  # block clipped to (6, 7)
    zeros = (y == 0).numpy()
    assert zeros.any()
    for n in range(6):
        for c in range(4):
            assert is_union_of_blocks(zeros[n, c], 6, 7)


def test_dropblock_masks_independent_per_channel_and_sample():
    torch.manual_seed(6)
    y = DropBlock(0.3, 3).train()(torch.ones(4, 6, 12, 12))
    masks = (y == 0).flatten(2)
    flat = masks.reshape(24, -1)
    distinct = {tuple(row.tolist()) for row in flat}
    assert len(distinct) == 24


def test_dropblock_couple_channels_shares_one_mask_per_sample():
    torch.manual_seed(6)
    m = DropBlock(0.3, 3, couple_channels=True).train()
    assert 'couple_channels=True' in repr(m)
    y = m(torch.ones(4, 6, 12, 12))
    zeros = (y == 0)
    assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))  # every channel of a sample: the same mask
    assert len({tuple(zeros[n, 0].flatten().tolist()) for n in range(4)}) == 4  # samples differ
    for n in range(4):
        assert is_union_of_blocks(zeros[n, 0].numpy(), 3, 3)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.ones(2, 5, 9, 9)
    assert torch.equal(dropblock(x, 0.3, 3, generator=g1, couple_channels=True),
                       DropBlock(0.3, 3, generator=g2, couple_channels=True).train()(x))


@pytest.mark.parametrize('block', [3, 4])
def test_dropblock_couple_channels_statistics(block):
    torch.manual_seed(12)
    p, H, W = 0.1, 16, 16
    m = DropBlock(p, block, couple_channels=True).train()
    x = torch.ones(256, 3, H, W)
    ys = [m(x) for _ in range(10)]
    frac = float(np.mean([(y == 0).float().mean().item() for y in ys]))
    assert frac == pytest.approx(expected_zero_fraction(H, W, p, block), abs=0.006)
    assert float(np.mean([y.mean().item() for y in ys])) == pytest.approx(1.0, abs=0.01)  # rescaled


def test_dropblock_couple_channels_must_be_bool():
    with pytest.raises(TypeError, match=r'couple_channels.*1'):
        DropBlock(0.1, 3, couple_channels=1)
    with pytest.raises(TypeError, match=r"couple_channels.*'yes'"):
        dropblock(torch.ones(1, 1, 4, 4), 0.1, 3, couple_channels='yes')


def test_dropblock_prob_one_gives_zeros_not_nan():
    for shape in [(2, 3, 7, 7), (2, 3, 10, 10), (1, 1, 3, 20)]:
        x = torch.randn(*shape, requires_grad=True)
        y = DropBlock(1.0, 3).train()(x)
        assert torch.equal(y, torch.zeros(shape))
        y.sum().backward()
        assert torch.equal(x.grad, torch.zeros(shape))
    assert torch.equal(dropblock(torch.ones(2, 2, 4, 4), 1.0, 7), torch.zeros(2, 2, 4, 4))


def test_dropblock_eval_and_disabled_are_identity():
    x = torch.randn(2, 3, 8, 8)
    m = DropBlock(0.5, 3).eval()
    assert m(x) is x
    for p in (None, 0, 0.0):
        assert DropBlock(p, 3).train()(x) is x
        assert dropblock(x, p, 3, 1.0) is x
    assert dropblock(x, 0.5, 3, 1.0, active=False) is x
    assert dropblock(x, 0.5, 3, 1.0, False) is x
    assert not torch.equal(dropblock(x, 0.5, 3, 1.0, active=True), x)


def test_dropblock_default_arguments():
    m = DropBlock()
    assert (m.drop_block_prob, m.block_size, m.gamma_scale) == (0.1, 7, 1.0)
    assert 'drop_block_prob=0.1' in repr(m)


def test_dropblock_generator_reproducible_and_leaves_global_rng():
    x = torch.ones(2, 3, 12, 12)
    a = DropBlock(0.3, 3, generator=torch.Generator().manual_seed(7)).train()
    b = DropBlock(0.3, 3, generator=torch.Generator().manual_seed(7)).train()
    c = DropBlock(0.3, 3, generator=torch.Generator().manual_seed(8)).train()
    state = torch.get_rng_state()
    ya, yb, yc = a(x), b(x), c(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, yc)
    assert not torch.equal(a(x), ya)  # the generator advances
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(dropblock(x, 0.3, 3, generator=g1), dropblock(x, 0.3, 3, generator=g2))


def test_dropblock_bfloat16():
    torch.manual_seed(10)
    x = torch.ones(16, 4, 12, 12, dtype=torch.bfloat16)
    y = DropBlock(0.2, 3).train()(x)
    assert y.dtype == torch.bfloat16
    assert y.float().mean().item() == pytest.approx(1.0, abs=0.01)
    assert (y == 0).float().mean().item() == pytest.approx(expected_zero_fraction(12, 12, 0.2, 3), abs=0.03)


def test_dropblock_backward_masks_gradient():
    torch.manual_seed(11)
    x = torch.ones(2, 2, 8, 8, requires_grad=True)
    y = DropBlock(0.3, 3).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask)/dx = mask, and x is ones


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(drop_block_prob=-0.1), ValueError, r'drop_block_prob.*-0\.1'),
    (dict(drop_block_prob=1.5), ValueError, r'drop_block_prob.*1\.5'),
    (dict(drop_block_prob='0.1'), TypeError, r"drop_block_prob.*'0\.1'"),
    (dict(block_size=0), ValueError, r'block_size.*0'),
    (dict(block_size=-3), ValueError, r'block_size.*-3'),
    (dict(block_size=2.5), TypeError, r'block_size.*2\.5'),
    (dict(gamma_scale=-1.0), ValueError, r'gamma_scale.*-1'),
    (dict(gamma_scale='x'), TypeError, r"gamma_scale.*'x'"),
    (dict(generator=3), TypeError, r'generator.*3'),
])
def test_dropblock_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DropBlock(**kwargs)
    args = dict(drop_block_prob=0.1, block_size=3, gamma_scale=1.0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        dropblock(torch.ones(1, 1, 4, 4), **args)


@pytest.mark.parametrize('shape', [(3, 8, 8), (8, 8), (1, 2, 3, 4, 5)])
def test_dropblock_needs_4d_input(shape):
    x = torch.ones(shape)
    dim = len(shape)
    for mode in ('train', 'eval'):
        m = getattr(DropBlock(0.1, 3), mode)()
        with pytest.raises(ValueError, match=rf'x .*{dim}-D tensor of shape \[{", ".join(map(str, shape))}\]'):
            m(x)
    with pytest.raises(ValueError, match=rf'x .*{dim}-D'):
        dropblock(x, 0.1, 3, 1.0)
    with pytest.raises(ValueError, match=rf'x .*{dim}-D'):
        dropblock(x, 0.1, 3, 1.0, active=False)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       block=st.integers(1, 15), p=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_dropblock_shape_property(n, c, h, w, block, p, seed):
    x = torch.rand(n, c, h, w) + 0.1
    y = DropBlock(p, block, generator=torch.Generator().manual_seed(seed)).train()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    zeros = (y == 0)
    # whatever is not zeroed is the input times one common positive factor
    if (~zeros).any():
        ratio = y[~zeros] / x[~zeros]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
        assert ratio[0] >= 1.0 - 1e-6
    bh, bw = min(block, h), min(block, w)
    zn = zeros.numpy()
    for i in range(n):
        for j in range(c):
            assert is_union_of_blocks(zn[i, j], bh, bw)


# ---------------------------------------------------------------------------------------------
# StochasticDepth
# ---------------------------------------------------------------------------------------------

def test_stochastic_depth_row_statistics():
    torch.manual_seed(12)
    p = 0.3
    m = StochasticDepth(p).train()
    assert m.mode == 'row'
    x = torch.ones(20000, 3, 2)
    y = m(x)
    per_row = y.flatten(1)
    # each row is dropped or kept as a whole; kept rows are scaled by 1 / (1 - p)
    dropped = (per_row == 0).all(1)
    kept = torch.isclose(per_row, torch.tensor(1 / (1 - p))).all(1)
    assert torch.equal(dropped | kept, torch.ones_like(dropped))
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.012)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)


def test_stochastic_depth_batch_statistics():
    torch.manual_seed(13)
    p = 0.25
    m = StochasticDepth(p, 'batch').train()
    x = torch.ones(4, 3)
    outs = torch.stack([m(x) for _ in range(4000)])
    whole_dropped = (outs == 0).flatten(1).all(1)
    whole_kept = torch.isclose(outs, torch.tensor(1 / (1 - p))).flatten(1).all(1)
    assert torch.equal(whole_dropped | whole_kept, torch.ones_like(whole_dropped))
    assert whole_dropped.float().mean().item() == pytest.approx(p, abs=0.025)


def test_stochastic_depth_row_vs_batch_differ():
    torch.manual_seed(14)
    x = torch.ones(64, 5)
    row = StochasticDepth(0.5, 'row').train()(x)
    assert 0 < (row == 0).all(1).sum() < 64  # some rows dropped, not all
    batch = StochasticDepth(0.5, 'batch').train()(x)
    assert (batch == 0).all() or (batch == 2).all()


def test_stochastic_depth_p_one_and_identity():
    x = torch.randn(8, 3, 4, 4)
    for mode in ('row', 'batch'):
        y = StochasticDepth(1.0, mode).train()(x)
        assert torch.equal(y, torch.zeros_like(x)) and not torch.isnan(y).any()
        assert StochasticDepth(0.5, mode).eval()(x) is x
        assert StochasticDepth(None, mode).train()(x) is x
        assert StochasticDepth(0.0, mode).train()(x) is x


def test_stochastic_depth_generator_and_bfloat16():
    x = torch.ones(64, 4)
    a = StochasticDepth(0.5, generator=torch.Generator().manual_seed(0)).train()
    b = StochasticDepth(0.5, generator=torch.Generator().manual_seed(0)).train()
    state = torch.get_rng_state()
    assert torch.equal(a(x), b(x))
    assert torch.equal(torch.get_rng_state(), state)
    y = StochasticDepth(0.5).train()(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert set(y.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize('args,kwargs,exc,match', [
    ((-0.5,), {}, ValueError, r'p must be in \[0, 1\], got -0\.5'),
    ((1.01,), {}, ValueError, r'p .*1\.01'),
    (('a',), {}, TypeError, r"p .*'a'"),
    ((0.1, 'column'), {}, ValueError, r"mode.*'column'"),
    ((0.1, 'ROW'), {}, ValueError, r"mode.*'ROW'"),
    ((0.1,), dict(generator='g'), TypeError, r"generator.*'g'"),
])
def test_stochastic_depth_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        StochasticDepth(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# linear_scheduler
# ---------------------------------------------------------------------------------------------

def test_linear_scheduler_values():
    assert linear_scheduler(0.1, depth=4) == [0.0, 0.025, 0.05, 0.075]
    assert linear_scheduler(0.2, depth=2) == [0.0, 0.1]
    assert linear_scheduler(0.5, depth=1) == [0.0]
    assert linear_scheduler(depth=3) == [0.0, 0.0, 0.0]
    assert linear_scheduler(0.3, depth=3, start_value=0.15) == [0.15, 0.2, 0.25]
    assert linear_scheduler(0.1, depth=0) == []
    assert linear_scheduler(None, depth=3) == [None, None, None]
    assert linear_scheduler(None, depth=0) == []
    # Metalhead: LinRange(start_value, drop_prob, depth + 1)[1:depth]
    got = linear_scheduler(0.37, depth=17, start_value=0.05)
    assert np.allclose(got, np.linspace(0.05, 0.37, 18)[:-1], rtol=0, atol=1e-12)
    assert all(isinstance(v, float) for v in got)


@pytest.mark.parametrize('args,kwargs,exc,match', [
    ((0.1,), dict(depth=-1), ValueError, r'depth must be >= 0, got -1'),
    ((None,), dict(depth=-2), ValueError, r'depth.*-2'),
    ((0.1,), dict(depth=2.0), TypeError, r'depth.*2\.0'),
    ((1.5,), dict(depth=3), ValueError, r'drop_prob.*1\.5'),
    ((-0.1,), dict(depth=3), ValueError, r'drop_prob.*-0\.1'),
    ((0.1,), dict(depth=3, start_value=2.0), ValueError, r'start_value.*2\.0'),
])
def test_linear_scheduler_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        linear_scheduler(*args, **kwargs)


def test_linear_scheduler_needs_depth_keyword():
    with pytest.raises(TypeError):
        linear_scheduler(0.1, 4)  # depth is keyword-only, as in the guide


# ---------------------------------------------------------------- bad values at build, empty batches

@pytest.mark.parametrize('gamma_scale,exc,match', [
    (float('nan'), ValueError, r'gamma_scale must be a finite number, got nan'),
    (float('inf'), ValueError, r'gamma_scale must be a finite number, got inf'),
    (True, TypeError, r'gamma_scale must be a number, got True'),
])
def test_gamma_scale_rejected_at_build(gamma_scale, exc, match):
    with pytest.raises(exc, match=match):
        DropBlock(0.1, 3, gamma_scale)
    with pytest.raises(exc, match=match):
        dropblock(torch.ones(1, 1, 4, 4), 0.1, 3, gamma_scale)


@pytest.mark.parametrize('value', ['no', 1, None])
def test_dropblock_active_must_be_bool(value):
    with pytest.raises(TypeError, match=f'active must be True or False, got {value!r}'):
        dropblock(torch.ones(1, 1, 4, 4), 0.1, 3, 1.0, value)


@pytest.mark.parametrize('shape', [(0, 4, 14, 14), (2, 0, 14, 14), (2, 4, 0, 7)])
@pytest.mark.parametrize('couple_channels', [False, True])
@pytest.mark.parametrize('prob', [0.1, 1.0])
def test_dropblock_empty_input_returns_it(shape, couple_channels, prob):
    x = torch.randn(shape)
    y = DropBlock(prob, 7, couple_channels=couple_channels).train()(x)
    assert y.shape == x.shape and y.numel() == 0
    assert dropblock(x, prob, 3, couple_channels=couple_channels).shape == x.shape
