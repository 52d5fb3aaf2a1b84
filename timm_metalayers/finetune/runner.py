"""A fine-tuning run in four named steps: prepare, restore, fit, finish."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, random_seed

from ..hub import HubLoadError, load_weights
from .checkpoint import (CHECKPOINT_JSON, STATE_FORMAT, atomic_write_bytes, atomic_write_json, find_run_state,
                         load_train_state, prune_checkpoints, read_run_state, remove_stray_temporaries, save_checkpoint)
from .cli import complete_args
from .data import DIGITS_CLASSES, Data, Loaders, folder_classes, load_data, make_loaders
from .distributed import DistState, on_main, setup_distributed
from .engine import Progress, TrainStep, evaluate, summary_line, train_one_epoch, write_csv
from .errors import FinetuneError, RunFailedError, first_line
from .export import export, remove_stray_exports
from .faults import fault_point
from .model import check_export_layout, create_model, data_config_for, freeze_backbone, set_train_mode
from .run_folder import RunFolder, check_writable

__all__ = ['run', 'Session', 'prepare', 'restore', 'fit', 'finish']

# settings whose change on --resume makes the result differ from an uninterrupted run
_RUN_SETTINGS = ('data_dir', 'img_size', 'batch_size', 'epochs', 'lr', 'weight_decay', 'momentum', 'layer_decay',
                 'warmup_epochs', 'warmup_lr', 'min_lr', 'smoothing', 'clip_grad', 'amp', 'amp_dtype', 'ema',
                 'ema_decay', 'seed', 'drop_rate', 'drop_path_rate', 'drop_block_rate', 'freeze_backbone', 'hflip',
                 'scale', 'aa', 'train_subset')


@dataclass
class Session:
    """Everything a run holds between its steps."""
    args: argparse.Namespace
    ds: DistState
    t_start: float
    folder: Optional[RunFolder] = None
    resume_state: Optional[Dict[str, Any]] = None
    data: Optional[Data] = None
    loaders: Optional[Loaders] = None
    model: Optional[nn.Module] = None
    step: Optional[TrainStep] = None
    record: Dict[str, Any] = field(default_factory=dict)   # what checkpoint.json holds besides the epoch
    owned_ids: List[str] = field(default_factory=list)     # runs whose checkpoint folders this run may remove
    start_epoch: int = 0
    progress: Progress = field(default_factory=lambda: Progress(False))

    @property
    def out(self) -> Path:
        return Path(self.args.output)

    @property
    def ema(self) -> Optional[nn.Module]:
        return self.step.ema

    def close(self) -> None:
        if self.folder is not None:
            self.folder.close()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train, validate, checkpoint and export as ``args`` says; return the results (on every rank)."""
    t_start = time.perf_counter()
    args = complete_args(args)
    ds = setup_distributed(args.device)
    session = Session(args, ds, t_start)
    try:
        prepare(session)
        restore(session)
        fit(session)
        return finish(session)
    finally:
        session.close()
        ds.close()


