"""``python -m timm_metalayers.run_timm SCRIPT.py ARGS...`` runs a timm-style script as ``__main__`` with the
``metalayers_*`` models registered, its arguments and its exit status."""
import subprocess
import sys
import textwrap

import pytest

from timm_metalayers import run_timm

# what timm's validate.py / inference.py / benchmark.py do with --model: argparse, then timm.create_model
SCRIPT = textwrap.dedent('''
    import argparse, sys
    import timm, torch
    import helper_next_to_script
    parser = argparse.ArgumentParser()
    parser.add_argument('--model', required=True)
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--exit', default=None)
    args = parser.parse_args()
    model = timm.create_model(args.model, num_classes=args.num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    print(__name__, sys.argv[0].endswith('script.py'), type(model).__module__, tuple(out.shape),
          helper_next_to_script.VALUE)
    if args.exit is not None:
        sys.exit(int(args.exit) if args.exit.isdigit() else args.exit)
''')


@pytest.fixture
def script(tmp_path):
    path = tmp_path / 'script.py'
    path.write_text(SCRIPT)
    (tmp_path / 'helper_next_to_script.py').write_text('VALUE = "helper"\n')
    return path


def test_runs_the_script_as_main_with_the_models_registered(script, tmp_path):
    cmd = [sys.executable, '-m', 'timm_metalayers.run_timm', str(script), '--model', 'metalayers_resnet18',
           '--num-classes', '4']
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['__main__', 'True', 'timm_metalayers.models.resnet', '(1,', '4)', 'helper']
    # the same script without the launcher does not know the model: registration is what run_timm adds
    plain = subprocess.run([sys.executable, str(script), '--model', 'metalayers_resnet18'], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
    assert plain.returncode != 0 and 'Unknown model (metalayers_resnet18)' in plain.stderr


@pytest.mark.parametrize('exit_arg, status, stderr', [('3', 3, ''), ('bye', 1, 'bye\n')])
def test_exit_status_is_the_scripts(script, capsys, exit_arg, status, stderr):
    assert run_timm.main([str(script), '--model', 'metalayers_resnet18', '--exit', exit_arg]) == status
    assert capsys.readouterr().err == stderr


def test_script_argument_errors_exit_like_python(script, capsys):
    """The script's own argparse error is its exit status 2, as under ``python SCRIPT.py``."""
    assert run_timm.main([str(script)]) == 2
    assert 'the following arguments are required: --model' in capsys.readouterr().err


def test_sys_argv_and_path_are_restored(script):
    argv, path = list(sys.argv), list(sys.path)
    assert run_timm.main([str(script), '--model', 'metalayers_resnet18']) == 0
    assert sys.argv == argv and sys.path == path


@pytest.mark.parametrize('argv, message', [([], 'the following arguments are required: script'),
                                           (['missing.py'], "argument script: 'missing.py' is not a file")])
def test_bad_launcher_arguments_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_timm.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
