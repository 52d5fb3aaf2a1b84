"""One epoch of training and one pass of validation, with metrics summed over every process."""
from __future__ import annotations

import contextlib
import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.utils import NativeScaler, accuracy, dispatch_clip_grad, unwrap_model

from .distributed import DistState, all_reduce_sum

__all__ = ['Progress', 'TrainStep', 'train_one_epoch', 'evaluate', 'write_csv', 'summary_line']


class Progress:
    """tqdm bars when enabled, the bare iterable otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, iterable, **kwargs):
        if not self.enabled:
            return iterable
        from tqdm.auto import tqdm
        return tqdm(iterable, leave=False, dynamic_ncols=True, mininterval=0.5, file=sys.stderr, **kwargs)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """How many of the batch have the target among the top-k logits (timm's ``accuracy``, as a count)."""
    return round(float(accuracy(logits, target, topk=(k,))[0]) * target.shape[0] / 100)


@dataclass
class TrainStep:
    """What one optimisation step needs: the model (DDP-wrapped or not), optimizer, schedule, loss and
    the optional EMA and float16 loss scaler (timm's ``NativeScaler``)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module
    ema: Optional[nn.Module]
    scaler: Optional[NativeScaler]
    amp_dtype: Optional[torch.dtype]
    clip_grad: Optional[float]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> Tuple[torch.Tensor, float]:
        """One step on a batch; returns its logits and loss. ``global_step``: the steps taken before."""
        with _autocast(x.device, self.amp_dtype):
            logits = self.model(x)
            loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler(loss, self.optimizer, clip_grad=self.clip_grad, parameters=self.model.parameters())
        else:
            loss.backward()
            if self.clip_grad:
                dispatch_clip_grad(self.model.parameters(), self.clip_grad)
            self.optimizer.step()
        self.scheduler.step_update(num_updates=global_step + 1)
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model), step=global_step + 1)
        return logits.detach(), loss.detach().float().item()


def train_one_epoch(step: TrainStep, loader, ds: DistState, global_step: int, progress: Progress,
                    desc: str) -> Dict[str, Any]:
    """Train over ``loader`` once; returns the epoch's loss, top-1, images and speed (over every process).
    A non-finite loss shows as a non-finite ``train_loss``."""
    loss_sum = correct = count = 0.0
    t0 = time.perf_counter()
    bar = progress.bar(loader, desc=desc, total=len(loader), unit='batch')
    for x, y in bar:
        x, y = x.to(ds.device, non_blocking=True), y.to(ds.device, non_blocking=True)
        logits, loss = step(x, y, global_step)
        global_step += 1
        loss_sum += loss * y.shape[0]
        correct += _correct(logits, y, 1)
        count += y.shape[0]
        if progress.enabled:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f'{loss_sum / count:.3f}', acc=f'{100 * correct / count:.1f}%',
                            img_s=f'{count * ds.world_size / elapsed:.0f}', refresh=False)
    elapsed = time.perf_counter() - t0
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], ds)
    return {'train_loss': loss_sum / max(count, 1), 'train_top1': 100 * correct / max(count, 1),
            'train_images': int(count), 'img_per_s': count / max(elapsed, 1e-9), 'epoch_time_s': elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader, ds: DistState, amp_dtype: Optional[torch.dtype], progress: Progress,
             desc: str) -> Dict[str, float]:
    """Loss, top-1 and top-5 (%) of ``model`` over ``loader``, every sample counted once across processes."""
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for x, y in progress.bar(loader, desc=desc, total=len(loader), unit='batch'):
        x, y = x.to(ds.device, non_blocking=True), y.to(ds.device, non_blocking=True)
        with _autocast(ds.device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction='sum').item()
        correct1 += _correct(logits, y, 1)
        correct5 += _correct(logits, y, 5)
        count += y.shape[0]
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], ds)
    return {'loss': loss_sum / max(count, 1), 'top1': 100 * correct1 / max(count, 1),
            'top5': 100 * correct5 / max(count, 1), 'images': int(count)}


def write_csv(path: Path, history: List[Dict[str, Any]], write_bytes) -> None:
    """One row per epoch of ``history``, written with ``write_bytes(path, data)``."""
    keys: List[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator='\n')
    w.writeheader()
    for row in history:
        w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
    write_bytes(path, buf.getvalue().encode('utf-8'))


def summary_line(row: Dict[str, Any], epochs: int) -> str:
    """The one line printed after each epoch."""
    line = (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_top1']:.2f}%  val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}% "
            f"top5 {row['val_top5']:.2f}%")
    if 'ema_val_top1' in row:
        line += f"  ema top1 {row['ema_val_top1']:.2f}%"
    line += f"  lr {row['lr']:.2e}  {row['img_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s"
    return line