# ------------------------------------------------------------------------------------------------
# prepare: check everything, take the run folder, build data, model, optimizer
# ------------------------------------------------------------------------------------------------
def _read_resume_state(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    if args.resume is None:
        return None
    state = read_run_state(find_run_state(args.resume, args.output))
    where = Path(state['_path']).parent
    if state['model'] != args.model:
        raise FinetuneError(f"the checkpoint in {where} is from {state['model']}, not {args.model} "
                            f"(pass the same --model to resume)")
    if state['in_chans'] != args.in_chans:
        raise FinetuneError(f"the checkpoint has in_chans={state['in_chans']}, not {args.in_chans} "
                            f"(pass --in-chans {state['in_chans']} to resume it)")
    if state['args']['opt'] != args.opt:
        old = state['args']['opt']
        raise FinetuneError(f'the checkpoint in {where} was trained with --opt {old}, not --opt {args.opt}: resume '
                            f'with --opt {old} or start over with --overwrite')
    return state


def _check_destinations(args: argparse.Namespace) -> None:
    check_writable(Path(args.output), '--output')
    if args.log_csv:
        check_writable(Path(args.log_csv).parent, '--log-csv')
    if not args.no_export:
        check_writable(Path(args.export_dir), '--export-dir')


def _take_run_folder(s: Session) -> None:
    """Lock ``--output`` and clear what killed runs left there (rank 0; every rank learns the outcome)."""
    args = s.args
    here = s.resume_state is not None and Path(s.resume_state['_path']).parent.resolve() == s.out.resolve()

    def take() -> RunFolder:
        folder = RunFolder.open(args, resuming_here=here)
        if not args.no_export:
            remove_stray_exports(Path(args.export_dir))
        if args.log_csv:
            remove_stray_temporaries(Path(args.log_csv).parent, [Path(args.log_csv).name])
        return folder
    s.folder = on_main(s.ds, take)


def _classes(s: Session):
    args = s.args
    class_names, splits = (DIGITS_CLASSES, None) if args.data_dir is None else folder_classes(args.data_dir)
    n = len(class_names)
    if args.num_classes is not None and args.num_classes != n:
        raise FinetuneError(f'--num-classes {args.num_classes} disagrees with the data, which has {n} classes '
                            f'({", ".join(class_names[:5])}{", ..." if n > 5 else ""})')
    if s.resume_state is not None and s.resume_state['num_classes'] != n:
        raise FinetuneError(f"the checkpoint has {s.resume_state['num_classes']} classes but the data has {n}")
    return class_names, splits


def _amp_dtype(args: argparse.Namespace, device: torch.device) -> Optional[torch.dtype]:
    if not args.amp:
        return None
    name = args.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16')
    if device.type == 'cpu' and name == 'float16':
        raise FinetuneError('--amp-dtype float16 needs CUDA; on CPU use bfloat16')
    return getattr(torch, name)


def _training_step(s: Session, model: nn.Module) -> TrainStep:
    args, ds = s.args, s.ds
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr, min_lr=args.min_lr,
                                       step_on_epochs=False, updates_per_epoch=s.loaders.updates_per_epoch)
    amp_dtype = _amp_dtype(args, ds.device)
    ema = ModelEmaV3(model, decay=args.ema_decay, use_warmup=True) if args.ema else None
    trained = model
    if ds.distributed:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[ds.device.index] if ds.device.type == 'cuda'
                                                      else None)
    return TrainStep(trained, optimizer, scheduler, nn.CrossEntropyLoss(label_smoothing=args.smoothing), ema,
                     NativeScaler(device='cuda') if amp_dtype is torch.float16 else None, amp_dtype, args.clip_grad)


def _previous_run_id(out: Path) -> Optional[str]:
    try:
        run_id = json.loads((out / CHECKPOINT_JSON).read_text(encoding='utf-8')).get('run_id')
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def _start_record(s: Session) -> None:
    """The run's identity and settings; a new run writes them to checkpoint.json at once."""
    args, ds = s.args, s.ds
    run_id = (s.resume_state or {}).get('run_id') or uuid.uuid4().hex
    s.owned_ids = [run_id] + ([_previous_run_id(s.out)] if args.overwrite and _previous_run_id(s.out) else [])
    s.record = {'format': STATE_FORMAT, 'run_id': run_id, 'model': args.model, 'num_classes': len(s.data.class_names),
                'in_chans': args.in_chans, 'class_names': s.data.class_names, 'world_size': ds.world_size,
                'args': {k: v for k, v in vars(args).items() if k != 'rank_log_dir'},
                'epoch': (s.resume_state or {}).get('epoch')}
    if s.resume_state is None:
        fresh = dict(s.record, epoch=None, checkpoint=None, files=[], history=[], best=None)
        on_main(ds, lambda: atomic_write_json(s.out / CHECKPOINT_JSON, fresh))
    elif Path(s.resume_state['_path']).parent.resolve() == s.out.resolve():  # what a killed run left behind
        on_main(ds, lambda: prune_checkpoints(s.out, s.resume_state['checkpoint'], s.owned_ids))


def prepare(s: Session) -> None:
    """Check the arguments against the data, the checkpoint and the folders; take the run folder; build
    data, model, loaders, optimizer and schedule."""
    args, ds = s.args, s.ds
    s.resume_state = _read_resume_state(args)
    _check_destinations(args)
    check_export_layout(args)
    class_names, splits = _classes(s)
    _take_run_folder(s)
    random_seed(args.seed, 0)  # the same initial weights on every rank
    model = create_model(args, len(class_names))
    s.data = load_data(args, data_config_for(args, model), splits, class_names)
    trainable = freeze_backbone(model) if args.freeze_backbone else None
    s.model = model.to(ds.device)
    s.loaders = make_loaders(s.data, args, ds)
    s.step = _training_step(s, model)
    s.progress = Progress(ds.is_main and (args.progress if args.progress is not None else sys.stderr.isatty()))
    _start_record(s)
    n_params = sum(p.numel() for p in model.parameters())
    ds.print(f'{args.model}: {n_params / 1e6:.2f}M parameters'
             + (f' ({sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.3f}M trainable: '
                f'{", ".join(trainable)})' if trainable else '')
             + f'; data: {s.data.description}; input {tuple(s.data.data_config["input_size"])}; '
             f'{ds.world_size} process(es) on {ds.device.type}; {args.epochs} epochs, batch {s.loaders.batch_size}'
             + (f' x {ds.world_size}' if ds.distributed else '') + f', {args.opt} lr {args.lr:g}')


