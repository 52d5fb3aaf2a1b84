"""Fault injection: a fine-tuning run killed (SIGKILL) or interrupted (SIGINT) at every point of checkpoint
writing and export, a second run into the same folder, a rerun without --resume, a full disk and a rank
killed under torchrun. After each, ``--resume`` ends with the weights of an uninterrupted run, and no file
the user put in the run folder is gone.

The killed runs are children forked from a server that has the package imported (``faults.fault_point``
sends the signal), so they start without importing anything again; the resumed runs run in-process.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from timm_metalayers import finetune
from timm_metalayers.finetune import checkpoint as checkpoint_module
from timm_metalayers.finetune import export as export_module
from timm_metalayers.finetune.faults import FAULT_ENV, FAULT_POINTS

try:  # tests/ as a package or as a rootdir-relative folder
    from .finetune_helpers import (FAST, ROOT, assert_same_weights, checkpoint_dirs, forked_run, free_port, metrics,
                                   one_thread, run, write_dataset)  # noqa: F401
except ImportError:
    from finetune_helpers import (FAST, ROOT, assert_same_weights, checkpoint_dirs, forked_run, free_port, metrics,
                                  one_thread, run, write_dataset)  # noqa: F401

pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='forked runs need os.fork')

EPOCHS = 2
USER_FILES = ('notes.txt', 'checkpoint-epoch0001.bak/model.safetensors', 'hub/USAGE.md')
WRITE_POINTS = [p for p in FAULT_POINTS if p.startswith(('checkpoint.', 'export.'))]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('shapes') / 'data')


def args_for(data_dir: Path, out: Path, *extra):
    return ['--data-dir', data_dir, '--output', out, '--epochs', EPOCHS, '--ema', '--seed', 3,
            '--log-csv', out / 'log.csv', *FAST, *extra]


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: the weights every interrupted run must end with."""
    out = tmp_path_factory.mktemp('reference') / 'run'
    assert run(*args_for(data_dir, out))['finished']
    return out


def add_user_files(out: Path) -> None:
    for name in USER_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f'the user wrote {name}')


def assert_like_reference(out: Path, reference: Path) -> None:
    """Same final weights (checkpoint, EMA, export) as the uninterrupted run; user files kept; nothing
    temporary left; one checkpoint."""
    for name in ('model.safetensors', 'ema.safetensors'):
        assert_same_weights(reference / 'checkpoint-epoch0001' / name, out / 'checkpoint-epoch0001' / name)
    assert_same_weights(reference / 'hub' / 'model.safetensors', out / 'hub' / 'model.safetensors')
    for name in USER_FILES:
        assert (out / name).read_text() == f'the user wrote {name}'
    assert checkpoint_dirs(out) == ['checkpoint-epoch0001', 'checkpoint-epoch0001.bak']
    assert not [p.name for p in [*out.rglob('*.tmp'), *out.parent.glob('.*.tmp')]]
    state = json.loads((out / 'checkpoint.json').read_text())
    assert state['epoch'] == EPOCHS - 1 and len(state['history']) == EPOCHS
    assert len((out / 'log.csv').read_text().splitlines()) == EPOCHS + 1


# ------------------------------------------------------------------------------------------------
# SIGKILL and SIGINT at every point of checkpoint writing and export
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('signal_name', ['SIGKILL', 'SIGINT'])
@pytest.mark.parametrize('point', WRITE_POINTS)
def test_killed_while_writing_then_resumed(point, signal_name, data_dir, reference, tmp_path):
    out = tmp_path / 'run'
    add_user_files(out)
    epoch = '' if point.startswith('export.') else f'@{EPOCHS - 1}'
    code = forked_run(*args_for(data_dir, out), fault=f'{point}{epoch}:{signal_name}')
    assert code == (-9 if signal_name == 'SIGKILL' else 130)
    if signal_name == 'SIGINT':  # an interrupted run cleans up after itself at once
        assert not list(out.glob('.*.tmp'))
    state = json.loads((out / 'checkpoint.json').read_text())  # always whole
    assert state['epoch'] in (EPOCHS - 2, EPOCHS - 1)
    assert run(*args_for(data_dir, out), '--resume')['finished']
    assert_like_reference(out, reference)


