"""``python -m timm_metalayers.export``: build a timm model, export it, check it, print the largest difference.

A bad argument is one ``error: argument --x: ...`` line on stderr and exit status 2, found before any real
work: values by argparse ``type=`` functions, the image size by running the model on the meta device.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import timm
import torch

import timm_metalayers  # noqa: F401  (registers the metalayers_* models)
from ..finetune.cli import image_size, positive_int
from ..models._helpers import unknown_model_message
from .core import (DEFAULT_RTOL, FORMATS, ExportParityError, check_output_name, export_model, model_input_size,
                   require_onnx)

__all__ = ['build_parser', 'parse_args', 'main', 'create_kwargs']


class _OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse's hook: one line, no usage block
        print(f'error: {message}', file=sys.stderr, flush=True)
        self.exit(2)


def model_name(text: str) -> str:
    """A model timm knows (``metalayers_resnet50``, ``metalayers_resnet50.a1_in1k``)."""
    if not timm.is_model(text):
        raise argparse.ArgumentTypeError(unknown_model_message(text))
    try:
        timm.get_pretrained_cfg(text)
    except RuntimeError as e:  # an unknown tag
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def existing_path(text: str) -> Path:
    """A file or folder that exists (a checkpoint: a ``.safetensors`` file or a ``save_for_hub`` folder)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f'no such file or folder: {text!r}')
    return Path(text)


def output_file(text: str) -> Path:
    """A file path in an existing folder this process can write to."""
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f'{text!r} is a folder; give a file name in it')
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f'folder {str(folder)!r} of {text!r} does not exist')
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f'cannot write in folder {str(folder)!r}: {e.strerror}') from None
    return path


def build_parser() -> argparse.ArgumentParser:
    """The export command line (its errors are one line and exit status 2)."""
    p = _OneLineErrors(
        prog='python -m timm_metalayers.export',
        description='Export a timm model in eval mode to ONNX, an ExportedProgram (torch.export) or TorchScript, '
                    'run the written file on random images (onnxruntime for ONNX) and compare it with the eager '
                    'model.')
    p.add_argument('--model', required=True, type=model_name, help='timm model name, e.g. metalayers_resnet50')
    weights = p.add_mutually_exclusive_group()
    weights.add_argument('--pretrained', action='store_true', help="the model's pretrained weights from the Hub")
    weights.add_argument('--checkpoint', type=existing_path, default=None, metavar='PATH',
                         help='weights to load (a .safetensors file, or a save_for_hub folder: its config.json gives '
                              'num_classes and model_args), checked key by key')
    p.add_argument('--format', required=True, choices=FORMATS)
    p.add_argument('--output', required=True, type=output_file, metavar='PATH',
                   help='file to write (ONNX: its weights go next to it, in PATH.data; an ExportedProgram: *.pt2)')
    p.add_argument('--img-size', type=image_size, default=None, metavar='N',
                   help="input side in pixels (default: the model's pretrained_cfg input size)")
    p.add_argument('--batch', type=positive_int, default=1, metavar='N', help='images per input (default: 1)')
    p.add_argument('--dynamic-batch', action='store_true', help='the exported model takes any batch size')
    return p


def create_kwargs(model: str, img_size: Optional[int]) -> Dict[str, Any]:
    """``img_size`` for models whose token grid is fixed at creation (ViT, MLP mixers), else nothing."""
    cfg = timm.get_pretrained_cfg(model)
    return {'img_size': img_size} if img_size is not None and cfg is not None and cfg.fixed_input_size else {}