# ------------------------------------------------------------------------------------------------
# restore: weights, optimizer and position in the schedule from --resume
# ------------------------------------------------------------------------------------------------
def _changed_settings(state: Dict[str, Any], args: argparse.Namespace, world_size: int) -> List[str]:
    saved = state['args']
    changed = []
    for key in _RUN_SETTINGS:
        if key not in saved:
            continue
        old, new = saved[key], getattr(args, key)
        new = list(new) if isinstance(new, tuple) else new
        if old != new:
            changed.append(f'--{key.replace("_", "-")} {new} (was {old})')
    if state['world_size'] != world_size:
        changed.append(f'{world_size} process(es) (was {state["world_size"]}; the schedule continues in epochs)')
    return changed


def _load_into(module: nn.Module, path: Path) -> None:
    try:
        load_weights(module, path)
    except (HubLoadError, ValueError, OSError) as e:
        raise FinetuneError(f'cannot restore {path}: {first_line(e)}') from e


def restore(s: Session) -> None:
    """Continue from the resumed checkpoint: weights, EMA, optimizer and loss scaler; the schedule is put at
    the start of the next epoch (in epochs, so another number of processes keeps it)."""
    state = s.resume_state
    if state is None or state['checkpoint'] is None:
        return
    folder = Path(state['_path']).parent / state['checkpoint']
    _load_into(s.model, folder / 'model.safetensors')
    if s.ema is not None:
        if 'ema.safetensors' not in state['files']:
            raise FinetuneError(f'--ema: the checkpoint {folder} has no ema.safetensors (it was run without --ema)')
        _load_into(s.ema.module, folder / 'ema.safetensors')
    load_train_state(folder, s.step.optimizer, s.step.scaler)
    s.start_epoch = state['epoch'] + 1
    s.step.scheduler.step_update(num_updates=s.start_epoch * s.loaders.updates_per_epoch)
    s.ds.print(f'resuming {s.args.model} from {folder} ({s.start_epoch}/{s.args.epochs} epochs done)')
    changed = _changed_settings(state, s.args, s.ds.world_size)
    if changed:
        s.ds.print("note: resuming with other settings than the checkpoint's (" + ', '.join(changed) +
                   '); the result will differ from an uninterrupted run')


