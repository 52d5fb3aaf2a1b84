#!/usr/bin/env python
"""Every ``metalayers_*`` model against its timm twin, side by side, in one process.

For each registered ``metalayers_<name>`` (the twin is timm's ``<name>``, or torchvision's model for the families
timm does not have: ``torchvision:<name>``, from ``timm_metalayers.models._torchvision.TORCHVISION_TWINS``), both models are built with the
same arguments (``drop_path_rate`` / ``drop_block_rate`` where both accept them), then measured in turn
(ours, timm, ours, timm, ...), the median of ``--reps`` timed runs after warm-up:

* inference images/s: eval mode, ``torch.inference_mode``, batch 1 and ``--batch``;
* training-step images/s: forward + cross-entropy + backward + ``torch.optim.SGD`` step, batch ``--train-batch``;
* peak memory of a training step (what it allocates above the weights: activations, gradients, temporaries);
* the same three under ``torch.compile(fullgraph=True)`` (``--compile``, the default except with ``--quick``);

and printed as markdown tables with the ratio ours / timm for every figure, the machine (CPU, threads,
torch version, load average) and the ceiling: the machine's measured ``torch.mm`` FLOP/s against
model FLOPs (``FlopCounterMode``) x images/s.

    python benchmarks/bench_models.py --quick                     # ~1 minute smoke run
    python benchmarks/bench_models.py --models 'metalayers_resnet*' --threads 2 --json out.json
    python benchmarks/bench_models.py --merge a.json b.json        # one table from split runs
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ''):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch._dynamo
import torch.nn.functional as F

from benchmarks import (count_flops, fmt_num, interleaved, load_average, machine_info, markdown_table,
                        matmul_flops, median, peak_memory, quiet_torch_logs, setup_torch, spread, sync)

PREFIX = 'metalayers_'
IMPLS = ('ours', 'timm')
QUICK_MODEL = 'metalayers_resnet18'
# FLOPs of a training step per forward FLOP (forward + gradients of inputs and of weights). Counted, not assumed,
# it would be wrong for grouped convolutions: torch's FlopCounterMode ignores the groups in the weight gradient.
TRAIN_FLOPS_FACTOR = 3

# (key, column title, kind) in table order; kind 'speed' is images/s (higher is better), 'mem' bytes.
FIGURES = [
    ('infer_b1', 'infer b1', 'speed'),
    ('infer_bn', 'infer b{batch}', 'speed'),
    ('train', 'train b{train_batch}', 'speed'),
    ('train_mem', 'train peak MB', 'mem'),
    ('c_infer_bn', 'compiled infer b{batch}', 'speed'),
    ('c_train', 'compiled train b{train_batch}', 'speed'),
    ('c_train_mem', 'compiled train peak MB', 'mem'),
]


TORCHVISION = 'torchvision:'


def twin_name(name: str) -> str:
    """timm's model of the same name, or ``torchvision:<name>`` where the family names a torchvision twin."""
    import timm_metalayers  # noqa: F401  (registers the models and their twins)
    from timm_metalayers.models._torchvision import TORCHVISION_TWINS
    if name in TORCHVISION_TWINS:
        return TORCHVISION + TORCHVISION_TWINS[name][0]
    return name[len(PREFIX):]


def select_models(patterns: str) -> List[str]:
    import timm
    import timm_metalayers  # noqa: F401  (registers the models)
    registered = timm.list_models(PREFIX + '*')
    chosen = []
    for pattern in [p.strip() for p in patterns.split(',') if p.strip()]:
        if not pattern.startswith(PREFIX) and not pattern.startswith('*'):
            pattern = PREFIX + pattern
        matched = [m for m in registered if fnmatch.fnmatch(m, pattern)]
        if not matched:
            raise SystemExit(f'--models {pattern!r} matches no registered model; registered: {registered}')
        chosen += [m for m in matched if m not in chosen]
    return chosen