def checkpoint_kwargs(checkpoint: Optional[Path], model: str) -> Dict[str, Any]:
    """What a ``save_for_hub`` folder's ``config.json`` says the model was built with (``num_classes``, its
    ``model_args``), so that a fine-tuned folder exports without restating them; ``{}`` for a weights file.
    A folder saved for another architecture is a ``ValueError`` naming both."""
    from ..hub.config import CONFIG_NAME, checkpoint_num_classes, read_config
    from ..hub.timm_layout import NoTimmTwinError, timm_twin_of

    if checkpoint is None or not (checkpoint / CONFIG_NAME).is_file():
        return {}
    cfg = read_config(checkpoint / CONFIG_NAME, f'folder {str(checkpoint)!r}')
    arch, saved = model.split('.')[0], cfg['architecture']
    try:
        twin = timm_twin_of(arch)
    except NoTimmTwinError:
        twin = None
    if saved not in (arch, twin):
        raise ValueError(f'{str(checkpoint / CONFIG_NAME)!r} is for architecture {saved!r}, not {arch!r}'
                         + (f' (or its timm twin {twin!r})' if twin else ''))
    kwargs = dict(cfg.get('model_args') or {})
    num_classes = checkpoint_num_classes(cfg)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    return kwargs


def _check_img_size(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Build and run the model on the meta device (no memory, no compute): a size it cannot take is an error."""
    if args.img_size is None:
        return
    cfg = timm.get_pretrained_cfg(args.model)
    smallest = f' (its smallest input is {cfg.min_input_size[-1]})' if cfg is not None and cfg.min_input_size else ''
    try:
        with torch.device('meta'):
            model = timm.create_model(args.model, **args.checkpoint_kwargs,
                                      **create_kwargs(args.model, args.img_size)).eval()
            model(torch.empty(args.batch, *model_input_size(model, args.img_size)))
    except (ValueError, RuntimeError) as e:
        parser.error(f'argument --img-size: {args.model} does not take {args.img_size}x{args.img_size} images'
                     f'{smallest}: {str(e).splitlines()[0]}')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check ``argv`` (default ``sys.argv[1:]``); a bad value exits with status 2 and one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_output_name(args.format, args.output)
    except ValueError as e:
        parser.error(f'argument --output: {e}')
    if args.format == 'onnx':
        try:
            require_onnx()
        except ImportError as e:
            parser.error(f'argument --format: {e}')
    from ..hub import HubLoadError
    try:
        args.checkpoint_kwargs = checkpoint_kwargs(args.checkpoint, args.model)
    except (ValueError, OSError, HubLoadError) as e:  # HubLoadError: a config.json timm cannot read
        parser.error(f'argument --checkpoint: {str(e).splitlines()[0]}')
    _check_img_size(parser, args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: 0 when the export matches the eager model, 1 when it does not or the weights
    cannot be fetched, 2 on a bad argument (one line on stderr each)."""
    from ..hub import HubLoadError, load_weights

    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a bad value already reported
        return e.code if isinstance(e.code, int) else 2
    kwargs = {**args.checkpoint_kwargs, **create_kwargs(args.model, args.img_size)}
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
        if args.checkpoint is not None:
            load_weights(model, args.checkpoint)
    except HubLoadError as e:
        status = 2 if args.checkpoint is not None else 1
        print(f'error: {"argument --checkpoint: " if status == 2 else ""}{e}', file=sys.stderr, flush=True)
        return status
    except (OSError, RuntimeError) as e:  # --pretrained: timm's download (no network, no such file on the Hub)
        if not args.pretrained:
            raise
        print(f'error: cannot load the pretrained weights of {args.model}: {e}', file=sys.stderr, flush=True)
        return 1
    weights = 'pretrained weights' if args.pretrained else (f'weights from {args.checkpoint}' if args.checkpoint
                                                            else 'random weights')
    try:
        report = export_model(model.eval(), args.format, args.output, img_size=args.img_size, batch=args.batch,
                              dynamic_batch=args.dynamic_batch)
    except ExportParityError as e:
        hint = '' if args.pretrained or args.checkpoint else (
            ' (random weights: at timm\'s initialisation the activations of some deep nets grow until float32 '
            'rounding moves the outputs; check trained weights with --pretrained or --checkpoint)')
        print(f'error: {e}{hint}', file=sys.stderr, flush=True)
        return 1
    print(f'wrote {", ".join(map(str, report.files))}: {args.model} ({weights}) as {args.format}'
          f'{", any batch size" if args.dynamic_batch else ""}')
    print(f'{report.summary()}; tolerance {DEFAULT_RTOL:g}')
    return 0
