#!/usr/bin/env python
"""The layers that run on every step, against their timm / torchvision counterparts, interleaved.

* ``DropBlock`` against timm's ``DropBlock2d``, like for like in both mask modes: ``couple_channels=False``
  (one mask per sample and channel, the guide's default) and ``couple_channels=True`` (one mask per sample
  shared by all channels, timm's default), forward + backward and forward, at the sizes ResNet-50 uses
  (stage 3: block 5, gamma_scale 0.25; stage 4: block 3, gamma_scale 1.0);
* ``StochasticDepth`` (row mode) against timm's ``DropPath`` and ``torchvision.ops.stochastic_depth``;
* ``create_classifier`` heads against timm's ``ClassifierHead``;
* ``ChannelLayerNorm`` against timm's ``LayerNorm2d``, contiguous and channels_last.

Every figure is the median of ``--reps`` interleaved timed runs (ours, reference, ours, reference, ...)
after warm-up; the ratio is ours / reference in speed, the median over rounds of reference time / our time
within a round (> 1 means ours is faster).

    python benchmarks/bench_layers.py --threads 2
    python benchmarks/bench_layers.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Tuple

if __package__ in (None, ''):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn

from benchmarks import interleaved, machine_info, load_average, markdown_table, median, setup_torch, spread


def fwd_bwd(module: Callable, shape, device: str, channels_last: bool = False) -> Callable[[], None]:
    x = torch.randn(*shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = None

    def run():
        nonlocal grad
        x.grad = None
        y = module(x)
        if grad is None or grad.shape != y.shape:
            grad = torch.randn_like(y)
        y.backward(grad)
    return run


def fwd(module: Callable, shape, device: str, channels_last: bool = False) -> Callable[[], None]:
    x = torch.randn(*shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            module(x)
    return run


def cases(batch: int, device: str, quick: bool) -> List[Tuple[str, str, str, Dict[str, Callable]]]:
    """(layer, shape, pass, {impl: fn}), the first impl is ours."""
    import torchvision
    from timm.layers import ClassifierHead, DropBlock2d, DropPath, LayerNorm2d
    from timm_metalayers.layers import ChannelLayerNorm, DropBlock, StochasticDepth, create_classifier

    out = []
    p = 0.1
    # ResNet-50 with drop_block_rate: stage 3 (14x14, block 5, gamma_scale 0.25), stage 4 (7x7, block 3).
    # DropBlock sits after the 3x3 conv of the bottleneck (256 / 512 channels); the sizes use the
    # stage outputs (1024 / 2048 channels).
    db_sizes = [((batch, 1024, 14, 14), 5, 0.25), ((batch, 2048, 7, 7), 3, 1.0),
                ((batch, 256, 14, 14), 5, 0.25), ((batch, 512, 7, 7), 3, 1.0)]
    if quick:
        db_sizes = [((batch, 64, 14, 14), 5, 0.25)]
    for shape, block, gs in db_sizes:
        for couple in (False, True):
            ours = DropBlock(p, block, gs, couple_channels=couple).train()
            ref = DropBlock2d(p, block, gs, couple_channels=couple).train()
            name = f'DropBlock(block={block}, gamma_scale={gs}, couple_channels={couple})'
            for pass_name, make in (('fwd+bwd', fwd_bwd), ('fwd', fwd)):
                out.append((name, str(tuple(shape)), pass_name, {
                    'ours': make(ours, shape, device),
                    f'timm DropBlock2d couple_channels={couple}': make(ref, shape, device)}))

    sd_sizes = [(batch, 256, 56, 56), (batch, 1024, 14, 14), (batch, 2048, 7, 7)]
    if quick:
        sd_sizes = [(batch, 64, 14, 14)]
    for shape in sd_sizes:
        ours = StochasticDepth(p, 'row').train()
        ref = DropPath(p).train()
        out.append(('StochasticDepth(row)', str(tuple(shape)), 'fwd+bwd', {
            'ours': fwd_bwd(ours, shape, device),
            'timm DropPath': fwd_bwd(ref, shape, device),
            'torchvision stochastic_depth': fwd_bwd(
                lambda x: torchvision.ops.stochastic_depth(x, p, 'row', training=True), shape, device)}))

    head_shape = (batch, 2048, 7, 7) if not quick else (batch, 64, 7, 7)
    c = head_shape[1]
    for pool, drop in (('avg', 0.0), ('avgmax', 0.2)):
        ours = create_classifier(c, 1000, pool_layer=pool, dropout_prob=drop or None).train().to(device)
        ref = ClassifierHead(c, 1000, pool_type=pool, drop_rate=drop).train().to(device)
        out.append((f'create_classifier(pool={pool}, dropout={drop})', str(tuple(head_shape)), 'fwd+bwd', {
            'ours': fwd_bwd(ours, head_shape, device), 'timm ClassifierHead': fwd_bwd(ref, head_shape, device)}))

    ln_sizes = [(batch, 96, 56, 56), (batch, 768, 7, 7)] if not quick else [(batch, 32, 14, 14)]
    for shape in ln_sizes:
        ours = ChannelLayerNorm(shape[1]).to(device)
        ref = LayerNorm2d(shape[1]).to(device)
        for cl in (False, True):
            out.append(('ChannelLayerNorm', str(tuple(shape)) + (' channels_last' if cl else ''), 'fwd+bwd', {
                'ours': fwd_bwd(ours, shape, device, cl), 'timm LayerNorm2d': fwd_bwd(ref, shape, device, cl)}))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--batch', type=int, default=None, help='batch of every input (default 32; --quick 4)')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--reps', type=int, default=None, help='timed runs per figure (default 7; --quick 3)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--min-run-s', type=float, default=None, help='length of one timed run (default 0.2 s)')
    p.add_argument('--only', default=None, help='run only the layers whose name contains this text')
    p.add_argument('--quick', action='store_true', help='tiny sizes, few reps')
    p.add_argument('--output', default=None, help='also write the markdown here')
    args = p.parse_args(argv)
    batch = args.batch or (4 if args.quick else 32)
    reps = args.reps or (3 if args.quick else 7)
    min_run_s = args.min_run_s or (0.02 if args.quick else 0.2)
    setup_torch(args.threads, args.device)
    import timm_metalayers  # noqa: F401

    rows = []
    for layer, shape, pass_name, fns in cases(batch, args.device, args.quick):
        if args.only and args.only.lower() not in layer.lower():
            continue
        torch.manual_seed(0)
        samples = interleaved(list(fns.items()), reps=reps, warmup=args.warmup, min_run_s=min_run_s,
                              device=args.device)
        ours = median(samples['ours'])
        for impl, s in samples.items():
            if impl == 'ours':
                continue
            ref = median(s)
            # paired: both are timed back to back in every round, so a machine drifting slower cancels out
            speed = median([r / o for o, r in zip(samples['ours'], s)])
            rows.append([layer, shape, pass_name, impl, f'{1e3 * ours:.3f}', f'{1e3 * ref:.3f}',
                         f'**{speed:.2f}x**', f'{100 * spread(samples["ours"]):.0f}% / {100 * spread(s):.0f}%'])
        print(f'[bench_layers] {layer} {shape} {pass_name} done', file=sys.stderr, flush=True)

    info = machine_info(args.device)
    lines = ['## Machine', ''] + [f'- {k}: {v}' for k, v in info.items()]
    lines += [f'- load average at end: {load_average()}',
              f'- command: `python benchmarks/bench_layers.py {" ".join(sys.argv[1:] if argv is None else argv)}`',
              f'- batch {batch}, median of {reps} interleaved runs of about {min_run_s} s each after '
              f'{args.warmup} warm-up calls, drop probability 0.1; speed ours/ref: the median over rounds of '
              f'ref time / our time within a round', '']
    header = ['layer', 'input', 'pass', 'reference', 'ours ms', 'ref ms', 'speed ours/ref', 'spread ours / ref']
    lines += [markdown_table(header, rows, 'llllrrrr'), '']
    text = '\n'.join(lines)
    print(text)
    if args.output:
        with open(args.output, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
