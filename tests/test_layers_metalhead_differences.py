"""The README's "Differences from Metalhead.jl", measured: each difference computed side by side with a
re-implementation of Metalhead.jl 0.9's / Flux 0.14's formula, and asserted.

Run it as a script to print the figures the README quotes:

    PYTHONPATH=. python tests/test_layers_metalhead_differences.py
"""
import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

from timm_metalayers.layers import ChannelLayerNorm, DropBlock, StochasticDepth


# ---------------------------------------------------------------- Metalhead's / Flux's formulas (reference only)

def metalhead_dropblock(x: torch.Tensor, p: float, block_size: int, gamma_scale: float = 1.0,
                        generator=None) -> torch.Tensor:
    """Metalhead 0.9's ``dropblock`` (src/layers/drop.jl) on an NCHW tensor: a seed may fall on every pixel,
    gamma's ``(H - block_size + 1)`` terms use the unclipped size, a square block clipped to ``min(H, W)``,
    max-pool padding ``clipped // 2`` (an even size gives a map one larger: Julia's broadcast fails),
    and the rescale ``numel / sum(mask) + 1e-6`` (NaN when everything is dropped)."""
    _, _, H, W = x.shape
    clipped = min(block_size, min(H, W))
    valid = (W - block_size + 1) * (H - block_size + 1)
    gamma = gamma_scale * p * H * W / clipped ** 2 / valid if valid else math.inf  # Julia: x / 0 = Inf
    seeds = (torch.rand(x.shape, generator=generator) < gamma).to(x.dtype)
    dropped = F.max_pool2d(seeds, clipped, stride=1, padding=clipped // 2)
    if dropped.shape != x.shape:
        raise ValueError(f'DimensionMismatch: mask {tuple(dropped.shape)} vs x {tuple(x.shape)}')
    mask = 1 - dropped
    return x * mask * (mask.numel() / mask.sum() + 1e-6)


def flux_normalise_channels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Flux 0.13/0.14's ``normalise`` over the channels, as Metalhead's ChannelLayerNorm calls it: (x - μ) / (σ + ε)."""
    mean = x.mean(1, keepdim=True)
    std = x.var(1, keepdim=True, unbiased=False).sqrt()
    return (x - mean) / (std + eps)


def flux_row_dropout_mask_shape(torch_shape) -> list:
    """Flux's ``Dropout(p; dims=4)`` (Metalhead's ``StochasticDepth(p, :row)``) draws a mask of size 1 in every
    dimension but Julia's 4th; Julia's dims are PyTorch's reversed, so a 4-D NCHW tensor gets one draw per sample
    and a 3-D (N, L, C) token tensor one draw for the whole batch."""
    julia_shape = list(reversed(torch_shape))
    mask = [n if d == 4 else 1 for d, n in enumerate(julia_shape, start=1)]
    return list(reversed(mask))


# ---------------------------------------------------------------- the measurements

def dropped_fraction(fn, shape, draws: int, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed)
    x = torch.ones(shape)
    zeros = sum((fn(x, generator) == 0).float().mean().item() for _ in range(draws))
    return zeros / draws


def ours_dropblock(p, block_size):
    def run(x, generator):
        return DropBlock(p, block_size, generator=generator).train()(x)
    return run


def theirs_dropblock(p, block_size):
    def run(x, generator):
        return metalhead_dropblock(x, p, block_size, generator=generator)
    return run


SHAPE_14, SHAPE_7 = (32, 16, 14, 14), (32, 16, 7, 7)


def measure() -> dict:
    torch.manual_seed(0)
    figures = {
        'dropblock_14x14_b7_p0.1_ours': dropped_fraction(ours_dropblock(0.1, 7), SHAPE_14, 20),
        'dropblock_14x14_b7_p0.1_metalhead': dropped_fraction(theirs_dropblock(0.1, 7), SHAPE_14, 20),
        'dropblock_7x7_b7_p0.1_ours': dropped_fraction(ours_dropblock(0.1, 7), SHAPE_7, 20),
        'dropblock_7x7_b7_p0.1_metalhead': dropped_fraction(theirs_dropblock(0.1, 7), SHAPE_7, 20),
        'dropblock_14x14_b5_p0.1_ours': dropped_fraction(ours_dropblock(0.1, 5), SHAPE_14, 20),
        'dropblock_14x14_b5_p0.1_metalhead': dropped_fraction(theirs_dropblock(0.1, 5), SHAPE_14, 20),
    }
    x = torch.ones(2, 3, 7, 7)
    figures['dropblock_p1_ours_all_zero'] = bool((DropBlock(1.0, 7).train()(x) == 0).all())
    figures['dropblock_p1_metalhead_nan'] = bool(torch.isnan(metalhead_dropblock(x, 1.0, 7)).all())
    # a block one larger than the map: Metalhead's gamma divides by (7 - 8 + 1)^2 = 0, every value is dropped
    x = torch.ones(8, 16, 7, 7)
    figures['dropblock_7x7_b8_metalhead_nan'] = bool(torch.isnan(metalhead_dropblock(x, 0.1, 8)).all())
    figures['dropblock_7x7_b8_p0.1_ours'] = dropped_fraction(ours_dropblock(0.1, 8), SHAPE_7, 20)
    x = torch.ones(2, 3, 14, 14)
    figures['dropblock_even_block4_ours_shape'] = tuple(DropBlock(0.1, 4).train()(x).shape)
    try:
        metalhead_dropblock(x, 0.1, 4)
        figures['dropblock_even_block4_metalhead'] = 'ok'
    except ValueError as err:
        figures['dropblock_even_block4_metalhead'] = str(err)
    # a 4 x 14 map and block 7: the block is 4 x 7 here, 4 x 4 in Metalhead (clipped to min(H, W))
    generator = torch.Generator().manual_seed(0)
    y = DropBlock(0.3, 7, generator=generator).train()(torch.ones(64, 8, 4, 14))
    lengths = []  # the runs of zeros along each row: never shorter than the clipped block width
    for row in y.reshape(-1, 14):
        text = ''.join('1' if v == 0 else '0' for v in row.tolist())
        lengths += [len(run) for run in text.split('0') if run]
    figures['dropblock_4x14_b7_ours_min_dropped_run'] = min(lengths)

    # ChannelLayerNorm: sqrt(var + eps) against Flux's std + eps, eps = 1e-6 (ChannelLayerNorm's default)
    norm = ChannelLayerNorm(64)
    x = torch.randn(8, 64, 7, 7)
    figures['channel_norm_randn_max_abs_diff'] = (norm(x) - flux_normalise_channels(x, 1e-6)).abs().max().item()
    x = 1.0 + 1e-3 * torch.randn(8, 64, 7, 7)  # near-constant channels: std 1e-3
    figures['channel_norm_std1e-3_output_std_ours'] = norm(x).std().item()  # 1e-3 / sqrt(1e-6 + 1e-6) = 0.71
    figures['channel_norm_std1e-3_output_std_flux'] = flux_normalise_channels(x, 1e-6).std().item()  # ~1.00

    # StochasticDepth on (N, L, C) tokens, p = 0.5: batches whose samples are not all dropped or all kept
    layer = StochasticDepth(0.5, generator=torch.Generator().manual_seed(0)).train()
    tokens = torch.ones(8, 197, 32)
    mixed = sum(len(set(layer(tokens)[:, 0, 0].tolist())) > 1 for _ in range(200)) / 200
    figures['stochastic_depth_tokens_mixed_batches_ours'] = mixed
    figures['stochastic_depth_tokens_mask_shape_metalhead'] = flux_row_dropout_mask_shape(tokens.shape)
    figures['stochastic_depth_nchw_mask_shape_metalhead'] = flux_row_dropout_mask_shape((8, 64, 7, 7))
    return figures


# ---------------------------------------------------------------- the assertions

@pytest.fixture(scope='module')
def figures():
    return measure()


def test_dropblock_drops_about_p_where_metalhead_overshoots(figures):
    # 20 draws of 32 x 16 maps; the ± bands are several standard deviations of the mean
    assert abs(figures['dropblock_14x14_b7_p0.1_ours'] - 0.1) < 0.015
    assert abs(figures['dropblock_7x7_b7_p0.1_ours'] - 0.1) < 0.03
    assert abs(figures['dropblock_14x14_b5_p0.1_ours'] - 0.1) < 0.015
    assert 0.19 < figures['dropblock_14x14_b7_p0.1_metalhead'] < 0.25
    assert 0.91 < figures['dropblock_7x7_b7_p0.1_metalhead'] < 0.95
    assert figures['dropblock_14x14_b5_p0.1_metalhead'] > 0.13


def test_dropblock_edge_cases_against_metalhead(figures):
    assert figures['dropblock_p1_ours_all_zero'] and figures['dropblock_p1_metalhead_nan']
    assert figures['dropblock_7x7_b8_metalhead_nan'] and abs(figures['dropblock_7x7_b8_p0.1_ours'] - 0.1) < 0.03
    assert figures['dropblock_even_block4_ours_shape'] == (2, 3, 14, 14)
    assert figures['dropblock_even_block4_metalhead'].startswith('DimensionMismatch')
    assert figures['dropblock_4x14_b7_ours_min_dropped_run'] >= 7  # each side clipped on its own: 4 x 7 blocks


def test_channel_layer_norm_eps_inside_the_square_root(figures):
    assert figures['channel_norm_randn_max_abs_diff'] < 1e-5  # invisible on ordinary data
    assert abs(figures['channel_norm_std1e-3_output_std_ours'] - 1e-3 / math.sqrt(1e-6 + 1e-6)) < 0.02
    assert abs(figures['channel_norm_std1e-3_output_std_flux'] - 1e-3 / (1e-3 + 1e-6)) < 0.02


def test_stochastic_depth_per_sample_on_any_rank(figures):
    assert figures['stochastic_depth_tokens_mixed_batches_ours'] > 0.95  # 1 - 2 / 2**8 expected
    assert figures['stochastic_depth_tokens_mask_shape_metalhead'] == [1, 1, 1]  # the whole batch at once
    assert figures['stochastic_depth_nchw_mask_shape_metalhead'] == [8, 1, 1, 1]


def resnet50_dropblock_names() -> list:
    import timm
    import timm_metalayers  # noqa: F401  (registers the models)
    model = timm.create_model('metalayers_resnet50', drop_block_rate=0.1)
    return [name for name, m in model.named_modules() if isinstance(m, DropBlock)]


def test_resnet_dropblock_only_in_stages_3_and_4():
    """timm's placement: the 6 + 3 blocks of stages 3 and 4 (Metalhead: one in each of the 16 blocks)."""
    names = resnet50_dropblock_names()
    assert len(names) == 9 and all(n.startswith(('layer3.', 'layer4.')) for n in names)


