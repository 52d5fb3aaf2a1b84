"""The fine-tuning fixes of issue 13, one test each: bad arguments and destinations rejected before any
work, nested class folders, one class, ViT at other image sizes, a model's minimum input size, the pickle
policy of --pretrained-file, damaged checkpoint.json files, resuming with another optimizer, and a
diverging run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import timm
from timm_metalayers import finetune
from timm_metalayers.finetune.data import folder_classes
from timm_metalayers.hub import ALLOW_PICKLE_ENV

try:  # tests/ as a package or as a rootdir-relative folder
    from .finetune_helpers import FAST, checkpoint_dirs, load, one_thread, run, write_dataset  # noqa: F401
except ImportError:
    from finetune_helpers import FAST, checkpoint_dirs, load, one_thread, run, write_dataset  # noqa: F401


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('shapes') / 'data', n_train=4, n_val=2)


def fails(capsys, *argv, match: str, status: int = 2) -> str:
    """``main(argv)`` ends with ``status`` and exactly one ``error: ...`` line containing ``match``."""
    capsys.readouterr()
    assert finetune.main([str(a) for a in argv]) == status
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# Bad arguments and destinations: rejected before any work
# ------------------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    (['--lr', 'nan'], 'argument --lr: expected a finite number > 0'),
    (['--lr', '0'], 'argument --lr: expected a finite number > 0'),
    (['--opt', 'nope'], "argument --opt: unknown optimizer 'nope'"),
    (['--opt', 'adamww'], 'did you mean adamw'),
    (['--aa', 'bogus'], "argument --aa: unknown auto-augment policy 'bogus'"),
    (['--workers', '-1'], 'argument --workers: expected an integer >= 0'),
    (['--device', 'xyz'], "argument --device: unknown device 'xyz'"),
    (['--smoothing', '1.5'], 'argument --smoothing: expected a number in [0, 1)'),
    (['--smoothing', '-1'], 'argument --smoothing: expected a number in [0, 1)'),
    (['--hflip', '2'], 'argument --hflip: expected a number in [0, 1]'),
    (['--scale', '2', '1'], 'argument --scale: expected a number in (0, 1]'),
    (['--scale', '0.9', '0.2'], '--scale 0.9 0.2: MIN is above MAX'),
    (['--ema-decay', '2'], 'argument --ema-decay: expected a number in [0, 1)'),
    (['--weight-decay', '-5'], 'argument --weight-decay: expected a finite number >= 0'),
    (['--lr', '1e-3', '--min-lr', '1e-2'], '--min-lr 0.01 is above --lr 0.001'),
    (['--min-lr', '0.1'], '--min-lr 0.1 is above --lr 0.002'),  # against the digits' default --lr
    (['--epochs', '0'], 'argument --epochs: expected an integer >= 1'),
    (['--in-chans', '2'], 'argument --in-chans: invalid choice: 2'),
    (['--resume', '--overwrite'], 'argument --overwrite: not allowed with argument --resume'),
    (['--pretrained-file', 'a.safetensors', '--initial-checkpoint', 'b.safetensors'], 'not allowed with'),
    (['--model', 'metalayers_googlenet', '--timm-native'],
     "--timm-native: metalayers_googlenet has no timm twin (its twin is torchvision's googlenet"),
]


@pytest.mark.parametrize('argv, message', BAD_ARGUMENTS, ids=[' '.join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_argument_is_one_line_before_any_work(argv, message, tmp_path, capsys):
    fails(capsys, *argv, '--output', tmp_path / 'out', match=message)
    assert not (tmp_path / 'out').exists()


def test_unwritable_destinations_fail_at_start(data_dir, tmp_path, capsys):
    a_file = tmp_path / 'a-file'
    a_file.write_text('not a folder')
    common = ['--data-dir', data_dir, *FAST]
    fails(capsys, *common, '--output', a_file / 'run',
          match=f'--output {a_file / "run"}: {a_file} is a file, not a folder')
    fails(capsys, *common, '--output', tmp_path / 'r1', '--log-csv', a_file / 'log.csv',
          match=f'--log-csv {a_file}: {a_file} is a file, not a folder')
    fails(capsys, *common, '--output', tmp_path / 'r2', '--export-dir', a_file / 'hub',
          match=f'--export-dir {a_file / "hub"}: {a_file} is a file, not a folder')
    assert not (tmp_path / 'r1').exists() and not (tmp_path / 'r2').exists()


# ------------------------------------------------------------------------------------------------
# Data: nested class folders, one class
# ------------------------------------------------------------------------------------------------
def test_images_anywhere_under_a_class_folder_belong_to_it(tmp_path, capsys):
    root = write_dataset(tmp_path / 'nested', n_train=4, n_val=2, subfolder={'circle': 'a/b', 'cross': '2019'})
    (root / 'train' / 'stripes' / '.thumbs').mkdir()
    (root / 'train' / 'stripes' / '.thumbs' / 'hidden.png').write_bytes(b'not counted')
    class_names, splits = folder_classes(str(root))
    assert class_names == ['circle', 'cross', 'stripes']
    assert {c: len(files) for c, files in splits['train'].items()} == {'circle': 4, 'cross': 4, 'stripes': 4}
    capsys.readouterr()
    result = run('--data-dir', root, '--output', tmp_path / 'run', '--epochs', 1, '--no-export', *FAST)
    out = capsys.readouterr().out
    assert '(12 training / 6 validation images, 3 classes)' in out and 'top5' in out
    assert result['train_size'] == 12 and result['val_images'] == 6
    assert result['history'][0]['train_images'] == 8  # one full batch of 8 per epoch (drop_last)


def test_one_class_is_refused(tmp_path, capsys):
    root = write_dataset(tmp_path / 'one', n_train=2, n_val=1, classes=['circle'])
    fails(capsys, '--data-dir', root, '--output', tmp_path / 'run', *FAST,
          match=f'{root}/train has one class folder only (circle)')


# ------------------------------------------------------------------------------------------------
# Models at other image sizes
# ------------------------------------------------------------------------------------------------
def test_vit_fine_tunes_at_32px_from_224px_weights(data_dir, tmp_path):
    weights = tmp_path / 'vit224.safetensors'
    safetensors.torch.save_file(timm.create_model('vit_tiny_patch16_224').state_dict(), str(weights))
    out = tmp_path / 'vit'
    result = run('--data-dir', data_dir, '--model', 'metalayers_vit_tiny_patch16_224', '--pretrained-file', weights,
                 '--output', out, '--epochs', 1, '--no-export', *FAST)
    assert result['finished']
    trained = load(out / 'checkpoint-epoch0000' / 'model.safetensors')
    pos_embed = [v for k, v in trained.items() if 'pos_embed' in k or 'position' in k]
    assert pos_embed and pos_embed[0].shape[-2] == 1 + (32 // 16) ** 2  # class token + 2x2 patches, resampled


def test_model_too_small_for_the_image_size_names_its_minimum(data_dir, tmp_path, capsys):
    fails(capsys, '--data-dir', data_dir, '--model', 'metalayers_inception_v3', '--output', tmp_path / 'run', *FAST,
          match='metalayers_inception_v3 cannot take 32x32 images: its minimum input size is 75x75 '
                '(pass --img-size 75 or more)')


# ------------------------------------------------------------------------------------------------
# --pretrained-file: the package's pickle policy
# ------------------------------------------------------------------------------------------------
def test_pretrained_pickle_needs_the_opt_in(data_dir, tmp_path, capsys, monkeypatch):
    pickled = tmp_path / 'resnet18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), pickled)
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    common = ['--data-dir', data_dir, '--pretrained-file', pickled, '--epochs', 1, '--no-export', *FAST]
    fails(capsys, *common, '--output', tmp_path / 'refused', match=f'--pretrained-file: Refusing to load {pickled}')
    monkeypatch.setenv(ALLOW_PICKLE_ENV, '1')
    assert run(*common, '--output', tmp_path / 'allowed')['finished']


# ------------------------------------------------------------------------------------------------
# Resuming: damaged checkpoint.json, another optimizer
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def stopped_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('stopped') / 'run'
    run('--data-dir', data_dir, '--output', out, '--epochs', 2, '--stop-after', 1, '--no-export', *FAST)
    return out


DAMAGES = [
    (lambda s: s.pop('epoch'), 'field "epoch" is missing'),
    (lambda s: s.update(epoch='one'), 'field "epoch" must be an integer or null, got "one"'),
    (lambda s: s.update(epoch=True), 'field "epoch" must be an integer or null, got true'),
    (lambda s: s.update(history=5), 'field "history" must be a list of per-epoch objects, got 5'),
    (lambda s: s.update(history=[{}]), 'field "history" must be a list of objects with an integer "epoch"'),
    (lambda s: s.update(num_classes='3'), 'field "num_classes" must be an integer, got "3"'),
    (lambda s: s.update(checkpoint='checkpoint-epoch0007'), 'field "checkpoint" (checkpoint-epoch0007) does not '
                                                            'match field "epoch" (0)'),
    (lambda s: s.update(files=['model.safetensors', '../../etc/passwd']), 'field "files" lists files'),
    (lambda s: s['args'].pop('opt'), 'field "args" lacks an integer "epochs" or a string "opt"'),
    (lambda s: s.update(format='something else'), 'field "format" is \'something else\''),
    (lambda s: s.clear(), 'field "format" is None'),
]


@pytest.mark.parametrize('damage, message', DAMAGES, ids=[m.split(' must')[0] for _, m in DAMAGES])
def test_damaged_checkpoint_json_names_the_field(damage, message, stopped_run, data_dir, tmp_path, capsys):
    out = tmp_path / 'run'
    shutil.copytree(stopped_run, out)
    state = json.loads((out / 'checkpoint.json').read_text())
    damage(state)
    (out / 'checkpoint.json').write_text(json.dumps(state))
    fails(capsys, '--data-dir', data_dir, '--output', out, '--epochs', 2, '--resume', *FAST,
          match=f'{out / "checkpoint.json"}: {message}')


def test_unreadable_checkpoint_json(stopped_run, data_dir, tmp_path, capsys):
    out = tmp_path / 'run'
    shutil.copytree(stopped_run, out)
    (out / 'checkpoint.json').write_text('{"format": "timm_metalayers.finetune/1", "epo')
    fails(capsys, '--data-dir', data_dir, '--output', out, '--resume', *FAST,
          match=f'cannot read {out}/checkpoint.json')


def test_resume_with_another_optimizer_is_one_line(stopped_run, data_dir, capsys):
    common = ['--data-dir', data_dir, '--output', stopped_run, '--epochs', 2, '--resume', *FAST]
    fails(capsys, *common, '--opt', 'sgd', match=f'the checkpoint in {stopped_run} was trained with --opt adamw, not '
                                                 f'--opt sgd: resume with --opt adamw or start over with --overwrite')
    fails(capsys, *common, '--layer-decay', '0.7', match='parameter groups, this run')
    assert checkpoint_dirs(stopped_run) == ['checkpoint-epoch0000']


# ------------------------------------------------------------------------------------------------
# A diverging run
# ------------------------------------------------------------------------------------------------
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, capsys, monkeypatch):
    real_forward = torch.nn.CrossEntropyLoss.forward
    calls = []

    def diverging_after_one_epoch(self, logits, target):
        calls.append(1)
        loss = real_forward(self, logits, target)
        return loss * float('nan') if len(calls) > 1 else loss  # one step per epoch: epoch 2 diverges

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, 'forward', diverging_after_one_epoch)
    out = tmp_path / 'run'
    fails(capsys, '--data-dir', data_dir, '--output', out, '--epochs', 2, *FAST, status=1,
          match='the training loss is nan in epoch 2/2: the run diverged')
    assert json.loads((out / 'checkpoint.json').read_text())['epoch'] == 0
    assert checkpoint_dirs(out) == ['checkpoint-epoch0000'] and not (out / 'hub').exists()
    assert all(torch.isfinite(v).all() for v in load(out / 'checkpoint-epoch0000' / 'model.safetensors').values())


def test_timm_native_export_is_timms_own_model(data_dir, tmp_path):
    """--timm-native: the export names timm's resnet18 and holds the trained weights in timm's layout."""
    out = tmp_path / 'run'
    result = run('--data-dir', data_dir, '--output', out, '--epochs', 1, '--timm-native', *FAST)
    config = json.loads((out / 'hub' / 'config.json').read_text())
    assert config['architecture'] == 'resnet18' and config['label_names'] == result['class_names']
    ours = timm.create_model('metalayers_resnet18', num_classes=len(result['class_names'])).eval()
    ours.load_state_dict(load(out / checkpoint_dirs(out)[-1] / 'model.safetensors'))
    theirs = timm.create_model(f'local-dir:{out / "hub"}', pretrained=True).eval()
    assert type(theirs).__module__ == 'timm.models.resnet'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-6)
