"""timm_metalayers.export: the command line's errors, the checked export, regularisers in eval and training mode.

The default run exports a few small models; ``pytest -m export_all`` exports every registered model to ONNX and
torch.export at a small input (CI runs it: .ci/run). Nothing touches the network.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import onnx
import onnxruntime
import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import timm_metalayers  # noqa: F401  (registers the models)
from timm_metalayers.export import (ExportParityError, active_random_layers, export_formats, export_model,
                                    model_input_size)
from timm_metalayers.export import core as export_core
from timm_metalayers.export.cli import create_kwargs, main

ROOT = Path(__file__).resolve().parents[1]
SMALL = 'metalayers_mobilenetv3_small_050'
SIDE = 64  # the all-models group's input side (or the model's smallest, if larger)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Small models at 64 px run faster on one thread, and the machine is shared."""


def _files(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir())


def _run_cli(capsys, *argv) -> tuple:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------------------------
# Command line: every bad argument is one line on stderr and exit status 2, before any export
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def bad_checkpoint(tmp_path) -> Path:
    path = tmp_path / 'wrong.safetensors'
    safetensors.torch.save_file({'not_a_layer.weight': torch.zeros(2)}, str(path))
    return path


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permissions; /sys refuses new files even to root
        return Path('/sys')
    folder = tmp_path / 'read-only'
    folder.mkdir()
    folder.chmod(0o555)
    return folder


BAD_ARGUMENTS = [  # (argv with {tmp} for tmp_path, the message's start, a part of it naming the value)
    (['--model', 'metalayers_resnet19'], 'argument --model: unknown model', 'did you mean metalayers_resnet18'),
    (['--model', 'metalayers_resnet18.nope'], 'argument --model: Invalid pretrained tag', 'nope'),
    (['--format', 'tflite'], 'argument --format: invalid choice', "'tflite'"),
    (['--img-size', '0'], 'argument --img-size: expected an image size >= 8', "'0'"),
    (['--img-size', 'big'], 'argument --img-size: expected an image size >= 8', "'big'"),
    (['--batch', '0'], 'argument --batch: expected an integer >= 1', "'0'"),
    (['--model', 'metalayers_inception_v3', '--img-size', '64'],
     'argument --img-size: metalayers_inception_v3 does not take 64x64 images', 'its smallest input is 107'),
    (['--model', 'metalayers_mixer_s16_224', '--img-size', '60'],
     'argument --img-size: metalayers_mixer_s16_224 does not take 60x60 images', 'divisible by patch_size'),
    (['--checkpoint', '{tmp}/missing.safetensors'], 'argument --checkpoint: no such file or folder',
     'missing.safetensors'),
    (['--pretrained', '--checkpoint', '{tmp}'], 'argument --checkpoint: not allowed with argument --pretrained', ''),
    (['--output', '{tmp}/no-such-folder/m.onnx'], 'argument --output: folder', 'no-such-folder'),
    (['--output', '{tmp}'], 'argument --output:', 'is a folder'),
    (['--format', 'exported-program', '--output', '{tmp}/m.onnx'], 'argument --output: an ExportedProgram file name '
     'ends in .pt2', 'm.onnx'),
    (['--checkpoint', '{bad}'], 'argument --checkpoint:', 'not_a_layer.weight'),
]


@pytest.mark.parametrize('argv, start, naming', BAD_ARGUMENTS, ids=[' '.join(a[0]) for a in BAD_ARGUMENTS])
def test_bad_argument_is_one_line_and_status_2(argv, start, naming, tmp_path, bad_checkpoint, capsys):
    defaults = {'--model': SMALL, '--format': 'onnx', '--output': str(tmp_path / 'm.onnx')}
    argv = [a.format(tmp=tmp_path, bad=bad_checkpoint) for a in argv]
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    status, out, err = _run_cli(capsys, *argv)
    assert status == 2 and out == ''
    assert err.count('\n') == 1 and err.startswith(f'error: {start}'), err
    assert naming in err
    assert _files(tmp_path) == ['wrong.safetensors']  # nothing written


