"""Processes and devices: one process, or several under ``torchrun`` (gloo on CPU, nccl on GPU)."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from .errors import FinetuneError

__all__ = ['DistState', 'env_rank', 'setup_distributed', 'all_reduce_sum', 'all_agree', 'on_main']

T = TypeVar('T')


@dataclass
class DistState:
    """Where this process stands: its rank, the number of processes and its device."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def print(self, *args, **kwargs) -> None:
        """``print`` on rank 0 only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this process created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def env_rank() -> int:
    """This process's rank as ``torchrun`` sets it (0 when run alone or when unreadable)."""
    try:
        return int(os.environ.get('RANK', '0'))
    except ValueError:
        return 0


def _resolve_device(device_arg: Optional[str], local_rank: int) -> torch.device:
    device = torch.device(device_arg or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise FinetuneError(f'--device {device_arg}: CUDA is not available on this machine')
        if device.index is None:
            device = torch.device('cuda', local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def setup_distributed(device_arg: Optional[str]) -> DistState:
    """Read torchrun's environment, pick the device and join the process group when there are several."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = _resolve_device(device_arg, local_rank)
    state = DistState(rank=env_rank(), local_rank=local_rank, world_size=world_size, device=device)
    if world_size > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise FinetuneError('WORLD_SIZE > 1 but this PyTorch build has no torch.distributed')
        kwargs = {}
        if device.type == 'cuda' and 'device_id' in inspect.signature(dist.init_process_group).parameters:
            kwargs['device_id'] = device
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo', **kwargs)
        state.initialized_here = True
    return state


def _reduce_device(ds: DistState) -> torch.device:
    return ds.device if ds.device.type == 'cuda' else torch.device('cpu')


def all_reduce_sum(values: Sequence[float], ds: DistState) -> List[float]:
    """The sums of ``values`` over every process."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device(ds))
    if ds.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_agree(ok: bool, ds: DistState) -> bool:
    """True when every process says ``ok``, so that every process takes the same branch."""
    return all_reduce_sum([0.0 if ok else 1.0], ds)[0] == 0


def on_main(ds: DistState, step: Callable[[], T]) -> Optional[T]:
    """Run ``step`` on rank 0 only; if it raises, every process raises (no rank waits forever)."""
    result, error = None, None
    if ds.is_main:
        try:
            result = step()
        except Exception as e:  # re-raised below on rank 0, after the others know
            error = e
    if not all_agree(error is None, ds):
        if error is not None:
            raise error
        raise FinetuneError('rank 0 failed (its error is on its stderr)')
    return result
