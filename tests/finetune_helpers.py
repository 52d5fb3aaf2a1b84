"""What the fine-tuning tests share: a tiny folder dataset of drawn shapes, in-process and forked runs,
and comparisons of saved weights. Nothing here touches the network."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from timm_metalayers import finetune
from timm_metalayers.finetune.faults import FAULT_ENV

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ['circle', 'cross', 'stripes']
# small and fast: ResNet-18 on 32x32 inputs, batch 8
FAST = ['--img-size', '32', '--batch-size', '8', '--workers', '0', '--warmup-epochs', '0.5', '--no-progress']


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One thread per test process: the CI's cores are shared (pytest -n 2), and forked children and the
    in-process runs they are compared with then compute alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def draw(kind: str, rng: np.random.Generator, size: int = 24) -> Image.Image:
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    if kind == 'circle':
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 4) ** 2] = (230, 40, 40)
    elif kind == 'cross':
        img[(abs(yy - cy) < 2) | (abs(xx - cx) < 2)] = (40, 230, 40)
    else:
        img[(yy // 3) % 2 == 0] = (40, 40, 230)
    return Image.fromarray(img)


def write_dataset(root: Path, n_train: int = 8, n_val: int = 4, classes=CLASSES, seed: int = 0,
                  subfolder: Dict[str, str] = None) -> Path:
    """``root/{train,val}/<class>/[<subfolder>/]<class>_<i>.png``; ``subfolder`` nests a class's images."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        for c in classes:
            folder = root / split / c / (subfolder or {}).get(c, '')
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(c, rng).save(folder / f'{c}_{i}.png')
    return root


def run(*argv) -> dict:
    return finetune.run(finetune.parse_args([str(a) for a in argv]))


def load(path: Path) -> dict:
    return safetensors.torch.load_file(str(path))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = load(a), load(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=f'{k} of {b} differs from {a}')


def checkpoint_dirs(out: Path):
    return sorted(p.name for p in out.iterdir() if p.name.startswith('checkpoint-epoch'))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def metrics(history):
    """A run's history without its timings."""
    return [{k: v for k, v in row.items() if k not in ('img_per_s', 'epoch_time_s')} for row in history]


def _child(argv: Sequence[str], fault: Optional[str]) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner may ignore SIGINT
    torch.set_num_threads(1)  # as the in-process runs it is compared with
    if fault:
        os.environ[FAULT_ENV] = fault
    os._exit(finetune.main(list(argv)))


def _fork_server():
    """Children forked from a server that imported the package and nothing else: they start at once, and
    safely (a test process that has run autograd's threads cannot fork)."""
    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload(['timm_metalayers.finetune'])
    return context


def forked_run(*argv, fault: Optional[str] = None, wait: bool = True):
    """``finetune.main(argv)`` in a child forked from a preloaded server (no start-up cost) with the
    fault hook set to ``fault``; returns the exit code (negative: the signal), or the process."""
    process = _fork_server().Process(target=_child, args=([str(a) for a in argv], fault))
    process.start()
    if not wait:
        return process
    process.join(300)
    return process.exitcode