def test_missing_argument_and_unwritable_folder(tmp_path, capsys):
    status, _, err = _run_cli(capsys, '--model', SMALL, '--output', tmp_path / 'm.onnx')
    assert status == 2 and err == 'error: the following arguments are required: --format\n'
    folder = _unwritable_folder(tmp_path)
    status, _, err = _run_cli(capsys, '--model', SMALL, '--format', 'onnx', '--output', folder / 'm.onnx')
    assert status == 2 and err.count('\n') == 1
    assert err.startswith(f"error: argument --output: cannot write in folder '{folder}'")


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r'needs onnxruntime: pip install "timm-metalayers\[export\]"'):
        export_model(timm.create_model(SMALL).eval(), 'onnx', tmp_path / 'm.onnx')
    status, _, err = _run_cli(capsys, '--model', SMALL, '--format', 'onnx', '--output', tmp_path / 'm.onnx')
    assert status == 2 and err == 'error: argument --format: ONNX export needs onnxruntime: ' \
                                  'pip install "timm-metalayers[export]"\n'
    assert _files(tmp_path) == []


def test_module_runs_as_a_command_without_traceback():
    proc = subprocess.run([sys.executable, '-m', 'timm_metalayers.export', '--model', 'nope', '--format', 'onnx',
                           '--output', 'x.onnx'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.startswith("error: argument --model: unknown model 'nope'") and proc.stderr.count('\n') == 1


# ------------------------------------------------------------------------------------------------------------
# The command: weights from a checkpoint, the largest difference printed, whole files only
# ------------------------------------------------------------------------------------------------------------
def test_command_exports_a_checkpoint_and_prints_the_difference(tmp_path, capsys):
    torch.manual_seed(1)
    trained = timm.create_model(SMALL, num_classes=1000).eval()
    checkpoint = tmp_path / 'trained.safetensors'
    safetensors.torch.save_file(trained.state_dict(), str(checkpoint))
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'm.onnx').write_text('an older export')
    status, stdout, err = _run_cli(capsys, '--model', SMALL, '--checkpoint', checkpoint, '--format', 'onnx',
                                   '--output', out / 'm.onnx', '--img-size', 64, '--batch', 2, '--dynamic-batch')
    assert status == 0, err
    assert f'wrote {out / "m.onnx"}, {out / "m.onnx.data"}: {SMALL} (weights from {checkpoint}) as onnx, ' \
           f'any batch size' in stdout
    assert 'onnxruntime vs eager on inputs (2, 3, 64, 64), (3, 3, 64, 64): largest difference' in stdout
    assert _files(out) == ['m.onnx', 'm.onnx.data']  # replaced, no temporary folder left
    session = onnxruntime.InferenceSession(str(out / 'm.onnx'), providers=['CPUExecutionProvider'])
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]),
                                   trained(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('timm_native', [False, True], ids=['ours', 'timm-native'])
def test_a_fine_tuned_folder_exports_with_its_own_head(timm_native, tmp_path, capsys):
    """A save_for_hub folder of a model with other num_classes and in_chans (a fine-tuning export) exports as
    saved: its config.json gives num_classes and model_args; a folder in timm's layout (the twin's architecture) loads through the filter.
    Before, the model was built with the default 1000 classes and the head's shapes did not match."""
    from timm_metalayers.hub import save_for_hub
    torch.manual_seed(2)
    tuned = timm.create_model(SMALL, num_classes=5, in_chans=1).eval()
    folder = save_for_hub(tuned, tmp_path / 'tuned', label_names=list('abcde'), timm_native=timm_native)
    status, stdout, err = _run_cli(capsys, '--model', SMALL, '--checkpoint', folder, '--format', 'exported-program',
                                   '--output', tmp_path / 'm.pt2', '--img-size', 64)
    assert status == 0, err
    assert 'on inputs (1, 1, 64, 64)' in stdout  # in_chans from the folder's model_args
    program = torch.export.load(str(tmp_path / 'm.pt2'))
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), tuned(x), rtol=1e-4, atol=1e-5)


def test_a_folder_of_another_architecture_is_refused(tmp_path, capsys):
    from timm_metalayers.hub import save_for_hub
    folder = save_for_hub(timm.create_model('metalayers_mobilenetv3_small_075', num_classes=3), tmp_path / 'other')
    status, out, err = _run_cli(capsys, '--model', SMALL, '--checkpoint', folder, '--format', 'onnx',
                                '--output', tmp_path / 'm.onnx')
    assert status == 2 and out == '' and err.count('\n') == 1
    assert err.startswith("error: argument --checkpoint: ") and "'metalayers_mobilenetv3_small_075'" in err
    assert f"not '{SMALL}' (or its timm twin 'mobilenetv3_small_050')" in err
    assert not (tmp_path / 'm.onnx').exists()


