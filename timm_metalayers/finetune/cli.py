"""The command line: options, their validation (argparse ``type=`` functions and ``choices=``) and ``main``.

Every bad value is rejected while parsing, before any work, with one ``error: ...`` line on stderr and
exit status 2.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from .distributed import env_rank
from .errors import FinetuneError

__all__ = ['DEFAULT_MODEL', 'build_parser', 'parse_args', 'main', 'complete_args', 'command_line_echo']

DEFAULT_MODEL = 'metalayers_resnet18'

# Defaults that depend on the data: (embedded digits, a folder dataset).
MODE_DEFAULTS = {
    'epochs': (10, 10),
    'batch_size': (64, 32),
    'lr': (2e-3, 5e-4),
    'img_size': (32, None),   # None: the model's pretrained_cfg input size
    'workers': (0, min(4, os.cpu_count() or 1)),
    'in_chans': (1, 3),
}


class FinetuneArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ``error: ...`` line (rank 0 only) and exit status 2, and
    whose result has every data-dependent default filled in and the options checked against each other."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        if env_rank() == 0:
            print(f'error: {message}', file=sys.stderr, flush=True)
        self.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        try:
            return complete_args(parsed), extras
        except FinetuneError as e:
            self.error(str(e))


# ------------------------------------------------------------------------------------------------
# Value types: each turns the text into a value or raises ArgumentTypeError with the reason
# ------------------------------------------------------------------------------------------------
def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {wanted}, got {text!r}') from None
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f'expected {wanted}, got {text!r}')
        return value
    parse.__name__ = wanted  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, 'an integer >= 1')
non_negative_int = _number(int, lambda v: v >= 0, 'an integer >= 0')
positive_float = _number(float, lambda v: v > 0, 'a finite number > 0')
non_negative_float = _number(float, lambda v: v >= 0, 'a finite number >= 0')
probability = _number(float, lambda v: 0 <= v <= 1, 'a number in [0, 1]')
rate = _number(float, lambda v: 0 <= v < 1, 'a number in [0, 1)')
area_fraction = _number(float, lambda v: 0 < v <= 1, 'a number in (0, 1]')
image_size = _number(int, lambda v: v >= 8, 'an image size >= 8')


def optimizer_name(text: str) -> str:
    """A name timm's ``create_optimizer_v2`` knows (``lookahead_`` prefix allowed)."""
    from timm.optim import list_optimizers

    known = list_optimizers()
    name = text.lower()
    if name.removeprefix('lookahead_') in known:
        return name
    close = difflib.get_close_matches(name, known, n=3)
    raise argparse.ArgumentTypeError(f'unknown optimizer {text!r}' + (f'; did you mean {", ".join(close)}?' if close
                                                                     else " (see timm.optim.list_optimizers())"))


def auto_augment_policy(text: str) -> str:
    """A policy timm's ``create_transform`` accepts ('rand-m9-mstd0.5', 'augmix', 'original', ...)."""
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=text)
    except Exception as e:  # timm asserts on unknown policies and raises on bad parameters
        raise argparse.ArgumentTypeError(f'unknown auto-augment policy {text!r} ({e})') from None
    return text


