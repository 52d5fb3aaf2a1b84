"""ConvNeXt's block norm on CPU: channels-last ``LayerNormV2`` after the permute (our default, as timm's
``conv_mlp=False`` path) against ``ChannelLayerNorm`` before it (Metalhead's layout). Same keys, same weights,
outputs compared, then inference and a training step timed in interleaved rounds (the order rotates)::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/convnext_block_norm.py --rounds 7
"""
import argparse
import statistics
import time
from functools import partial

import timm
import torch
import torch.nn.functional as F

import timm_metalayers  # noqa: F401  (registers the models)
from timm_metalayers.layers import ChannelLayerNorm


def seconds(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='metalayers_convnext_tiny')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--img-size', type=int, default=160)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--calls', type=int, default=2, help='calls per timing')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    last = timm.create_model(args.model)
    first = timm.create_model(args.model, norm_layer=partial(ChannelLayerNorm, eps=1e-6))
    assert list(last.state_dict()) == list(first.state_dict()), 'the keys differ'
    first.load_state_dict(last.state_dict())
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, last.num_classes, (args.batch,))
    with torch.inference_mode():
        diff = (last.eval()(x) - first.eval()(x)).abs().max().item()

    def infer(model):
        def run():
            with torch.inference_mode():
                model(x)
        return run

    def train(model):
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        return step

    print(f'{args.model}, batch {args.batch}, {args.img_size} px, {args.threads} thread(s), {args.rounds} rounds; '
          f'largest output difference {diff:.2e}')
    for what, make in (('inference', infer), ('training step', train)):
        cases = {'LayerNormV2 after the permute': make(last), 'ChannelLayerNorm before it': make(first)}
        for fn in cases.values():
            fn()
        times = {k: [] for k in cases}
        names = list(cases)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                times[name].append(seconds(cases[name], args.calls))
        a, b = (times[n] for n in names)
        print(f'{what}: ' + ', '.join(f'{n} {statistics.median(times[n]):.3f} s' for n in names)
              + f'; ChannelLayerNorm / LayerNormV2 time, paired median {statistics.median(q / p for p, q in zip(a, b)):.3f}')


if __name__ == '__main__':
    main()