def test_pretrained_weights_come_from_the_hub(local_hub, tmp_path, capsys):
    """--pretrained: timm's twin weights from the (local) Hub, mapped by the checkpoint filter."""
    twin = timm.create_model('mobilenetv3_small_050').eval()
    weights = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(twin.state_dict(), str(weights))
    local_hub.add_files('timm/mobilenetv3_small_050.lamb_in1k', {'model.safetensors': weights})
    status, stdout, err = _run_cli(capsys, '--model', SMALL, '--pretrained', '--format', 'exported-program',
                                   '--output', tmp_path / 'm.pt2', '--img-size', 64, '--dynamic-batch')
    assert status == 0, err
    assert f'{SMALL} (pretrained weights) as exported-program, any batch size' in stdout
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(tmp_path / 'm.pt2')).module()(x), twin(x))


def test_pretrained_weights_missing_is_one_line_and_status_1(local_hub, tmp_path, capsys):
    status, stdout, err = _run_cli(capsys, '--model', SMALL, '--pretrained', '--format', 'onnx',
                                   '--output', tmp_path / 'm.onnx')
    assert status == 1 and stdout == '' and err.count('\n') == 1
    assert err.startswith(f'error: cannot load the pretrained weights of {SMALL}')
    assert not (tmp_path / 'm.onnx').exists()


# ------------------------------------------------------------------------------------------------------------
# The library: one trace for ONNX and torch.export, parity, refusal of mismatches and of training mode
# ------------------------------------------------------------------------------------------------------------
def test_formats_share_one_trace_and_match_eager(tmp_path, monkeypatch):
    traces = []
    trace = export_core._trace
    monkeypatch.setattr(export_core, '_trace', lambda *a: traces.append(a) or trace(*a))
    model = timm.create_model('metalayers_vit_tiny_patch16_224', img_size=64, drop_rate=0.3,
                              drop_path_rate=0.3).eval()
    outputs = {'onnx': tmp_path / 'vit.onnx', 'exported-program': tmp_path / 'vit.pt2',
               'torchscript': tmp_path / 'vit.pt'}
    reports = export_formats(model, outputs, dynamic_batch=True)
    assert len(traces) == 1
    assert [r.format for r in reports] == list(outputs)
    for report in reports:
        assert report.input_shapes == ((1, 3, 64, 64), (2, 3, 64, 64))
        assert report.max_rel_diff <= 1e-4 and report.max_abs_diff <= report.max_rel_diff * 100
    assert reports[0].files == (tmp_path / 'vit.onnx', tmp_path / 'vit.onnx.data')
    assert _files(tmp_path) == ['vit.onnx', 'vit.onnx.data', 'vit.pt', 'vit.pt2']
    assert model_input_size(model) == (3, 64, 64)  # the fixed token grid, not pretrained_cfg's 224


def _random_ops_in_onnx(path: Path) -> List[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.op_type for n in graph.node if 'Random' in n.op_type or 'Bernoulli' in n.op_type or
            'Dropout' in n.op_type]


def test_regularisers_export_as_identity_in_eval(tmp_path):
    """DropBlock, StochasticDepth and dropout at high rates: the exported eval model is the model without them."""
    torch.manual_seed(0)
    regularised = timm.create_model('metalayers_resnet18', drop_rate=0.5, drop_path_rate=0.5,
                                    drop_block_rate=0.5).eval()
    plain = timm.create_model('metalayers_resnet18').eval()
    plain.load_state_dict(regularised.state_dict())
    assert len(active_random_layers(regularised.train())) > 10
    regularised.eval()
    outputs = {'onnx': tmp_path / 'r.onnx', 'exported-program': tmp_path / 'r.pt2'}
    export_formats(regularised, outputs, img_size=64, batch=2, dynamic_batch=True)
    assert _random_ops_in_onnx(outputs['onnx']) == []
    program = torch.export.load(str(outputs['exported-program']))
    assert not [n for n in program.graph.nodes if 'bernoulli' in str(n.target) or 'rand' in str(n.target)]
    x = torch.randn(5, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(outputs['onnx']), providers=['CPUExecutionProvider'])
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(program.module()(x), expected)
        torch.testing.assert_close(torch.from_numpy(session.run(None, {'x': x.numpy()})[0]), expected,
                                   rtol=1e-4, atol=1e-5)


