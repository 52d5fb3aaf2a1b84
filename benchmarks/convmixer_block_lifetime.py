"""Why ConvMixer's block runs its ``channel`` layers one by one: inference time and page faults of three models.

* ``timm``: timm's ConvMixer (a flat block: the residual sum is freed once the 1x1 conv has read it);
* ``nested``: ours with each block as a plain ``nn.Sequential(spatial, channel)`` (what it was before: the sum
  lives until ``channel`` returns, one more activation at a time);
* ``ours``: ours as built (``ConvMixerBlock``).

Same weights in both of ours; rounds rotate which model goes first; a figure is the median over rounds of one
forward's seconds and of the process's minor page faults during it (the allocator handing memory back to the
OS and touching it again)::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/convmixer_block_lifetime.py --rounds 18
"""
import argparse
import copy
from collections import OrderedDict
import resource
import statistics
import time

import timm
import torch
from torch import nn

import timm_metalayers  # noqa: F401  (registers the models)


def one_forward(model: nn.Module, x: torch.Tensor):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='convmixer_1536_20')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--img-size', type=int, default=96)
    p.add_argument('--rounds', type=int, default=18)
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours = timm.create_model(f'metalayers_{args.model}').eval()
    nested = copy.deepcopy(ours)
    nested.blocks = nn.Sequential(*[nn.Sequential(OrderedDict(block.named_children())) for block in nested.blocks])
    models = {'timm': timm.create_model(args.model).eval(), 'nested': nested, 'ours': ours}
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        assert torch.equal(nested(x[:1]), ours(x[:1]))
    for model in models.values():
        one_forward(model, x)
    names = list(models)
    seconds = {k: [] for k in names}
    faults = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            s, f = one_forward(models[name], x)
            seconds[name].append(s)
            faults[name].append(f)
    print(f'{args.model}, batch {args.batch}, {args.img_size} px, {args.threads} thread(s), {args.rounds} rounds')
    for name in names:
        ratio = statistics.median(t / s for t, s in zip(seconds['timm'], seconds[name]))
        print(f'{name:>6}: {statistics.median(seconds[name]):.3f} s per batch, {ratio:.3f}x timm (paired median), '
              f'{statistics.median(faults[name]):.0f} page faults per forward (median)')


if __name__ == '__main__':
    main()
