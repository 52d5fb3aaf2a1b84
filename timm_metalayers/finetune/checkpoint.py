"""Checkpoints: written whole or not at all, read back with every field checked, and removed only when
this run wrote them.

``<output>/checkpoint.json`` is the run's record (its id, arguments, epoch, history); it is written at the
start of a run and replaced, through a temporary file and ``os.replace``, after each epoch's
``checkpoint-epochNNNN/`` folder has been renamed into place whole. Every checkpoint folder carries the run
id in its ``model.safetensors`` metadata: a folder is only ever removed when that id is this run's (or the
run it ``--overwrite``s), and then only the files the run writes (a user file inside keeps its folder).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from .errors import FinetuneError, first_line
from .faults import fault_point

__all__ = ['CHECKPOINT_JSON', 'STATE_FORMAT', 'CHECKPOINT_FILES', 'make_temp_dir', 'follow_umask',
           'atomic_write_bytes', 'atomic_write_json', 'checkpoint_name', 'read_run_state', 'find_run_state',
           'save_checkpoint', 'checkpoint_run_id', 'checkpoint_folders', 'prune_checkpoints',
           'remove_stray_temporaries', 'load_train_state']

CHECKPOINT_JSON = 'checkpoint.json'
STATE_FORMAT = 'timm_metalayers.finetune/1'
CHECKPOINT_FILES = ('model.safetensors', 'ema.safetensors', 'train_state.pt')
_CHECKPOINT_RE = re.compile(r'checkpoint-epoch\d{4}')
_TEMP_DIR_RE = re.compile(r'\.checkpoint-epoch\d{4}\.[A-Za-z0-9_]+\.tmp')


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a file the permissions a plain ``open`` would (some writers, mkstemp among them, make 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new ``<prefix>XXXXXXXX.tmp`` folder in ``parent``, with the umask's permissions (not mkdtemp's 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix='.tmp'))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write_bytes(path: Path, data: bytes, fault: Optional[str] = None, epoch: Optional[int] = None) -> None:
    """Write ``data`` to ``.<name>.XXXXXXXX.tmp`` next to ``path``, fsync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        follow_umask(Path(tmp))
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            fault_point(fault, epoch)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, fault: Optional[str] = None, epoch: Optional[int] = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode('utf-8'), fault, epoch)


def remove_stray_temporaries(folder: Path, names: Iterable[str]) -> List[str]:
    """Remove what killed runs left: ``.<name>.XXXXXXXX.tmp`` files of ``names`` and temporary checkpoint
    folders. Call it only while holding the run folder's lock. Returns what was removed."""
    if not folder.is_dir():
        return []
    files = [re.compile(re.escape(f'.{name}.') + r'[A-Za-z0-9_]+\.tmp') for name in names]
    removed = []
    for entry in folder.iterdir():
        if entry.is_file() and any(p.fullmatch(entry.name) for p in files):
            entry.unlink()
        elif entry.is_dir() and _TEMP_DIR_RE.fullmatch(entry.name):
            shutil.rmtree(entry)
        else:
            continue
        removed.append(entry.name)
    return removed


def checkpoint_name(epoch: int) -> str:
    return f'checkpoint-epoch{epoch:04d}'