def test_training_mode_with_dropblock_names_the_layer(tmp_path):
    model = timm.create_model('metalayers_resnet18', drop_block_rate=0.1, drop_path_rate=0.1).train()
    for fmt, name in (('onnx', 'm.onnx'), ('exported-program', 'm.pt2'), ('torchscript', 'm.pt')):
        with pytest.raises(ValueError, match=r"training mode: DropBlock at 'layer3\.0\.drop_block', DropBlock at "
                                             r"'layer3\.1\.drop_block', DropBlock at 'layer4\.0\.drop_block' and "
                                             r"\d+ more .*model\.eval\(\)"):
            export_model(model, fmt, tmp_path / name)
    model.eval()
    model.layer3[1].drop_block.train()  # one layer left in training mode
    with pytest.raises(ValueError, match=r"^cannot export a model in training mode: DropBlock at "
                                         r"'layer3\.1\.drop_block' would draw"):
        export_model(model, 'onnx', tmp_path / 'm.onnx')
    plain = timm.create_model(SMALL, drop_rate=0.0).train()
    with pytest.raises(ValueError, match=r"training mode \('\(the model\)' is; batch norm"):
        export_model(plain, 'onnx', tmp_path / 'm.onnx')
    assert _files(tmp_path) == []


class _DriftingModel(nn.Module):
    """Returns ``x`` times the number of calls so far: the trace freezes a count the eager model has passed."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.calls


@pytest.mark.parametrize('fmt, name', [('onnx', 'm.onnx'), ('exported-program', 'm.pt2')])
def test_a_mismatch_raises_and_keeps_the_old_file(fmt, name, tmp_path):
    (tmp_path / name).write_text('the previous export')
    with pytest.raises(ExportParityError, match=rf'{fmt} export of _DriftingModel: .* differs from the eager model '
                                                rf'by [\d.]+ \(relative [\d.]+ > 0\.0001\); .*{name} was not written'):
        export_model(_DriftingModel().eval(), fmt, tmp_path / name, img_size=8)
    assert _files(tmp_path) == [name] and (tmp_path / name).read_text() == 'the previous export'


def test_bad_library_arguments(tmp_path):
    model = timm.create_model(SMALL).eval()
    with pytest.raises(ValueError, match="unknown export format 'tflite'; expected one of onnx, exported-program"):
        export_model(model, 'tflite', tmp_path / 'm.tflite')
    with pytest.raises(ValueError, match='batch must be an integer >= 1, got 0'):
        export_model(model, 'onnx', tmp_path / 'm.onnx', batch=0)
    with pytest.raises(ValueError, match=r"ends in \.pt2 .* got '.*m\.ep'"):
        export_model(model, 'exported-program', tmp_path / 'm.ep')


# ------------------------------------------------------------------------------------------------------------
# Every registered model, to ONNX and torch.export from one trace (pytest -m export_all; CI runs it)
# ------------------------------------------------------------------------------------------------------------
def _small_side(name: str) -> int:
    cfg = timm.get_pretrained_cfg(name)
    return max(SIDE, *(cfg.min_input_size or (0, 0, 0))[1:])


@torch.no_grad()
def _checkable(model: nn.Module) -> nn.Module:
    """timm's random weights, made fit for a float32 comparison the way trained weights are.

    At timm's initialisation the residual branches of the deep inverted-residual nets amplify their input
    (the project conv's fan-out init against batch norm's unit running variance): metalayers_tf_efficientnetv2_m,
    _l and _xl reach logits of 1e4-1e9 where the eager model in float32 differs from itself in float64 by 50-90%,
    so no export can match it to 1e-4. The last batch norm of each such branch is scaled by 0.2 here (timm's
    ``zero_init_last`` idea, not zero, so the branch is still checked). timm zero-initialises the classifiers of
    the MLP mixers: those get small random values, so the logits are not all zero.
    """
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if getattr(module, 'has_skip', False):
            norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
            norms[-1].weight.mul_(0.2)
    for param in model.parameters():
        if param.dim() > 1 and not param.any():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


# Over 150M parameters (3-6 GB at their peak, an onnxruntime copy of the weights included): one xdist group, so
# one worker exports them one after the other and two never add up their memory.
LARGEST = ('metalayers_convnext_large', 'metalayers_convnext_xlarge', 'metalayers_mixer_l16_224',
           'metalayers_tf_efficientnetv2_xl', 'metalayers_vit_large_patch16_224')


@pytest.mark.export_all
@pytest.mark.parametrize('name', [pytest.param(name, marks=pytest.mark.xdist_group('export_largest'))
                                  if name in LARGEST else name for name in sorted(timm.list_models('metalayers_*'))])
def test_every_model_exports_with_parity(name, tmp_path):
    side = _small_side(name)
    torch.manual_seed(0)
    model = _checkable(timm.create_model(name, **create_kwargs(name, side)).eval())
    reports = export_formats(model, {'onnx': tmp_path / 'm.onnx', 'exported-program': tmp_path / 'm.pt2'},
                             img_size=side)
    for report in reports:
        assert report.largest_output > 0 and report.max_rel_diff <= 1e-4, report.summary()