def _create(name: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    import timm
    import timm_metalayers  # noqa: F401  (registers the models)
    if name.startswith(TORCHVISION):
        from timm_metalayers.models._torchvision import TORCHVISION_TWINS, create_torchvision_twin
        ours = next(n for n, (tv, _) in TORCHVISION_TWINS.items() if tv == name[len(TORCHVISION):])
        return create_torchvision_twin(ours, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def common_kwargs(name: str, requested: Dict[str, Any]) -> Dict[str, Any]:
    """The requested arguments that both ``name`` and its twin accept (checked on the meta device)."""
    accepted = {}
    for key, value in requested.items():
        try:
            with torch.device('meta'):
                for n in (name, twin_name(name)):
                    _create(n, {key: value})
            accepted[key] = value
        except TypeError:
            pass
    return accepted


def build_pair(name: str, args) -> Dict[str, Any]:
    requested = {}
    if args.drop_path_rate:
        requested['drop_path_rate'] = args.drop_path_rate
    if args.drop_block_rate:
        requested['drop_block_rate'] = args.drop_block_rate
    if args.img_size:
        requested['img_size'] = args.img_size  # models with a fixed token grid (ViT) need it
    kwargs = common_kwargs(name, requested)
    def build_ours():
        torch.manual_seed(0)
        return _create(twin_name(name) if args.aa_control else name, kwargs)

    def build_timm():
        torch.manual_seed(0)
        return _create(twin_name(name), kwargs)
    if args.build_order == 'timm-first':
        ref = build_timm()
        ours = build_ours()
    else:
        ours = build_ours()
        ref = build_timm()
    if args.img_size:
        size = (args.img_size, args.img_size)
    else:
        import timm
        # torchvision's models have no pretrained config: the input size of ours
        size = tuple(timm.get_pretrained_cfg(name).input_size[1:])
    models = {}
    for impl, model in (('ours', ours), ('timm', ref)):
        model = model.to(args.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[impl] = model
    num_classes = getattr(ref, 'num_classes', None) or getattr(ours, 'num_classes', None) or 1000
    return dict(models=models, kwargs=kwargs, size=size, num_classes=num_classes)


def make_input(batch: int, size, args) -> torch.Tensor:
    x = torch.randn(batch, 3, *size, device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def inference_fn(model, x):
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def train_step_fn(model, params, x, y, lr=1e-4):
    opt = torch.optim.SGD(params, lr=lr)  # plain SGD: no optimizer state, so memory is weights + activations

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(_logits(model(x)), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _figure(results: Dict, key: str, samples: Dict[str, List[float]], batch: int) -> None:
    results[key] = {impl: dict(value=batch / median(s), spread=spread(s), samples=len(s),
                               images_per_s=[round(batch / t, 4) for t in s])
                    for impl, s in samples.items()}


def _memory_figure(results: Dict, key: str, fns: Dict[str, Any], models: Dict[str, Any], device: str) -> None:
    """Peak bytes a training step allocates above the weights: gradients are dropped first, so the step's
    activations, gradients and temporaries all count (and nothing allocated before it is freed inside it)."""
    results[key] = {}
    for impl, fn in fns.items():
        models[impl].zero_grad(set_to_none=True)
        results[key][impl] = dict(value=float(peak_memory(fn, device)))


def compile_check(entry, models, size, x, y, args, attempt) -> None:
    """``torch.compile(fullgraph=True)`` of each model, one eval call and one training step, no timing.

    The ``aot_eager`` backend traces the whole graph (dynamo: any graph break fails ``fullgraph=True``) and
    the backward (AOTAutograd) without inductor's C++ code generation, which takes minutes per model on a
    small CPU machine. Eval outputs are compared with eager.
    """
    torch._dynamo.reset()
    xb = make_input(2, size, args)
    entry['compile_check'] = {}
    for impl, m in models.items():
        def check(impl=impl, m=m):
            compiled = torch.compile(m, fullgraph=True, dynamic=False, backend='aot_eager')
            m.eval()
            with torch.inference_mode():
                ref, out = _logits(m(xb)), _logits(compiled(xb))
            if not torch.allclose(ref, out, atol=1e-4, rtol=1e-4):
                raise AssertionError(f'compiled eval output differs by {(ref - out).abs().max().item():.2e}')
            m.train()
            train_step_fn(compiled, list(m.parameters()), xb, y[:1].expand(2).contiguous())()
            m.zero_grad(set_to_none=True)
            entry['compile_check'][impl] = 'ok'
        attempt(f'compile_check_{impl}', check)
        entry['compile_check'].setdefault(impl, 'error')
    torch._dynamo.reset()


def bench_model(name: str, args) -> Dict[str, Any]:
    """All figures of one model and its twin; an error in one figure is recorded, the others still run."""
    t_start = time.perf_counter()
    entry: Dict[str, Any] = dict(model=name, twin=twin_name(name), figures={}, errors={})
    figures = entry['figures']
    pair = build_pair(name, args)
    models, size = pair['models'], pair['size']
    entry.update(kwargs=pair['kwargs'], img_size=list(size))
    timing = dict(reps=args.reps, warmup=args.warmup, min_run_s=args.min_run_s, device=args.device)

    def attempt(key: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recorded and reported in the table
            entry['errors'][key] = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
            if args.verbose:
                traceback.print_exc()

    if args.case_order == 'timm-first':
        models = {'timm': models['timm'], 'ours': models['ours']}
    for m in models.values():
        m.eval()

    def flops():
        x1 = make_input(1, size, args)
        entry['flops_per_img'] = {impl: count_flops(inference_fn(m, x1)) for impl, m in models.items()}
    if args.flops:
        attempt('flops', flops)

    x = make_input(args.train_batch, size, args)
    y = torch.randint(0, pair['num_classes'], (args.train_batch,), device=args.device)
    steps = {}
    if not args.skip_eager:
        # --- eager inference -------------------------------------------------------------------------
        for key, batch in (('infer_b1', 1), ('infer_bn', args.batch)):
            def infer(key=key, batch=batch):
                x = make_input(batch, size, args)
                samples = interleaved([(impl, inference_fn(m, x)) for impl, m in models.items()], **timing)
                _figure(figures, key, samples, batch)
            attempt(key, infer)

        # --- eager training --------------------------------------------------------------------------
        for m in models.values():
            m.train()
        steps = {impl: train_step_fn(m, list(m.parameters()), x, y) for impl, m in models.items()}

        def train():
            samples = interleaved(list(steps.items()), **timing)
            _figure(figures, 'train', samples, args.train_batch)
        attempt('train', train)
        attempt('train_mem', lambda: _memory_figure(figures, 'train_mem', steps, models, args.device))

    # --- torch.compile ---------------------------------------------------------------------------
    if args.compile == 'check':
        compile_check(entry, models, size, x, y, args, attempt)
    if args.compile == 'bench':
        torch._dynamo.reset()
        compiled = {impl: torch.compile(m, fullgraph=True, dynamic=False) for impl, m in models.items()}
        entry['compile_s'] = {}

        def c_infer():
            xb = make_input(args.batch, size, args)
            fns = {}
            for impl, cm in compiled.items():
                models[impl].eval()
                fn = inference_fn(cm, xb)
                t0 = time.perf_counter()
                fn()
                sync(args.device)
                entry['compile_s'][impl] = time.perf_counter() - t0
                fns[impl] = fn
            samples = interleaved(list(fns.items()), **timing)
            _figure(figures, 'c_infer_bn', samples, args.batch)
        attempt('c_infer_bn', c_infer)

        for m in models.values():
            m.train()
        c_steps = {impl: train_step_fn(cm, list(models[impl].parameters()), x, y) for impl, cm in compiled.items()}

        def c_train():
            for impl, step in c_steps.items():
                t0 = time.perf_counter()
                step()
                sync(args.device)
                entry['compile_s'][impl] = entry['compile_s'].get(impl, 0.0) + time.perf_counter() - t0
            samples = interleaved(list(c_steps.items()), **timing)
            _figure(figures, 'c_train', samples, args.train_batch)
        attempt('c_train', c_train)
        if 'c_train' in figures:
            attempt('c_train_mem', lambda: _memory_figure(figures, 'c_train_mem', c_steps, models, args.device))
        del compiled, c_steps
        torch._dynamo.reset()

    entry['seconds'] = time.perf_counter() - t_start
    del models, steps, pair, x, y
    gc.collect()
    return entry


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------

def _ratio(fig: Dict[str, Dict[str, Any]]) -> Optional[float]:
    """ours / timm. For throughput: the median over rounds of the ratio within a round (both models are timed
    back to back in every round, so a machine that drifts slower over a figure cancels out of each ratio)."""
    ours, ref = fig['ours'], fig['timm']
    a, b = ours.get('images_per_s'), ref.get('images_per_s')
    if a and b and len(a) == len(b) and all(b):
        return median([x / y for x, y in zip(a, b)])
    return ours['value'] / ref['value'] if ref['value'] else None


def _cell(fig: Optional[Dict], kind: str, error: Optional[str]) -> str:
    if fig is None:
        return 'error' if error else '-'
    r = _ratio(fig)
    if kind == 'mem':
        ours, ref = fig['ours']['value'] / 2 ** 20, fig['timm']['value'] / 2 ** 20
        return f'{fmt_num(ours)} / {fmt_num(ref)} = {r:.2f}x' if r is not None else f'{fmt_num(ours)} / {fmt_num(ref)}'
    ours, ref = fig['ours']['value'], fig['timm']['value']
    flag = ' (!)' if r is not None and r < 0.97 else ''
    return f'{fmt_num(ours)} / {fmt_num(ref)} = **{r:.2f}x**{flag}'


def render(report: Dict[str, Any]) -> str:
    cfg = report['config']
    out = ['## Machine', '']
    out += [f'- {k}: {v}' for k, v in report['machine'].items()]
    out += [f'- load average at end: {report.get("load_end", "n/a")}',
            f'- measured `torch.mm` float32 (best of {cfg["mm_n"] // 2}, {cfg["mm_n"]}, {2 * cfg["mm_n"]} square): '
            f'**{report["mm_flops"] / 1e9:.1f} GFLOP/s**', '']
    out += ['## Settings', '', f'- command: `{report["command"]}`']
    out += [f'- {k}: {v}' for k, v in cfg.items() if k not in ('mm_n',)]
    out += ['']
    entries = report['entries']
    keys = [k for k, _, _ in FIGURES if any(k in e['figures'] or k in e['errors'] for e in entries)]
    titles = {k: t.format(**cfg) for k, t, _ in FIGURES}
    kinds = {k: kind for k, _, kind in FIGURES}
    out += ['## Ours / timm', '',
            'Each cell: ours / timm = ratio. Throughput in images/s, the median of the timed runs (ratio: the '
            'median of the per-round ratios, ours and timm timed back to back in each round; > 1: ours faster; '
            '`(!)`: below 0.97); '
            'peak memory of a training step in MiB above the weights (activations, gradients, temporaries) '
            '(ratio < 1: ours smaller).', '']
    checked = any('compile_check' in e for e in entries)
    header = ['model', 'args'] + [titles[k] for k in keys] + (['fullgraph compile, train + eval'] if checked else [])
    rows = []
    for e in entries:
        args = ', '.join(f'{k}={v}' for k, v in e.get('kwargs', {}).items() if k != 'img_size') or '-'
        args += f'; {e["img_size"][0]}px' if 'img_size' in e else ''
        label = e['model'][len(PREFIX):]
        if 'A/A control' in cfg:
            label = f'{e["twin"]} vs {e["twin"]} (A/A)'
        row = [label, args] + [_cell(e['figures'].get(k), kinds[k], e['errors'].get(k)) for k in keys]
        if checked:
            cc = e.get('compile_check', {})
            row.append(f'{cc.get("ours", "-")} / {cc.get("timm", "-")}')
        rows.append(row)
    out += [markdown_table(header, rows, 'll' + 'r' * (len(header) - 2)), '']
    if checked:
        out += ['Last column: `torch.compile(model, fullgraph=True)` (backend `aot_eager`: dynamo + AOTAutograd, '
                'no graph break allowed) runs an eval forward (compared with eager) and a training step; ours / timm.',
                '']

    # summary: worst ratios
    speed_ratios = [(r, e['model'], k) for e in entries for k in keys if kinds[k] == 'speed' and k in e['figures']
                    for r in [_ratio(e['figures'][k])] if r is not None]
    if speed_ratios:
        worst = min(speed_ratios)
        below = [f'{m[len(PREFIX):]} {titles[k]} {r:.2f}x' for r, m, k in sorted(speed_ratios) if r < 0.97]
        out += [f'Throughput ratios: min **{worst[0]:.2f}x** ({worst[1][len(PREFIX):]}, {titles[worst[2]]}), '
                f'median **{median([r for r, _, _ in speed_ratios]):.2f}x** over {len(speed_ratios)} figures; '
                f'below 0.97x: {", ".join(below) if below else "none"}.', '']

    # ceiling
    rows = []
    for e in entries:
        fl = e.get('flops_per_img')
        if not fl:
            continue
        f_ours, f_timm = fl['ours'], fl['timm']
        row = [e['model'][len(PREFIX):], f'{f_ours / 1e9:.2f}' + ('' if f_ours == f_timm else f' (timm {f_timm / 1e9:.2f})')]
        for key, per_img in (('infer_bn', f_ours), ('train', TRAIN_FLOPS_FACTOR * f_ours),
                             ('c_infer_bn', f_ours), ('c_train', TRAIN_FLOPS_FACTOR * f_ours)):
            fig = e['figures'].get(key)
            if fig is None or not per_img:
                row.append('-')
                continue
            achieved = per_img * fig['ours']['value']
            row.append(f'{achieved / 1e9:.1f} ({100 * achieved / report["mm_flops"]:.0f}%)')
        rows.append(row)
    if rows:
        out += ['## Ceiling', '',
                f'Achieved GFLOP/s of ours (forward FLOPs per image from `FlopCounterMode` x images/s; a training '
                f'step counts {TRAIN_FLOPS_FACTOR} x the forward FLOPs: the backward computes a gradient for the input '
                f'and one for the weights) and the share of the measured matmul rate '
                f'({report["mm_flops"] / 1e9:.1f} GFLOP/s).', '']
        header = ['model', 'GFLOPs/img (fwd)', titles['infer_bn'], titles['train'], titles['c_infer_bn'],
                  titles['c_train']]
        out += [markdown_table(header, rows), '']

    extra = []
    for e in entries:
        if e.get('compile_s'):
            extra.append(f'- {e["model"][len(PREFIX):]}: compile (first inference + first training call) '
                         f'ours {e["compile_s"].get("ours", 0):.0f} s, timm {e["compile_s"].get("timm", 0):.0f} s; '
                         f'whole model {e["seconds"]:.0f} s')
    if extra:
        out += ['## Compile times', ''] + extra + ['']
    errors = [f'- {e["model"]} {k}: {msg}' for e in entries for k, msg in e['errors'].items()]
    out += ['## Errors', ''] + (errors or ['none']) + ['']
    return '\n'.join(out)


def merge(paths: Sequence[str]) -> Dict[str, Any]:
    reports = []
    for p in paths:
        with open(p, encoding='utf-8') as f:
            reports.append(json.load(f))
    merged = dict(reports[0])
    by_model: Dict[str, Dict[str, Any]] = {}
    for r in reports:
        for e in r['entries']:
            if e['model'] not in by_model:
                by_model[e['model']] = json.loads(json.dumps(e))
                continue
            into = by_model[e['model']]
            into['figures'].update(e['figures'])
            into['errors'].update(e['errors'])
            for key in ('compile_check', 'compile_s', 'flops_per_img', 'kwargs', 'img_size'):
                if key in e and (key not in into or key in ('compile_check', 'compile_s')):
                    into[key] = e[key]
            into['seconds'] = into.get('seconds', 0) + e.get('seconds', 0)
    merged['entries'] = list(by_model.values())
    merged['config'] = dict(reports[0]['config'], models=len(by_model),
                            compile=' + '.join(sorted({str(r['config']['compile']) for r in reports})))
    merged['command'] = ' ; '.join(r['command'] for r in reports)
    merged['machine'] = dict(reports[0]['machine'])
    merged['machine']['load average (1, 5, 15 min) at start'] = ' / '.join(
        r['machine']['load average (1, 5, 15 min) at start'] for r in reports)
    merged['load_end'] = ' / '.join(r.get('load_end', 'n/a') for r in reports)
    merged['mm_flops'] = max(r['mm_flops'] for r in reports)
    return merged


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--models', default=None,
                   help='comma-separated globs over the registered models (prefix optional), default all '
                        f'(with --quick: {QUICK_MODEL})')
    p.add_argument('--batch', type=int, default=None, help='inference batch besides 1 (default 8; --quick 2)')
    p.add_argument('--train-batch', type=int, default=None, help='training batch (default 4; --quick 2)')
    p.add_argument('--img-size', type=int, default=None,
                   help="square input size (default: the twin's pretrained input size; --quick 64)")
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--compile', choices=('bench', 'check', 'off'), default=None,
                   help='bench: also time torch.compile(fullgraph=True) (inductor) models; check: only compile '
                        'each model with fullgraph=True (aot_eager backend) and run eval + a training step; '
                        'off (default bench; --quick: off)')
    p.add_argument('--skip-eager', action='store_true', help='measure only what --compile asks for')
    p.add_argument('--channels-last', action='store_true', help='models and inputs in channels_last')
    p.add_argument('--reps', type=int, default=None, help='timed runs per figure and model (default 5; --quick 3)')
    p.add_argument('--warmup', type=int, default=None, help='warm-up calls before timing (default 2; --quick 1)')
    p.add_argument('--min-run-s', type=float, default=None,
                   help='each timed run repeats the call until about this long (default 0.3 s; --quick 0.05)')
    p.add_argument('--drop-path-rate', type=float, default=0.05, help='passed to both where both accept it')
    p.add_argument('--drop-block-rate', type=float, default=0.05, help='passed to both where both accept it')
    p.add_argument('--flops', action=argparse.BooleanOptionalAction, default=True,
                   help='count FLOPs for the ceiling table')
    p.add_argument('--mm-n', type=int, default=2048, help='matrix sizes of the matmul ceiling: n/2, n, 2n')
    p.add_argument('--quick', action='store_true', help='one small model, tiny sizes, few reps (~1 minute)')
    p.add_argument('--json', default=None, help='also write the raw results here (for --merge)')
    p.add_argument('--output', default=None, help='also write the markdown here')
    p.add_argument('--merge', nargs='+', default=None, metavar='JSON',
                   help='render one report from the --json files of split runs, measure nothing')
    p.add_argument('--build-order', choices=('ours-first', 'timm-first'), default='ours-first',
                   help='which model of a pair is built (and so allocated) first')
    p.add_argument('--case-order', choices=('ours-first', 'timm-first'), default='ours-first',
                   help='which model comes first in warm-up and in the interleaved timing (A B, B A, ...)')
    p.add_argument('--aa-control', action='store_true',
                   help="noise floor: measure timm's model against a second instance of itself in the 'ours' "
                        "slot (built first, as ours is); its ratios show what chance alone gives")
    p.add_argument('--verbose', action='store_true', help='print tracebacks of failed figures')
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(batch=2 if quick else 8, train_batch=2 if quick else 4, img_size=64 if quick else None,
                    compile='off' if quick else 'bench', reps=3 if quick else 5, warmup=1 if quick else 2,
                    min_run_s=0.05 if quick else 0.3, models=QUICK_MODEL if quick else PREFIX + '*')
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.reps < 1 or args.batch < 1 or args.train_batch < 2:
        p.error('--reps and --batch must be >= 1, --train-batch >= 2 (batch norm needs two samples)')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        text = render(merge(args.merge))
    else:
        quiet_torch_logs()
        setup_torch(args.threads, args.device)
        names = select_models(args.models)
        report: Dict[str, Any] = dict(
            command='python benchmarks/bench_models.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
            machine=machine_info(args.device),
            config=dict(models=len(names), batch=args.batch, train_batch=args.train_batch,
                        img_size=args.img_size or 'pretrained default', compile=args.compile,
                        channels_last=args.channels_last, reps=args.reps, warmup=args.warmup,
                        min_run_s=args.min_run_s, drop_path_rate=args.drop_path_rate,
                        drop_block_rate=args.drop_block_rate, optimizer='SGD(lr=1e-4)', mm_n=args.mm_n,
                        build_order=args.build_order, case_order=args.case_order,
                        **({'A/A control': "timm's model in both columns"} if args.aa_control else {})),
            entries=[])
        report['mm_flops'] = matmul_flops(args.device, args.mm_n)
        for name in names:
            print(f'[bench_models] {name} vs {twin_name(name)} ...', file=sys.stderr, flush=True)
            entry = bench_model(name, args)
            report['entries'].append(entry)
            print(f'[bench_models]   done in {entry["seconds"]:.0f} s; errors: {entry["errors"] or "none"}',
                  file=sys.stderr, flush=True)
            if args.json:  # written after every model, so a split run that is stopped keeps its results
                report['load_end'] = load_average()
                with open(args.json, 'w', encoding='utf-8') as f:
                    json.dump(report, f, indent=1)
        report['load_end'] = load_average()
        report['mm_flops'] = max(report['mm_flops'], matmul_flops(args.device, args.mm_n))
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as f:
                json.dump(report, f, indent=1)
        text = render(report)
    print(text)
    if args.output:
        with open(args.output, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