def device_name(text: str) -> str:
    """A device torch understands ('cpu', 'cuda', 'cuda:1', ...)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (expected 'cpu', 'cuda' or 'cuda:N')") from None
    return text


# ------------------------------------------------------------------------------------------------
# The parser
# ------------------------------------------------------------------------------------------------
def _data_options(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group('data')
    d.add_argument('--data-dir', default=None,
                   help='folder with train/ and val/ class sub-folders; images anywhere under a class folder '
                        'belong to it (default: the embedded digits)')
    d.add_argument('--img-size', type=image_size, default=None,
                   help="input size (default: 32 for digits, else the model's pretrained_cfg input size)")
    d.add_argument('--in-chans', type=int, choices=(1, 3), default=None,
                   help='input channels (default: 1 for digits, 3 for folders)')
    d.add_argument('--num-classes', type=positive_int, default=None,
                   help='number of classes (default: from the data; an error if it disagrees with the data)')
    d.add_argument('--hflip', type=probability, default=0.5, help='horizontal flip probability (folder data)')
    d.add_argument('--scale', type=area_fraction, nargs=2, default=(0.08, 1.0), metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range (folder data)')
    d.add_argument('--aa', type=auto_augment_policy, default=None,
                   help="timm auto-augment policy, e.g. 'rand-m9-mstd0.5' (folder data)")
    d.add_argument('--workers', type=non_negative_int, default=None, help='data loader worker processes per rank')
    d.add_argument('--train-subset', type=positive_int, default=None, help='use only N training images (quick checks)')


def _model_options(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group('model')
    m.add_argument('--model', default=DEFAULT_MODEL, help='timm model name, e.g. metalayers_resnet50.a1_in1k')
    start = m.add_mutually_exclusive_group()
    m.add_argument('--pretrained', action='store_true',
                   help="start from the model's timm Hub weights (through this package's checkpoint filters)")
    start.add_argument('--pretrained-file', default=None,
                       help='start from a local pretrained file (.safetensors; a pickle .pth/.bin only with '
                            'TIMM_METALAYERS_ALLOW_PICKLE=1); the classifier is replaced to fit the classes')
    start.add_argument('--initial-checkpoint', default=None,
                       help='load these exact weights (a .safetensors file or a save_for_hub folder) before training')
    m.add_argument('--drop-rate', type=rate, default=0.0, help='dropout before the classifier')
    m.add_argument('--drop-path-rate', type=rate, default=0.0, help='stochastic depth rate (linear_scheduler)')
    m.add_argument('--drop-block-rate', type=rate, default=0.0, help='DropBlock rate in the later stages')
    m.add_argument('--freeze-backbone', action='store_true',
                   help='linear probe: train only the classifier; the backbone runs in eval mode')


def _optimization_options(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group('optimization')
    o.add_argument('--epochs', type=positive_int, default=None, help='epochs (default: 10)')
    o.add_argument('--batch-size', type=positive_int, default=None, help='batch size per process (default: 64 / 32)')
    o.add_argument('--opt', type=optimizer_name, default='adamw',
                   help="timm optimizer name ('adamw', 'sgd', 'lamb', ...)")
    o.add_argument('--lr', type=positive_float, default=None,
                   help='peak learning rate (default: 2e-3 digits, 5e-4 folders)')
    o.add_argument('--weight-decay', type=non_negative_float, default=0.05)
    o.add_argument('--momentum', type=probability, default=0.9, help='momentum (SGD-like optimizers)')
    o.add_argument('--layer-decay', type=area_fraction, default=None,
                   help="layer-wise lr decay in (0, 1] (timm's create_optimizer_v2 with the model's group_matcher)")
    o.add_argument('--warmup-epochs', type=non_negative_float, default=1.0,
                   help='linear warmup before the cosine decay')
    o.add_argument('--warmup-lr', type=non_negative_float, default=1e-5)
    o.add_argument('--min-lr', type=non_negative_float, default=1e-6, help='the schedule ends here (at most --lr)')
    o.add_argument('--smoothing', type=rate, default=0.1, help='label smoothing, in [0, 1)')
    o.add_argument('--clip-grad', type=positive_float, default=None, help='clip the gradient norm to this value')
    o.add_argument('--amp', action='store_true',
                   help='mixed precision: bfloat16 autocast on CPU, float16 (with a GradScaler) on CUDA')
    o.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default=None,
                   help='autocast dtype (default: bfloat16 on CPU, float16 on CUDA)')
    o.add_argument('--ema', action='store_true', help="keep an EMA of the weights (timm's ModelEmaV3); it is exported")
    o.add_argument('--ema-decay', type=rate, default=0.998, help='EMA decay in [0, 1) (reached after a warmup)')
    o.add_argument('--seed', type=int, default=0)


def _run_options(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group('run')
    r.add_argument('--output', default=None, help='run folder (default: runs/<model>-<data>)')
    again = r.add_mutually_exclusive_group()
    again.add_argument('--resume', nargs='?', const='', default=None, metavar='PATH',
                       help='continue the run in --output (or in PATH: a run folder or its checkpoint.json)')
    again.add_argument('--overwrite', action='store_true',
                       help='start over in an --output that already holds a run (its checkpoints are replaced; '
                            'files the run did not write are kept)')
    r.add_argument('--stop-after', type=positive_int, default=None, metavar='N',
                   help='stop after N epochs of this invocation (the schedule still spans --epochs); '
                        'continue later with --resume')
    r.add_argument('--log-csv', default=None, metavar='PATH', help='write per-epoch metrics to this CSV file')
    r.add_argument('--export-dir', default=None, help='save_for_hub folder (default: <output>/hub)')
    r.add_argument('--no-export', action='store_true', help='skip the save_for_hub export at the end')
    r.add_argument('--timm-native', action='store_true',
                   help="export in timm's own architecture and key layout (models that are twins of a timm "
                        'architecture), loadable by plain timm and transformers without timm_metalayers')
    r.add_argument('--repo-id', default=None, help='Hub repo the export is meant for (used in the printed line)')
    r.add_argument('--device', type=device_name, default=None,
                   help="'cpu', 'cuda', 'cuda:1' (default: cuda if available)")
    r.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='tqdm progress bars (default: when stderr is a terminal)')
    r.add_argument('--rank-log-dir', default=None, help=argparse.SUPPRESS)  # tests: every rank writes its metrics


def build_parser() -> argparse.ArgumentParser:
    """The fine-tuning command line; its ``parse_args`` returns complete, checked arguments."""
    p = FinetuneArgumentParser(
        prog='python -m timm_metalayers.finetune',
        description='Fine-tune a metalayers_* timm model. With no arguments: metalayers_resnet18 on the digits '
                    'images inside scikit-learn (no download), to >= 97%% validation top-1 in a few minutes on CPU.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_data_options, _model_options, _optimization_options, _run_options):
        add(p)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default: ``sys.argv[1:]``); a bad value exits with status 2 and one line on stderr."""
    return build_parser().parse_args(argv)


