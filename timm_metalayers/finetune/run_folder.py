"""The run folder (``--output``): one run at a time (a lock), no run started over by accident, and every
folder the run will write to checked before any work.

A folder that already holds a run (a ``checkpoint.json`` or ``checkpoint-epochNNNN/`` folders) is only
continued with ``--resume`` or started over with ``--overwrite``. The lock is an ``flock`` on
``<output>/.lock``: the operating system releases it when the holder exits, however it exits.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Optional

from .checkpoint import CHECKPOINT_JSON, checkpoint_folders, remove_stray_temporaries
from .errors import FinetuneError, first_line

__all__ = ['LOCK_NAME', 'RunFolder', 'check_writable']

LOCK_NAME = '.lock'


def check_writable(path: Path, option: str) -> None:
    """A one-line error now, not after training, when ``path`` (a folder to create or write in) cannot be
    written: the nearest existing ancestor must be a writable folder."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise FinetuneError(f'{option} {path}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FinetuneError(f'{option} {path}: {existing} is not writable')


def _holds_run(out: Path) -> Optional[str]:
    if (out / CHECKPOINT_JSON).is_file():
        return CHECKPOINT_JSON
    folders = checkpoint_folders(out)
    return folders[0].name if folders else None


class RunFolder:
    """``--output``, created, locked for this process and cleared of what killed runs left."""

    def __init__(self, path: Path):
        self.path = path
        self._lock_file = None

    @classmethod
    def open(cls, args: argparse.Namespace, resuming_here: bool) -> 'RunFolder':
        """Create and lock ``args.output``; refuse a folder that holds a run unless it is resumed or
        ``--overwrite`` is given; remove stray temporary files."""
        folder = cls(Path(args.output))
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FinetuneError(f'cannot create --output {folder.path}: {first_line(e)}') from e
        folder._lock()
        try:
            held = _holds_run(folder.path)
            if held and not resuming_here and not args.overwrite:
                raise FinetuneError(f'--output {folder.path} already holds a run ({held}); continue it with --resume '
                                    f'or start over with --overwrite')
            remove_stray_temporaries(folder.path, [CHECKPOINT_JSON])
        except BaseException:
            folder.close()
            raise
        return folder

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK_NAME
        handle = open(lock_path, 'a+', encoding='utf-8')
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or 'another process'
            handle.close()
            raise FinetuneError(f'--output {self.path} is in use by another fine-tuning run ({holder}); wait for it '
                                f'to end or choose another --output') from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on {socket.gethostname()}, since {time.strftime("%Y-%m-%d %H:%M:%S")}\n')
        handle.flush()
        self._lock_file = handle

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it could let two runs lock different files)."""
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.close()
            self._lock_file = None