# ------------------------------------------------------------------------------------------------
# fit: epochs of training, validation and checkpoints
# ------------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch's randomness comes from (seed, epoch) and the rank, never from what ran before it,
    which is what makes a resumed run identical to an uninterrupted one."""
    return (seed * 1_000_003 + epoch * 1009) % (2 ** 31)


def _history(s: Session) -> List[Dict[str, Any]]:
    return list((s.resume_state or {}).get('history') or [])


def _last_saved(s: Session) -> str:
    epoch = s.record.get('epoch')
    return f'the checkpoint of epoch {epoch + 1} in {s.out}' if epoch is not None else 'no checkpoint yet'


def _validate(s: Session, epoch: int, metrics: Dict[str, Any]) -> Dict[str, Any]:
    args, step = s.args, s.step
    if not math.isfinite(metrics['train_loss']):
        raise RunFailedError(f"the training loss is {metrics['train_loss']} in epoch {epoch + 1}/{args.epochs}: the "
                             f"run diverged (lower --lr or set --clip-grad); nothing of this epoch was saved, the "
                             f"last good state is {_last_saved(s)}")
    lr = max(g['lr'] for g in step.optimizer.param_groups)  # where the schedule got to by the epoch's end
    val = evaluate(s.model, s.loaders.val, s.ds, step.amp_dtype, s.progress, f'val {epoch + 1}/{args.epochs}')
    row = {'epoch': epoch + 1, **metrics, 'val_loss': val['loss'], 'val_top1': val['top1'], 'val_top5': val['top5'],
           'lr': lr}
    if s.ema is not None:
        ev = evaluate(s.ema.module, s.loaders.val, s.ds, step.amp_dtype, s.progress, f'ema {epoch + 1}/{args.epochs}')
        row.update(ema_val_loss=ev['loss'], ema_val_top1=ev['top1'], ema_val_top5=ev['top5'])
    return row


def _save(s: Session, epoch: int, history: List[Dict[str, Any]], best: Dict[str, Any]) -> None:
    weights = {'model.safetensors': s.model, **({'ema.safetensors': s.ema.module} if s.ema is not None else {})}
    train_state = {'optimizer': s.step.optimizer.state_dict(), 'epoch': epoch,
                   'scaler': s.step.scaler.state_dict() if s.step.scaler is not None else None}
    record = dict(s.record, history=history, best=best,
                  global_step=(epoch + 1) * s.loaders.updates_per_epoch)

    def write() -> Dict[str, Any]:
        try:
            if s.args.log_csv:  # first: a run killed before its checkpoint.json is replaced redoes the epoch
                write_csv(Path(s.args.log_csv), history, atomic_write_bytes)
            saved = save_checkpoint(s.out, epoch, weights, train_state, record, s.owned_ids, note=s.ds.print)
        except OSError as e:
            raise RunFailedError(f'cannot write the checkpoint of epoch {epoch + 1} to {s.out}: {first_line(e)}; '
                                 f'{_last_saved(s)} is kept - free space, then continue with --resume') from e
        return saved
    saved = on_main(s.ds, write)
    s.record = dict(s.record, epoch=epoch) if saved is None else {k: v for k, v in saved.items() if k != 'history'}


def fit(s: Session) -> None:
    """Train from the first unfinished epoch to ``--epochs`` (or ``--stop-after`` epochs of this call)."""
    args, ds = s.args, s.ds
    history = _history(s)
    best = (s.resume_state or {}).get('best')
    end = args.epochs if args.stop_after is None else min(args.epochs, s.start_epoch + args.stop_after)
    for epoch in range(s.start_epoch, end):
        fault_point('epoch.start', epoch)
        random_seed(_epoch_seed(args.seed, epoch), ds.rank)
        s.loaders.train_sampler.set_epoch(epoch)
        set_train_mode(s.step.model, args.freeze_backbone)
        metrics = train_one_epoch(s.step, s.loaders.train, ds, epoch * s.loaders.updates_per_epoch, s.progress,
                                  f'train {epoch + 1}/{args.epochs}')
        row = _validate(s, epoch, metrics)
        history.append(row)
        score = row['ema_val_top1'] if s.ema is not None else row['val_top1']
        if best is None or score > best['val_top1']:
            best = {'epoch': epoch + 1, 'val_top1': score}
        ds.print(summary_line(row, args.epochs))
        _save(s, epoch, history, best)
    s.record.update(history=history, best=best)


# ------------------------------------------------------------------------------------------------
# finish: results, export, report
# ------------------------------------------------------------------------------------------------
def _results(s: Session) -> Dict[str, Any]:
    history, best = s.record['history'], s.record['best']
    result: Dict[str, Any] = {'model': s.args.model, 'history': history, 'best': best, 'output': str(s.out),
                              'finished': bool(history) and history[-1]['epoch'] >= s.args.epochs,
                              'class_names': s.data.class_names, 'rank': s.ds.rank, 'world_size': s.ds.world_size,
                              'train_size': len(s.data.train), 'val_images': len(s.data.val)}
    if history:
        prefix = 'ema_val' if s.ema is not None else 'val'
        result.update(val_top1=history[-1][f'{prefix}_top1'], val_top5=history[-1][f'{prefix}_top5'])
    final_model = s.ema.module if s.ema is not None else s.model
    result['weights_checksum'] = float(sum(p.detach().double().sum().item() for p in final_model.parameters()))
    return result


def _export(s: Session, result: Dict[str, Any]) -> Optional[str]:
    final_model = s.ema.module if s.ema is not None else s.model
    try:
        return str(export(s.args, final_model, s.data, result))
    except OSError as e:
        raise RunFailedError(f'cannot export to {s.args.export_dir}: {first_line(e)}; the checkpoints are kept - '
                             f'continue with the same command and --resume to export again') from e


def finish(s: Session) -> Dict[str, Any]:
    """Export a finished run (rank 0), report, and return the results on every rank."""
    args, ds = s.args, s.ds
    result = _results(s)
    if result['finished'] and not args.no_export:
        result['export_dir'] = on_main(ds, lambda: _export(s, result))
    elapsed = time.perf_counter() - s.t_start
    if not result['finished']:
        done = result['history'][-1]['epoch'] if result['history'] else 0
        ds.print(f'stopped after epoch {done}/{args.epochs} ({elapsed:.1f}s); continue with the same command and '
                 f'--resume')
    else:
        best = result['best']
        ds.print(f"validation top-1: {result['val_top1']:.2f}%, top-5: {result['val_top5']:.2f}% "
                 f"({result['val_images']} images{', EMA weights' if s.ema is not None else ''}; best "
                 f"{best['val_top1']:.2f}% at epoch {best['epoch']}) - {elapsed:.1f}s in all")
    if args.rank_log_dir:
        Path(args.rank_log_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.rank_log_dir) / f'rank{ds.rank}.json', result)
    result['wall_time_s'] = elapsed
    ds.barrier()
    return result