# ------------------------------------------------------------------------------------------------
# A second run into the same folder while the first holds it; reruns without --resume
# ------------------------------------------------------------------------------------------------
def _wait_until_stopped(pid: int) -> None:
    for _ in range(600):
        if Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] == 'T':
            return
        time.sleep(0.05)
    raise AssertionError(f'process {pid} did not stop')


def test_second_run_is_refused_while_the_first_holds_the_folder(data_dir, reference, tmp_path, capsys):
    out = tmp_path / 'run'
    add_user_files(out)
    first = forked_run(*args_for(data_dir, out), fault=f'checkpoint.renamed@{EPOCHS - 1}:SIGSTOP', wait=False)
    try:
        _wait_until_stopped(first.pid)
        for again in ([], ['--resume'], ['--overwrite']):
            capsys.readouterr()
            assert finetune.main([str(a) for a in args_for(data_dir, out, *again)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and 'is in use by another fine-tuning run' in err[0] and f'pid {first.pid}' in err[0]
    finally:
        first.kill()
        first.join()
    # the folder now holds a run: a plain rerun is refused, --resume continues it
    assert finetune.main([str(a) for a in args_for(data_dir, out)]) == 2
    assert 'already holds a run' in capsys.readouterr().err and (out / 'checkpoint-epoch0000').is_dir()
    run(*args_for(data_dir, out), '--resume')
    assert_like_reference(out, reference)


def test_overwrite_starts_over_and_keeps_user_files(data_dir, reference, tmp_path, capsys):
    out = tmp_path / 'run'
    shutil.copytree(reference, out)
    add_user_files(out)
    before = json.loads((out / 'checkpoint.json').read_text())['run_id']
    assert finetune.main([str(a) for a in args_for(data_dir, out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'error: --output {out} already holds a run (checkpoint.json); continue it with --resume or '
                   f'start over with --overwrite']
    result = run(*args_for(data_dir, out), '--overwrite')
    assert metrics(result['history']) == metrics(json.loads((reference / 'checkpoint.json').read_text())['history'])
    assert json.loads((out / 'checkpoint.json').read_text())['run_id'] != before
    assert_like_reference(out, reference)


def test_checkpoint_folder_of_another_run_is_kept_aside(data_dir, reference, tmp_path):
    """A checkpoint-epochNNNN folder this run did not write is never deleted, even with --overwrite."""
    out = tmp_path / 'run'
    add_user_files(out)
    shutil.copytree(reference / 'checkpoint-epoch0001', out / 'checkpoint-epoch0000')  # another run's files
    (out / 'checkpoint-epoch0000' / 'mine.txt').write_text('keep me')
    run(*args_for(data_dir, out), '--overwrite')
    assert (out / 'checkpoint-epoch0000.kept-1' / 'mine.txt').read_text() == 'keep me'
    assert (out / 'checkpoint-epoch0000.kept-1' / 'model.safetensors').is_file()


def test_stray_temporary_files_are_removed_at_the_next_start(data_dir, reference, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(reference, out)
    strays = [out / '.checkpoint.json.k1ll3d_x.tmp', out / '.log.csv.abc12345.tmp']
    for stray in strays:
        stray.write_text('{"half": ')
    (out / '.checkpoint-epoch0002.zz9_abcd.tmp').mkdir()
    (out / '.hub.export.q1w2e3r4.tmp').mkdir()
    keep = out / '.checkpoint.json.bak'
    keep.write_text('a user copy')
    run(*args_for(data_dir, out), '--resume')
    assert not [p.name for p in out.glob('.*.tmp')]
    assert keep.read_text() == 'a user copy'


# ------------------------------------------------------------------------------------------------
# A full disk
# ------------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_fails_cleanly_and_resumes(data_dir, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'run'
    add_user_files(out)
    real_save = torch.save
    epochs_saved = []

    def save_until_full(obj, *args, **kwargs):
        epochs_saved.append(obj['epoch'])
        if obj['epoch'] == EPOCHS - 1:
            _disk_full()
        return real_save(obj, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, 'save', save_until_full)
    assert finetune.main([str(a) for a in args_for(data_dir, out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'No space left on device' in err[0] and 'checkpoint of epoch 1' in err[0], err
    assert checkpoint_dirs(out) == ['checkpoint-epoch0000', 'checkpoint-epoch0001.bak']
    assert not list(out.glob('.*.tmp'))
    monkeypatch.setattr(checkpoint_module.torch, 'save', real_save)

    monkeypatch.setattr(export_module, 'save_for_hub', _disk_full)  # and then the export
    assert finetune.main([str(a) for a in args_for(data_dir, out, '--resume')]) == 1
    assert 'cannot export' in capsys.readouterr().err
    monkeypatch.undo()
    run(*args_for(data_dir, out), '--resume')
    assert_like_reference(out, reference)


# ------------------------------------------------------------------------------------------------
# torchrun: a rank killed; the run resumed on two processes, and on one
# ------------------------------------------------------------------------------------------------
def torchrun(data_dir: Path, out: Path, *extra, fault: str = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1')
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--nnodes=1',
           '--master_addr=127.0.0.1', f'--master_port={free_port()}', '-m', 'timm_metalayers.finetune',
           '--data-dir', str(data_dir), '--output', str(out), '--epochs', '3', *FAST, *map(str, extra)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def ddp_reference(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp')
    proc = torchrun(data_dir, root / 'run', '--rank-log-dir', root / 'ranks')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / 'run', [json.loads((root / 'ranks' / f'rank{i}.json').read_text()) for i in range(2)], proc


def test_torchrun_two_processes(ddp_reference):
    out, (r0, r1), proc = ddp_reference
    assert (r0['rank'], r1['rank'], r0['world_size']) == (0, 1, 2)
    assert r0['history'] and metrics(r0['history']) == metrics(r1['history'])  # reduced across ranks
    assert r0['weights_checksum'] == r1['weights_checksum']  # DDP kept the replicas equal
    # 24 images: 12 per rank, one full batch of 8 each (drop_last), reduced over both ranks
    assert r0['history'][0]['train_images'] == 16 and r0['val_images'] == 12
    # one checkpoint, one export, one printout
    assert checkpoint_dirs(out) == ['checkpoint-epoch0002']
    assert (out / 'hub' / 'model.safetensors').is_file()
    assert proc.stdout.count('epoch 1/3') == 1 and proc.stdout.count('exported to') == 1


def test_rank_killed_under_torchrun_then_resumed(data_dir, ddp_reference, tmp_path, capsys):
    reference_out = ddp_reference[0]
    out = tmp_path / 'run'
    killed = torchrun(data_dir, out, fault='epoch.start@1:SIGKILL:rank1')
    assert killed.returncode != 0 and json.loads((out / 'checkpoint.json').read_text())['epoch'] == 0
    one_process = tmp_path / 'one-process'
    shutil.copytree(out, one_process)

    resumed = torchrun(data_dir, out, '--resume')
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_weights(reference_out / 'checkpoint-epoch0002' / 'model.safetensors',
                        out / 'checkpoint-epoch0002' / 'model.safetensors')
    assert_same_weights(reference_out / 'hub' / 'model.safetensors', out / 'hub' / 'model.safetensors')

    # on one process the schedule continues in epochs: epoch 2 ends where a one-process run's epoch 2 ends
    alone = run('--data-dir', data_dir, '--output', tmp_path / 'alone', '--epochs', 3, '--stop-after', 2, *FAST)
    capsys.readouterr()
    moved = run('--data-dir', data_dir, '--output', one_process, '--epochs', 3, '--resume', '--stop-after', 1, *FAST)
    assert '1 process(es) (was 2' in capsys.readouterr().out
    assert moved['history'][1]['lr'] == pytest.approx(alone['history'][1]['lr'], rel=1e-6)
    assert moved['history'][1]['lr'] > 10 * 1e-6  # not at --min-lr one epoch early