def checkpoint_folders(out: Path) -> List[Path]:
    """The ``checkpoint-epochNNNN`` folders in ``out`` (exactly those names: ``.bak`` copies are not)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and _CHECKPOINT_RE.fullmatch(p.name))


# ------------------------------------------------------------------------------------------------
# checkpoint.json: every field checked
# ------------------------------------------------------------------------------------------------
# field: (accepted types, description, required)
_FIELDS = {
    'format': (str, 'a string', True),
    'run_id': (str, 'a string', False),
    'model': (str, 'a string', True),
    'num_classes': (int, 'an integer', True),
    'in_chans': (int, 'an integer', True),
    'class_names': (list, 'a list of class names', True),
    'world_size': (int, 'an integer', True),
    'args': (dict, 'an object', True),
    'epoch': ((int, type(None)), 'an integer or null', True),
    'checkpoint': ((str, type(None)), 'a folder name or null', True),
    'files': (list, 'a list of file names', True),
    'history': (list, 'a list of per-epoch objects', True),
    'best': ((dict, type(None)), 'an object or null', True),
}


def _check_fields(state: Any, path: Path) -> None:
    if not isinstance(state, dict):
        raise FinetuneError(f'{path} is not a JSON object')
    if state.get('format') != STATE_FORMAT:
        raise FinetuneError(f'{path}: field "format" is {state.get("format")!r}, not {STATE_FORMAT!r} '
                            f'(not a checkpoint of timm_metalayers.finetune)')
    for name, (types, wanted, required) in _FIELDS.items():
        if name not in state:
            if required:
                raise FinetuneError(f'{path}: field "{name}" is missing')
            continue
        value = state[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise FinetuneError(f'{path}: field "{name}" must be {wanted}, got {json.dumps(value)[:60]}')
    if not all(isinstance(row, dict) and isinstance(row.get('epoch'), int) for row in state['history']):
        raise FinetuneError(f'{path}: field "history" must be a list of objects with an integer "epoch"')
    if not all(isinstance(f, str) and f in CHECKPOINT_FILES for f in state['files']):
        raise FinetuneError(f'{path}: field "files" lists files a checkpoint does not have: {state["files"]}')


def _check_consistency(state: Dict[str, Any], path: Path) -> None:
    epoch, name = state['epoch'], state['checkpoint']
    if (epoch is None) != (name is None) or epoch is not None and name != checkpoint_name(epoch):
        raise FinetuneError(f'{path}: field "checkpoint" ({name}) does not match field "epoch" ({epoch})')
    if len(state['history']) != (0 if epoch is None else epoch + 1):
        raise FinetuneError(f'{path}: field "history" has {len(state["history"])} epochs, field "epoch" says '
                            f'{0 if epoch is None else epoch + 1}')
    if not isinstance(state['args'].get('epochs'), int) or not isinstance(state['args'].get('opt'), str):
        raise FinetuneError(f'{path}: field "args" lacks an integer "epochs" or a string "opt"')
    if epoch is not None:
        folder = path.parent / name
        missing = [f for f in state['files'] if not (folder / f).is_file()]
        if missing or 'model.safetensors' not in state['files']:
            raise FinetuneError(f'{path} points at {folder}, which lacks {", ".join(missing) or "model.safetensors"}')


def read_run_state(path: Path) -> Dict[str, Any]:
    """The run record at ``path``, with every field checked (a one-line error names the first bad one)."""
    try:
        state = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise FinetuneError(f'cannot read {path}: {first_line(e)}') from e
    _check_fields(state, path)
    _check_consistency(state, path)
    state['_path'] = str(path)
    return state


def find_run_state(resume: str, output: str) -> Path:
    """The ``checkpoint.json`` that ``--resume [PATH]`` means."""
    target = Path(resume or output)
    path = target if target.name.endswith('.json') else target / CHECKPOINT_JSON
    if not path.is_file():
        where = f'--resume {resume}' if resume else f'--output {output}'
        raise FinetuneError(f'nothing to resume: {where} has no {CHECKPOINT_JSON}')
    return path


# ------------------------------------------------------------------------------------------------
# Writing a checkpoint
# ------------------------------------------------------------------------------------------------
def checkpoint_run_id(folder: Path) -> Optional[str]:
    """The run id a checkpoint folder was written by (None when unreadable or not ours)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception:  # missing, truncated or foreign: not ours to remove
        return None
    return meta.get('run_id') if meta.get('format') == STATE_FORMAT else None


def _retire(folder: Path, owned_ids: Iterable[str]) -> bool:
    """Remove a checkpoint folder written by one of ``owned_ids``: its files, then the folder if empty.
    Returns whether the folder is gone."""
    if checkpoint_run_id(folder) not in set(owned_ids):
        return False
    for name in CHECKPOINT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    with contextlib.suppress(OSError):  # a file the run did not write keeps the folder
        folder.rmdir()
    return not folder.exists()


def _free_name(final: Path, owned_ids: Iterable[str]) -> Optional[Path]:
    """Make ``final`` free for a new checkpoint; a folder this run may not remove is renamed aside
    (returned) instead."""
    if not final.exists() or _retire(final, owned_ids):
        return None
    n = 1
    while final.with_name(f'{final.name}.kept-{n}').exists():
        n += 1
    aside = final.with_name(f'{final.name}.kept-{n}')
    os.replace(final, aside)
    return aside


