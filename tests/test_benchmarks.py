"""The benchmarks keep running (``--quick`` smoke runs; the tables are checked, never a time), and what they
rely on keeps working: a model and the layers under ``torch.compile(fullgraph=True)`` in train and eval mode,
in ``channels_last`` end to end, and DropBlock's fast eager path draws exactly the dense path's mask."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from torch import nn

from timm_metalayers.layers import ChannelLayerNorm, DropBlock, StochasticDepth, conv_norm, create_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO = re.compile(r'\*\*\d+\.\d\dx\*\*')


def _run(script, *args, timeout=900):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _table_rows(text, first_cell):
    return [line for line in text.splitlines() if line.startswith(f'| {first_cell} |')]


def test_bench_models_quick_produces_the_table(tmp_path):
    out_json = tmp_path / 'quick.json'
    text = _run('bench_models.py', '--quick', '--threads', '1', '--json', str(out_json))
    for heading in ('## Machine', '## Ours / timm', '## Ceiling', '## Errors'):
        assert heading in text
    assert re.search(r'- torch: \S+', text) and re.search(r'- threads: 1', text) and 'GFLOP/s' in text
    assert '| model | args | infer b1 | infer b2 | train b2 | train peak MB |' in text
    rows = _table_rows(text, 'resnet18')
    assert len(rows) == 2  # the ratio table and the ceiling table
    assert len(RATIO.findall(rows[0])) == 3  # three throughput ratios
    assert 'drop_path_rate=0.05, drop_block_rate=0.05' in rows[0]
    assert 'error' not in rows[0]

    report = json.loads(out_json.read_text())
    entry, = report['entries']
    assert entry['model'] == 'metalayers_resnet18' and entry['twin'] == 'resnet18' and not entry['errors']
    assert set(entry['figures']) == {'infer_b1', 'infer_bn', 'train', 'train_mem'}
    assert entry['flops_per_img']['ours'] == entry['flops_per_img']['timm'] > 0  # same architecture
    # split runs merge into one report (one row per model) without measuring again
    merged = _run('bench_models.py', '--merge', str(out_json), str(out_json))
    assert _table_rows(merged, 'resnet18') == rows


def test_convmixer_block_lifetime_reports_the_three_blocks():
    text = _run('convmixer_block_lifetime.py', '--model', 'convmixer_768_32', '--batch', '1', '--img-size', '32',
                '--rounds', '2')
    lines = text.splitlines()
    assert lines[0] == 'convmixer_768_32, batch 1, 32 px, 1 thread(s), 2 rounds'
    assert [line.split(':')[0].strip() for line in lines[1:]] == ['timm', 'nested', 'ours']
    assert lines[1].endswith('page faults per forward (median)') and '1.000x timm' in lines[1]


def test_convnext_block_norm_compares_equal_models():
    text = _run('convnext_block_norm.py', '--batch', '1', '--img-size', '32', '--rounds', '1', '--calls', '1')
    head, infer, train = text.splitlines()
    assert head.endswith('largest output difference 0.00e+00')  # same keys, same weights, same numbers
    for line, what in ((infer, 'inference: '), (train, 'training step: ')):
        assert line.startswith(what) and 'ChannelLayerNorm / LayerNormV2 time, paired median' in line


def test_bench_layers_quick_produces_the_table():
    text = _run('bench_layers.py', '--quick', '--threads', '1')
    rows = [line for line in text.splitlines() if line.startswith('| ') and RATIO.search(line)]
    joined = '\n'.join(rows)
    for name in ('timm DropBlock2d couple_channels=False', 'timm DropBlock2d couple_channels=True', 'timm DropPath',
                 'torchvision stochastic_depth', 'timm ClassifierHead', 'timm LayerNorm2d', 'channels_last'):
        assert name in joined, name


# ---------------------------------------------------------------------------------------------
# what the benchmarks rely on: compile (fullgraph, train and eval) and channels_last end to end
# ---------------------------------------------------------------------------------------------

def _channels_last_and_compiled(model, x, atol):
    """The model and input in channels_last, and the model compiled with fullgraph=True; eval outputs of both
    equal the contiguous eager output."""
    model.eval()
    with torch.inference_mode():
        ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # fullgraph=True fails on any graph break; aot_eager traces forward and backward through AOTAutograd
    # (inductor's C++ code generation is the slow part on small CI machines and adds nothing here)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend='aot_eager')
    with torch.inference_mode():
        assert torch.allclose(model(x_cl), ref, atol=atol, rtol=atol)
        assert torch.allclose(compiled(x_cl), ref, atol=atol, rtol=atol)
    return model, x_cl, compiled


def _tiny_resnet():
    from timm_metalayers.models.resnet import ResNet
    torch.manual_seed(0)
    # one block per stage, with DropBlock (stages 3-4) and StochasticDepth, so every regulariser is traced
    return ResNet('basicblock', [1, 1, 1, 1], num_classes=10, drop_rate=0.1, drop_path_rate=0.2,
                  drop_block_rate=0.2)


def test_tiny_resnet_compiles_fullgraph_train_and_eval_in_channels_last():
    import torch._inductor.config
    torch._dynamo.reset()
    model = _tiny_resnet()
    assert any(isinstance(m, DropBlock) for m in model.modules())
    assert any(isinstance(m, StochasticDepth) for m in model.modules())
    model, x_cl, compiled = _channels_last_and_compiled(model, torch.randn(2, 3, 32, 32), atol=1e-5)
    with torch.inference_mode():
        assert model.forward_features(x_cl).is_contiguous(memory_format=torch.channels_last)

    model.train()
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(1)
        out = compiled(x_cl)
        torch.manual_seed(1)
        eager = model(x_cl)
    assert torch.allclose(out, eager, atol=1e-5, rtol=1e-5)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    torch._dynamo.reset()


@pytest.mark.parametrize('name,kwargs,size', [
    ('metalayers_mobilenetv3_small_050', dict(drop_path_rate=0.2, drop_rate=0.1), 64),
    ('metalayers_vit_tiny_patch16_224', dict(drop_path_rate=0.2, img_size=32), 32),
    ('metalayers_inception_v3', dict(drop_rate=0.2), 107),
    ('metalayers_convnext_tiny', dict(depths=(1, 1, 1, 1), planes=(8, 16, 24, 32), drop_path_rate=0.2), 32),
    ('metalayers_convmixer_768_32', dict(planes=16, depth=2, drop_path_rate=0.2), 28),
    ('metalayers_resmlp_12_224', dict(img_size=32, depth=2, embed_dim=16, drop_path_rate=0.2), 32),
    ('metalayers_gmlp_ti16_224', dict(img_size=32, depth=2, embed_dim=16, drop_path_rate=0.2), 32),
    ('metalayers_mnasnet_small', dict(drop_path_rate=0.2, drop_rate=0.1), 64),  # the inverted-residual builder
    ('metalayers_tf_efficientnet_b0', dict(drop_path_rate=0.2), 64),  # TF "same" padding computed per input
    ('metalayers_res2net50_14w_8s', dict(drop_path_rate=0.2), 32),  # bottle2neck in the ResNet builder
    ('metalayers_densenet121', dict(drop_rate=0.1), 32),
    ('metalayers_legacy_xception', dict(drop_rate=0.1), 32),
    ('metalayers_vgg11_bn', dict(drop_rate=0.1), 32),  # the conv pre-logits on a map pooled up to 7x7
    ('metalayers_googlenet', dict(drop_rate=0.1), 32),
    ('metalayers_squeezenet1_1', dict(drop_rate=0.1), 64),
    ('metalayers_alexnet', dict(drop_rate=0.1), 64),
])
def test_model_families_compile_fullgraph_train_and_eval_in_channels_last(name, kwargs, size):
    """The other families (the tiny ResNet above covers ResNet): channels_last end to end and one whole graph
    in eval (equal to eager) and training (finite gradients on every parameter). BENCHMARKS.md compiles them all."""
    import timm
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs)
    model, x_cl, compiled = _channels_last_and_compiled(model, torch.randn(2, 3, size, size), atol=1e-4)
    model.train()
    compiled(x_cl).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    torch._dynamo.reset()


def test_layers_keep_channels_last_and_values():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 12, 12)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    layers = [DropBlock(0.3, 3, generator=torch.Generator()), DropBlock(0.3, 4, generator=torch.Generator()),
              StochasticDepth(0.3, generator=torch.Generator()), ChannelLayerNorm(8, 'relu'),
              nn.Sequential(*conv_norm(3, 8, 8, pad=1))]
    for layer in layers:
        layer.train()
        gen = getattr(layer, 'generator', None)
        if gen is not None:
            gen.manual_seed(5)
        a = layer(x)
        if gen is not None:
            gen.manual_seed(5)
        b = layer(x_cl)
        assert b.is_contiguous(memory_format=torch.channels_last), layer
        assert torch.allclose(a, b, atol=1e-6), layer
    head = create_classifier(8, 5, pool_layer='avgmax')
    assert torch.allclose(head(x), head(x_cl), atol=1e-6)


@pytest.mark.parametrize('shape,block,p,gamma_scale', [
    ((8, 16, 14, 14), 5, 0.1, 0.25), ((2, 7, 7, 7), 3, 0.3, 1.0), ((2, 3, 9, 6), 4, 0.5, 1.0),
    ((2, 2, 5, 5), 9, 0.4, 1.0), ((1, 3, 1, 8), 3, 0.5, 1.0), ((2, 3, 8, 8), 1, 0.2, 1.0), ((2, 3, 8, 8), 3, 0.3, 0.0),
    ((2, 3, 6, 6), 2, 1.0, 1.0),
])
def test_dropblock_sparse_keep_mask_equals_the_dense_one(shape, block, p, gamma_scale):
    """On CPU DropBlock draws the gaps between seeds (geometric) and expands the seeds into blocks by index (in
    eager mode, and as a custom op under torch.compile); on accelerators it max-pools a dense seed map. For the
    same seeds both must give the same mask."""
    from timm_metalayers.layers import drop
    N, C, H, W = shape
    bh, bw = min(block, H), min(block, W)
    n = N * C * (H - bh + 1) * (W - bw + 1)
    gamma = min(gamma_scale * p * H * W / (bh * bw) / ((H - bh + 1) * (W - bw + 1)), 1.0)
    gen = torch.Generator().manual_seed(3)
    if 0 < gamma <= drop._GAP_SEED_RATE_MAX:
        gaps = torch.empty(drop._num_gaps(n, gamma), dtype=torch.float64).geometric_(gamma, generator=gen)
        starts = drop._seed_starts_from_gaps(gaps, n, gamma)
    else:
        gaps = None
        starts = torch.empty(n).bernoulli_(gamma, generator=gen).nonzero().view(-1)
    seeds = torch.zeros(n)
    seeds[starts] = 1.0
    dense = drop._dense_keep_mask(seeds.view(N, C, H - bh + 1, W - bw + 1), bh, bw)
    sparse = drop._sparse_keep_mask(starts, N, C, H, W, bh, bw)
    assert sparse.dtype == dense.dtype == torch.float32 and sparse.shape == dense.shape == shape
    assert torch.equal(sparse, dense)
    if gaps is not None and drop._keep_mask_op is not None:
        assert torch.equal(drop._keep_mask_op(gaps, N, C, H, W, bh, bw, gamma), dense)
    if gamma_scale:
        assert (dense == 0).any()


def test_dropblock_path_thresholds_match_their_named_constants():
    """TorchScript cannot read module globals, so _dropblock spells its thresholds as literals; the named
    constants (used by the tests above) must stay the values it uses."""
    import inspect
    from timm_metalayers.layers import drop
    source = inspect.getsource(drop._dropblock)
    assert f'n * bh * bw >= {drop._SPARSE_MIN_WORK}' in source
    assert f'0.0 < gamma <= {drop._GAP_SEED_RATE_MAX}' in source


def test_dropblock_seed_gaps_are_a_bernoulli_process():
    from timm_metalayers.layers import drop
    torch.manual_seed(0)
    n, gamma, runs = 50000, 0.004, 100
    counts = torch.zeros(n)
    for _ in range(runs):
        gaps = torch.empty(drop._num_gaps(n, gamma), dtype=torch.float64).geometric_(gamma)
        starts = drop._seed_starts_from_gaps(gaps, n, gamma)
        assert starts.dtype == torch.int64 and (starts[1:] > starts[:-1]).all() and 0 <= starts.min()
        assert starts.max() < n
        counts[starts] += 1
    rate = counts.view(10, -1).mean(1) / runs  # the rate is the same at the start, middle and end
    assert torch.allclose(rate, torch.full_like(rate, gamma), rtol=0.12)
    # too few gaps drawn: more are drawn until the trials are covered
    short = drop._seed_starts_from_gaps(torch.ones(3, dtype=torch.float64), 1000, 0.5)
    assert short[:3].tolist() == [0, 1, 2] and short.max() < 1000 and short.numel() > 300