def complete_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with the data-dependent defaults filled in, checked against each other.
    Idempotent, so ``run`` accepts both parsed and completed arguments."""
    args = argparse.Namespace(**vars(args))
    mode = 0 if args.data_dir is None else 1
    for key, values in MODE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[mode])
    if args.output is None:
        data = 'digits' if args.data_dir is None else Path(args.data_dir).resolve().name or 'data'
        args.output = os.path.join('runs', f'{args.model.split(".")[0]}-{data}')
    if args.export_dir is None:
        args.export_dir = os.path.join(args.output, 'hub')
    if args.min_lr > args.lr:
        raise FinetuneError(f'--min-lr {args.min_lr:g} is above --lr {args.lr:g}: the schedule would rise')
    if args.scale[0] > args.scale[1]:
        raise FinetuneError(f'--scale {args.scale[0]:g} {args.scale[1]:g}: MIN is above MAX')
    return args


def command_line_echo(args: argparse.Namespace) -> List[str]:
    """The options of this run that differ from their defaults (for the model card)."""
    parser = build_parser()
    defaults = vars(parser.parse_args(['--data-dir', args.data_dir] if args.data_dir else []))
    skipped = {'help', 'rank_log_dir', 'resume', 'overwrite', 'stop_after', 'progress'}
    if args.export_dir == os.path.join(args.output, 'hub'):
        skipped.add('export_dir')
    words: List[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in skipped or not action.option_strings or value is None or value == defaults.get(action.dest):
            continue
        flag = action.option_strings[-1]
        if isinstance(value, bool):
            words += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: 0 on success, 2 on a user error and 1 on a failed run (one line on
    stderr each), 130 on Ctrl-C."""
    from .runner import run

    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse: --help, or a bad value already reported
        return e.code if isinstance(e.code, int) else 2
    try:
        run(args)
    except FinetuneError as e:
        if env_rank() == 0:
            print(f'error: {e}', file=sys.stderr, flush=True)
        return e.exit_status
    except KeyboardInterrupt:
        if env_rank() == 0:
            print('interrupted; the last finished epoch is saved - continue with the same command and --resume',
                  file=sys.stderr, flush=True)
        return 130
    return 0
