"""timm_metalayers.finetune: folder data, digits, resume, export and bad input.

Training runs in-process (``finetune.run`` / ``finetune.main``) on a tiny folder dataset written here;
the command line runs as a subprocess (``torchrun`` and the fault injection: test_finetune_faults.py).
Nothing touches the network.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import timm
import timm_metalayers  # noqa: F401
from timm_metalayers import finetune

try:  # tests/ as a package or as a rootdir-relative folder
    from .finetune_helpers import (CLASSES, FAST, ROOT, assert_same_weights, checkpoint_dirs, load, metrics,
                                   one_thread, run, write_dataset)  # noqa: F401
except ImportError:
    from finetune_helpers import (CLASSES, FAST, ROOT, assert_same_weights, checkpoint_dirs, load, metrics,
                                  one_thread, run, write_dataset)  # noqa: F401


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('shapes') / 'data')


# ------------------------------------------------------------------------------------------------
# A folder dataset: trains, logs, checkpoints, exports; the export loads back through timm
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def folder_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    result = run('--data-dir', data_dir, '--output', out, '--epochs', 2, '--ema', '--drop-rate', 0.1,
                 '--drop-path-rate', 0.1, '--log-csv', out / 'log.csv', *FAST)
    return out, result


def test_folder_run_trains_logs_and_checkpoints(folder_run):
    out, result = folder_run
    assert result['finished'] and [r['epoch'] for r in result['history']] == [1, 2]
    assert result['class_names'] == CLASSES
    for row in result['history']:
        assert np.isfinite(row['train_loss']) and 0 <= row['val_top1'] <= 100
    assert result['val_images'] == 12
    lines = (out / 'log.csv').read_text().splitlines()
    assert lines[0].startswith('epoch,') and 'val_top1' in lines[0] and 'ema_val_top1' in lines[0]
    assert len(lines) == 3
    # exactly one checkpoint, complete, pointed at by checkpoint.json
    assert checkpoint_dirs(out) == ['checkpoint-epoch0001']
    state = json.loads((out / 'checkpoint.json').read_text())
    assert state['epoch'] == 1 and state['model'] == 'metalayers_resnet18' and state['class_names'] == CLASSES
    assert state['best']['val_top1'] == max(r['ema_val_top1'] for r in result['history'])
    folder = out / 'checkpoint-epoch0001'
    assert sorted(p.name for p in folder.iterdir()) == ['ema.safetensors', 'model.safetensors', 'train_state.pt']
    train_state = torch.load(folder / 'train_state.pt', weights_only=True)  # tensors and plain containers only
    assert {'optimizer', 'scaler', 'epoch'} <= set(train_state)
    assert not list(out.glob('.*.tmp'))


def test_export_loads_back_through_timm(folder_run, local_hub):
    out, result = folder_run
    hub = out / 'hub'
    assert Path(result['export_dir']) == hub
    assert sorted(p.name for p in hub.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    modes = {p.name: p.stat().st_mode & 0o777 for p in hub.iterdir()}
    assert len(set(modes.values())) == 1 and modes['model.safetensors'] & 0o044, modes  # the umask, not 0600
    config = json.loads((hub / 'config.json').read_text())
    assert config['architecture'] == 'metalayers_resnet18' and config['num_classes'] == 3
    assert config['label_names'] == CLASSES
    assert tuple(config['pretrained_cfg']['input_size']) == (3, 32, 32)
    assert 'tag' not in config['pretrained_cfg']  # trained from scratch: not the registered tv_in1k weights
    card = (hub / 'README.md').read_text()
    assert f"{result['val_top1']:.2f}%" in card and 'Validation top-1' in card

    # the export holds the EMA weights the last epoch was validated with
    reference = timm.create_model('metalayers_resnet18', num_classes=3).eval()
    reference.load_state_dict(load(out / 'checkpoint-epoch0001' / 'ema.safetensors'))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        from_dir = timm.create_model(f'local-dir:{hub}', pretrained=True).eval()
        # (num_classes in the overlay too, or timm drops the 3-class head as not matching ImageNet's 1000)
        from_file = timm.create_model('metalayers_resnet18', num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(
            file=str(hub / 'model.safetensors'), num_classes=3)).eval()
        local_hub.add_folder('me/shapes', hub)
        from_hub = timm.create_model('hf-hub:me/shapes', pretrained=True).eval()
        for model in (from_dir, from_file, from_hub):
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        from transformers import AutoModelForImageClassification
        from_transformers = AutoModelForImageClassification.from_pretrained(hub).eval()
        torch.testing.assert_close(from_transformers(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-6)
    assert from_hub.pretrained_cfg['label_names'] == CLASSES
    assert from_transformers.config.id2label == dict(enumerate(CLASSES))


# ------------------------------------------------------------------------------------------------
# Interrupted and resumed == uninterrupted
# ------------------------------------------------------------------------------------------------
def test_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    common = ['--data-dir', data_dir, '--epochs', 2, '--ema', '--seed', 3, '--drop-path-rate', 0.1, '--no-export',
              *FAST]
    full = run(*common, '--output', tmp_path / 'full')

    # 1) stopped after one epoch, then resumed
    part = run(*common, '--output', tmp_path / 'split', '--stop-after', 1)
    assert not part['finished'] and len(part['history']) == 1
    resumed = run(*common, '--output', tmp_path / 'split', '--resume')
    assert resumed['finished']

    # 2) killed while writing the epoch-2 checkpoint: the epoch-1 checkpoint survives whole
    real_save = torch.save
    calls = []

    def dying_save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt('simulated kill during checkpoint writing')
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(*common, '--output', tmp_path / 'killed')
    monkeypatch.setattr(torch, 'save', real_save)
    killed = tmp_path / 'killed'
    assert json.loads((killed / 'checkpoint.json').read_text())['epoch'] == 0
    assert checkpoint_dirs(killed) == ['checkpoint-epoch0000'] and not list(killed.glob('.*.tmp'))
    after_kill = run(*common, '--output', killed, '--resume')

    for other, out in ((resumed, tmp_path / 'split'), (after_kill, killed)):
        assert metrics(other['history']) == metrics(full['history'])
        for name in ('model.safetensors', 'ema.safetensors'):
            assert_same_weights(tmp_path / 'full' / 'checkpoint-epoch0001' / name, out / 'checkpoint-epoch0001' / name)


# ------------------------------------------------------------------------------------------------
# Pretrained weights from a local file, linear probe, layer decay, AMP
# ------------------------------------------------------------------------------------------------
def test_pretrained_file_with_frozen_backbone(data_dir, tmp_path):
    timm_model = timm.create_model('resnet18')  # timm's own naming, 1000 classes: goes through our filter
    pretrained = tmp_path / 'resnet18.safetensors'
    safetensors.torch.save_file(timm_model.state_dict(), str(pretrained))
    out = tmp_path / 'probe'
    result = run('--data-dir', data_dir, '--pretrained-file', pretrained, '--freeze-backbone', '--epochs', 1,
                 '--output', out, '--no-export', '--lr', 0.01, *FAST)
    assert result['finished']
    start = timm.create_model('metalayers_resnet18', num_classes=3, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(pretrained))).state_dict()
    trained = load(out / 'checkpoint-epoch0000' / 'model.safetensors')
    changed = sorted(k for k in start if not torch.equal(start[k], trained[k]))
    assert changed == ['head.fc.bias', 'head.fc.weight']  # BatchNorm statistics included: untouched

    # --initial-checkpoint: exact weights of this model (here: the probe's own checkpoint)
    again = tmp_path / 'again'
    run('--data-dir', data_dir, '--initial-checkpoint', out / 'checkpoint-epoch0000' / 'model.safetensors',
        '--freeze-backbone', '--epochs', 1, '--output', again, '--no-export', '--lr', 0.01, *FAST)
    retrained = load(again / 'checkpoint-epoch0000' / 'model.safetensors')
    assert all(torch.equal(retrained[k], trained[k]) for k in trained if not k.startswith('head.fc.'))
    assert not torch.equal(retrained['head.fc.weight'], trained['head.fc.weight'])


def test_layer_decay_and_amp(data_dir, tmp_path):
    out = tmp_path / 'ld'
    result = run('--data-dir', data_dir, '--layer-decay', 0.7, '--amp', '--epochs', 1, '--output', out,
                 '--no-export', '--opt', 'sgd', '--lr', 0.05, *FAST)
    assert result['finished'] and np.isfinite(result['history'][0]['train_loss'])
    groups = torch.load(out / 'checkpoint-epoch0000' / 'train_state.pt', weights_only=True)['optimizer']['param_groups']
    scales = sorted({round(g['lr_scale'], 6) for g in groups})
    assert len(scales) >= 5 and scales[-1] == 1.0 and scales[0] < 0.2  # stem ... head, from group_matcher


# ------------------------------------------------------------------------------------------------
# The embedded digits default, reduced
# ------------------------------------------------------------------------------------------------
def test_digits_default_learns(tmp_path):
    result = run('--output', tmp_path / 'digits', '--epochs', 2, '--warmup-epochs', 0.5, '--no-progress',
                 '--export-dir', tmp_path / 'digits-hub')
    assert result['class_names'] == [str(i) for i in range(10)]
    assert result['val_images'] == 360
    assert result['val_top1'] > 50, result['history']  # chance: 10%
    config = json.loads((tmp_path / 'digits-hub' / 'config.json').read_text())
    assert tuple(config['pretrained_cfg']['input_size']) == (1, 32, 32)
    assert config['label_names'] == [str(i) for i in range(10)]


# ------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, non-zero exit, no traceback
# ------------------------------------------------------------------------------------------------
def _fails(capsys, *argv, match: str):
    code = finetune.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'timm_metalayers.finetune', '--data-dir', str(tmp_path / 'nope')],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f'error: --data-dir {tmp_path / "nope"} does not exist']


def test_bad_data_folders(tmp_path, capsys):
    _fails(capsys, '--data-dir', tmp_path / 'missing', match='does not exist')
    (tmp_path / 'empty').mkdir()
    _fails(capsys, '--data-dir', tmp_path / 'empty', match='is empty')
    (tmp_path / 'noval' / 'train' / 'a').mkdir(parents=True)
    _fails(capsys, '--data-dir', tmp_path / 'noval', match='no val/ folder')
    (tmp_path / 'noclass' / 'train').mkdir(parents=True)
    (tmp_path / 'noclass' / 'val').mkdir()
    _fails(capsys, '--data-dir', tmp_path / 'noclass', match='has no class folders')
    bad = write_dataset(tmp_path / 'hole', n_train=1, n_val=1)
    (bad / 'train' / 'empty_class').mkdir()
    (bad / 'train' / 'empty_class' / 'notes.txt').write_text('not an image')
    _fails(capsys, '--data-dir', bad, match=f'class folder {bad / "train" / "empty_class"} has no images')
    _fails(capsys, '--data-dir', write_dataset(tmp_path / 'ok', 1, 1), '--num-classes', 5, *FAST,
           match='--num-classes 5 disagrees with the data, which has 3 classes')


def test_unknown_model(capsys):
    _fails(capsys, '--model', 'metalayers_resnet19', match="unknown model 'metalayers_resnet19'; did you mean")
    _fails(capsys, '--model', 'metalayers_resnet18.nope', match="unknown pretrained tag 'nope'")


def test_bad_checkpoints(folder_run, data_dir, tmp_path, capsys):
    out, _ = folder_run
    _fails(capsys, '--data-dir', data_dir, '--output', tmp_path / 'fresh', '--resume', *FAST,
           match='nothing to resume')
    _fails(capsys, '--data-dir', data_dir, '--resume', tmp_path / 'nowhere', *FAST, match='nothing to resume')
    # a checkpoint of another architecture, three ways
    _fails(capsys, '--data-dir', data_dir, '--model', 'metalayers_resnet34', '--output', out, '--resume', *FAST,
           match='is from metalayers_resnet18, not metalayers_resnet34')
    weights = out / 'checkpoint-epoch0001' / 'model.safetensors'
    _fails(capsys, '--data-dir', data_dir, '--model', 'metalayers_resnet50', '--initial-checkpoint', weights,
           '--output', tmp_path / 'x', *FAST, match='cannot load --initial-checkpoint')
    _fails(capsys, '--data-dir', data_dir, '--model', 'metalayers_resnet50', '--pretrained-file', weights,
           '--output', tmp_path / 'y', *FAST, match='cannot load')