if __name__ == '__main__':
    for name, value in measure().items():
        print(f'{name:48s} {value:.4g}' if isinstance(value, float) else f'{name:48s} {value}')
    print(f'{"resnet50_dropblocks_ours":48s} {resnet50_dropblock_names()}')


def test_readme_quotes_these_figures(figures):
    """The README's differences section quotes the figures this file measures (to within 0.01) and its command."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text(encoding='utf-8')
    section = re.search(r'<!-- section:differences -->(.*?)<!-- /section:differences -->', readme, re.S).group(1)
    assert 'PYTHONPATH=. python tests/test_layers_metalhead_differences.py' in section
    quoted = {
        'dropblock_14x14_b7_p0.1_ours': r'14×14, block 7 \| (\d+\.\d+) \|',
        'dropblock_14x14_b7_p0.1_metalhead': r'14×14, block 7 \| \d+\.\d+ \| (\d+\.\d+) ',
        'dropblock_14x14_b5_p0.1_ours': r'14×14, block 5 \| (\d+\.\d+) \|',
        'dropblock_14x14_b5_p0.1_metalhead': r'14×14, block 5 \| \d+\.\d+ \| (\d+\.\d+) ',
        'dropblock_7x7_b7_p0.1_ours': r'7×7, block 7 \| (\d+\.\d+) \|',
        'dropblock_7x7_b7_p0.1_metalhead': r'7×7, block 7 \| \d+\.\d+ \| (\d+\.\d+) ',
        'dropblock_7x7_b8_p0.1_ours': r'clipped to 7, dropped fraction (\d+\.\d+)\)',
        'channel_norm_std1e-3_output_std_ours': r'outputs a standard deviation of (\d+\.\d+)',
        'channel_norm_std1e-3_output_std_flux': r"where Flux's gives (\d+\.\d+)",
    }
    for key, pattern in quoted.items():
        match = re.search(pattern, section)
        assert match, f'README differences section does not quote {key} ({pattern})'
        assert abs(float(match.group(1)) - figures[key]) < 0.01, (key, match.group(1), figures[key])
    mixed = re.search(r'(\d+\.\d+) % of our\s+batches mix', section)
    assert mixed and abs(float(mixed.group(1)) / 100 - figures['stochastic_depth_tokens_mixed_batches_ours']) < 0.01
    agree = float(re.search(r'agree to (\d+\.\d+e-\d+)', section).group(1))
    assert abs(agree - figures['channel_norm_randn_max_abs_diff']) < 0.1 * agree