def _write_folder(tmp: Path, weights: Dict[str, nn.Module], train_state: Dict[str, Any],
                  metadata: Dict[str, str], epoch: int) -> None:
    import safetensors.torch

    for name, module in weights.items():
        state_dict = {k: v.detach().to('cpu').contiguous().clone() for k, v in module.state_dict().items()}
        safetensors.torch.save_file(state_dict, str(tmp / name), metadata=metadata)
    fault_point('checkpoint.weights-written', epoch)
    torch.save(train_state, str(tmp / 'train_state.pt'))
    for f in tmp.iterdir():
        with open(f, 'rb') as fh:
            os.fsync(fh.fileno())
    fault_point('checkpoint.state-written', epoch)


def save_checkpoint(out: Path, epoch: int, weights: Dict[str, nn.Module], train_state: Dict[str, Any],
                    run_state: Dict[str, Any], owned_ids: Iterable[str],
                    note: Callable[[str], None] = print) -> Dict[str, Any]:
    """Write ``checkpoint-epochNNNN/`` whole (temp folder + rename), then ``checkpoint.json`` pointing at it,
    then retire this run's older checkpoints. An interruption at any point leaves the previous complete
    checkpoint. ``weights`` maps file names (``model.safetensors``, ...) to modules. Returns the new record."""
    owned_ids = list(owned_ids)
    fault_point('checkpoint.start', epoch)
    name = checkpoint_name(epoch)
    final = out / name
    tmp = make_temp_dir(out, f'.{name}.')
    try:
        _write_folder(tmp, weights, train_state, {'format': STATE_FORMAT, 'model': run_state['model'],
                                                  'epoch': str(epoch), 'run_id': run_state['run_id']}, epoch)
        aside = _free_name(final, owned_ids)
        if aside is not None:
            note(f'note: {final} was not written by this run; kept it as {aside.name}')
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out)
    fault_point('checkpoint.renamed', epoch)
    state = dict(run_state, epoch=epoch, checkpoint=name, files=[*weights, 'train_state.pt'])
    atomic_write_json(out / CHECKPOINT_JSON, state, fault='checkpoint.json-written', epoch=epoch)
    fault_point('checkpoint.json-replaced', epoch)
    prune_checkpoints(out, name, owned_ids)
    fault_point('checkpoint.pruned', epoch)
    return state


def prune_checkpoints(out: Path, keep: Optional[str], owned_ids: Iterable[str]) -> None:
    """Retire every checkpoint folder of ``owned_ids`` but ``keep`` (also what a killed run left behind)."""
    for folder in checkpoint_folders(out):
        if folder.name != keep:
            _retire(folder, owned_ids)


# ------------------------------------------------------------------------------------------------
# Reading the training state back
# ------------------------------------------------------------------------------------------------
def _check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, where: str) -> None:
    groups = saved.get('param_groups') if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get('state'), dict):
        raise FinetuneError(f'{where}: field "optimizer" is not an optimizer state')
    mine = optimizer.param_groups
    if len(groups) != len(mine):
        raise FinetuneError(f'{where}: the optimizer has {len(groups)} parameter groups, this run {len(mine)} '
                            f'(--layer-decay or --freeze-backbone changed?)')
    for i, (theirs, ours) in enumerate(zip(groups, mine)):
        missing = sorted(set(ours) - set(theirs))
        if missing:
            raise FinetuneError(f'{where}: the optimizer state has no "{missing[0]}" setting (another --opt?)')
        if len(theirs['params']) != len(ours['params']):
            raise FinetuneError(f'{where}: optimizer parameter group {i} has {len(theirs["params"])} parameters, '
                                f'this run {len(ours["params"])} (--layer-decay or --freeze-backbone changed?)')


def load_train_state(folder: Path, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
    """Load the optimizer (and loss-scaler) state of a checkpoint folder, checked against ``optimizer``."""
    where = folder / 'train_state.pt'
    try:
        train_state = torch.load(str(where), map_location='cpu', weights_only=True)
    except Exception as e:
        raise FinetuneError(f'cannot read {where}: {first_line(e)}') from e
    if not isinstance(train_state, dict):
        raise FinetuneError(f'{where} does not hold a training state')
    _check_optimizer_state(train_state.get('optimizer'), optimizer, str(where))
    optimizer.load_state_dict(train_state['optimizer'])
    if scaler is not None and train_state.get('scaler'):
        scaler.load_state_dict(train_state['scaler'])
