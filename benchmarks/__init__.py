"""Shared helpers of the benchmarks: machine description, interleaved timing, peak memory, matmul ceiling.

The scripts are run as ``python benchmarks/bench_models.py`` / ``python -m benchmarks.bench_models``
from the repository root; see ``BENCHMARKS.md``.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


# ---------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return ', '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def setup_torch(threads: Optional[int], device: str) -> None:
    """Threads, flush-denormal (random weights must not hit slow denormal paths in one model only)."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if device.startswith('cuda'):
        torch.backends.cudnn.benchmark = True


def machine_info(device: str) -> Dict[str, str]:
    import timm
    info = {
        'cpu': f'{cpu_model()} ({os.cpu_count()} logical CPUs)',
        'threads': str(torch.get_num_threads()),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'python': platform.python_version(),
        'device': device,
        'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', 'unset'),
        'load average (1, 5, 15 min) at start': load_average(),
    }
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    return info


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize(torch.device(device))


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

def _run_iters(fn: Callable[[], object], iters: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def interleaved(cases: Sequence[Tuple[str, Callable[[], object]]], *, reps: int, warmup: int,
                min_run_s: float, device: str) -> Dict[str, List[float]]:
    """Seconds per call of every case, measured ``reps`` times in turn (A B, B A, A B, ...).

    Each case is first called ``warmup`` times. A timed run repeats the call ``iters`` times, with
    ``iters`` (the same for all cases) chosen so that the slowest case's run lasts about ``min_run_s``;
    the run's time divided by ``iters`` is one sample. Interleaving spreads a slow period of a shared
    machine over all cases instead of penalising one of them.
    """
    per_call = {}
    for name, fn in cases:
        for _ in range(max(warmup, 1)):
            fn()
        per_call[name] = _run_iters(fn, 1, device)
    slowest = max(per_call.values())
    iters = max(1, int(round(min_run_s / slowest))) if slowest > 0 else 1
    samples: Dict[str, List[float]] = {name: [] for name, _ in cases}
    for rep in range(reps):
        # A B, B A, A B, ...: no case always runs first (or always right after the same other case)
        for name, fn in (cases if rep % 2 == 0 else list(reversed(cases))):
            samples[name].append(_run_iters(fn, iters, device))
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of the samples: how noisy a figure was."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else 0.0


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated by ``fn`` above what was allocated when it started.

    On CUDA: ``torch.cuda.max_memory_allocated``. On CPU, where PyTorch keeps no allocator statistics
    (and ``tracemalloc`` does not see tensor memory, which is not allocated through Python), the
    allocations and frees of PyTorch's CPU allocator are read from ``torch.profiler(profile_memory=True)``
    and summed in time order; this sees eager and ``torch.compile``-generated code alike.
    """
    if device.startswith('cuda'):
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base
    import logging
    from torch.profiler import ProfilerActivity, profile
    logging.getLogger('torch.profiler').setLevel(logging.ERROR)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------------------------------------
# ceiling
# ---------------------------------------------------------------------------------------------

def matmul_flops(device: str, n: int = 2048, dtype=torch.float32, reps: int = 5) -> float:
    """The machine's measured matmul rate: FLOP/s of ``torch.mm`` (2 n^3 FLOPs) on n/2, n and 2n square
    matrices, the best size's median of ``reps`` runs (after a warm-up run)."""
    best = 0.0
    for size in (n // 2, n, 2 * n):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        times = []
        for i in range(reps + 1):
            sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            if i:  # the first run is a warm-up
                times.append(time.perf_counter() - t0)
        best = max(best, 2 * size ** 3 / statistics.median(times))
    return best


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: ``l`` then ``r``)."""
    align = align or 'l' + 'r' * (len(header) - 1)
    sep = ['---:' if a == 'r' else ':---' for a in align]
    lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join(sep) + ' |']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def fmt_num(x: Optional[float]) -> str:
    if x is None:
        return 'n/a'
    if x >= 100:
        return f'{x:.0f}'
    if x >= 10:
        return f'{x:.1f}'
    return f'{x:.2f}'


def quiet_torch_logs() -> None:
    """Keep compile / profiler chatter out of the output (errors still show)."""
    import logging
    import warnings
    for name in ('torch._dynamo', 'torch._inductor', 'torch.profiler', 'torch.utils.cpp_extension'):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings('ignore', category=UserWarning, module='torch')
