"""Run one of timm's scripts (``validate.py``, ``inference.py``, ``benchmark.py``, ``train.py``, ...) with the
``metalayers_*`` models registered::

    python -m timm_metalayers.run_timm validate.py --model metalayers_resnet50 --pretrained --data-dir imagenet/

The script runs as ``__main__`` with the arguments that follow it, exactly as ``python SCRIPT.py ...`` would run it
(its folder first on ``sys.path``), after ``import timm_metalayers``. Its exit status is the command's.
"""
import argparse
import os
import runpy
import sys
from typing import Optional, Sequence

__all__ = ['main']


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line on stderr, status 2
        self.exit(2, f'{self.prog}: error: {message}\n')


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog='python -m timm_metalayers.run_timm',
                description="Run a timm script (validate.py, inference.py, benchmark.py, train.py) with the "
                            "metalayers_* models registered.")
    p.add_argument('script', help="path of the script, e.g. timm's validate.py")
    p.add_argument('args', nargs=argparse.REMAINDER, help="the script's own arguments")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``argv[0]`` as ``__main__`` with ``argv[1:]`` as its arguments; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] in ('-h', '--help'):
        parser.parse_args(argv)  # prints the help and exits 0, or the usage error and exits 2
    script, script_args = argv[0], argv[1:]
    if not os.path.isfile(script):
        parser.error(f'argument script: {script!r} is not a file')
    import timm_metalayers  # noqa: F401  (registers the metalayers_* models with timm)

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        return _exit_status(e.code)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
    return 1


if __name__ == '__main__':
    sys.exit(main())
