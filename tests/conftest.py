"""Shared pytest fixtures. Add yours below; keep this file small."""
import pytest

from timm_metalayers._timm_tests import share_cores_among_xdist_workers

share_cores_among_xdist_workers()  # `pytest -n 2` on 2 cores: one torch thread per worker

try:  # tests/ as a package or as a rootdir-relative folder
    from .hub_server import local_hub  # noqa: F401
except ImportError:
    from hub_server import local_hub  # noqa: F401


@pytest.fixture(autouse=True)
def _quiet_torch_trace_log():
    """pytest attaches its log-capture handlers to torch's structured trace logger; torch then builds
    every trace payload (graphs, guards) for them, which makes torch.compile several times slower."""
    from torch._logging._internal import trace_log
    saved = list(trace_log.handlers)
    for handler in saved:
        if type(handler).__module__.startswith('_pytest'):
            trace_log.removeHandler(handler)
    yield
    for handler in saved:
        if handler not in trace_log.handlers:
            trace_log.addHandler(handler)


@pytest.fixture(scope='module')
def timm_checkpoint(tmp_path_factory):
    """``name -> (timm model with random weights, its safetensors file)``, each written once."""
    from twin_checkpoints import random_timm_checkpoint
    root = str(tmp_path_factory.mktemp('timm_checkpoints'))
    return lambda name: random_timm_checkpoint(name, root)


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a module's tests (the machine is shared; small convs are faster single-threaded)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
