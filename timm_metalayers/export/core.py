"""Export a model in eval mode, then check the written artefact against the eager model.

One trace (``torch.export.export``) serves the ONNX file and the ExportedProgram; TorchScript is scripted.
Every artefact is written in a temporary folder next to its target, loaded back and run on the same random
inputs as the eager model (onnxruntime for ONNX), and moved into place only when its outputs match.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..finetune.checkpoint import make_temp_dir
from ..layers import DropBlock, StochasticDepth

__all__ = ['FORMATS', 'DEFAULT_RTOL', 'ExportReport', 'ExportParityError', 'export_model', 'export_formats',
           'model_input_size', 'active_random_layers', 'require_onnx', 'check_output_name']

FORMATS = ('onnx', 'exported-program', 'torchscript')
DEFAULT_RTOL = 1e-4
EXTRA = 'timm-metalayers[export]'

PathLike = Union[str, os.PathLike]
Outputs = List[torch.Tensor]


class ExportParityError(RuntimeError):
    """The exported artefact's outputs differ from the eager model's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how far its outputs are from the eager model's."""

    format: str
    path: Path
    files: Tuple[Path, ...]
    input_shapes: Tuple[Tuple[int, ...], ...]
    checked_with: str
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / largest_output
    largest_output: float  # the largest |eager output|: 0 means the check compared zeros

    def summary(self) -> str:
        shapes = ', '.join(str(tuple(s)) for s in self.input_shapes)
        zeros = '; the eager outputs are all zero, so this compares nothing' if self.largest_output == 0 else ''
        return (f'{self.checked_with} vs eager on inputs {shapes}: largest difference {self.max_abs_diff:.3g} '
                f'(relative {self.max_rel_diff:.3g}){zeros}')


def check_output_name(format: str, output: PathLike) -> None:
    """Raise a ValueError for a name the format's loader refuses (``torch.export.load`` wants ``.pt2``)."""
    if format == 'exported-program' and Path(output).suffix != '.pt2':
        raise ValueError(f'an ExportedProgram file name ends in .pt2 (torch.export.load reads those), got '
                         f'{str(output)!r}')


def require_onnx() -> None:
    """Raise an ImportError naming the extra to install when the ONNX export's packages are missing."""
    missing = []
    for package in ('onnx', 'onnxscript', 'onnxruntime'):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(f'ONNX export needs {", ".join(missing)}: pip install "{EXTRA}"')


# Modules that draw random numbers in training mode, and the attribute holding their drop probability.
_RANDOM_LAYERS: Tuple[Tuple[type, str], ...] = (
    (DropBlock, 'drop_block_prob'), (StochasticDepth, 'p'),
    (nn.Dropout, 'p'), (nn.Dropout1d, 'p'), (nn.Dropout2d, 'p'), (nn.Dropout3d, 'p'), (nn.AlphaDropout, 'p'),
    (nn.FeatureAlphaDropout, 'p'))


def _timm_random_layers() -> Tuple[Tuple[type, str], ...]:
    from timm.layers import DropBlock2d, DropPath
    return (DropBlock2d, 'drop_prob'), (DropPath, 'drop_prob')


def active_random_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(module path, module)`` of the regularisers of ``model`` that would drop something now (in training
    mode, with a probability > 0), DropBlocks first."""
    kinds = _RANDOM_LAYERS + _timm_random_layers()
    found = [(name, module) for name, module in model.named_modules() for kind, attr in kinds
             if module.training and isinstance(module, kind) and (getattr(module, attr, 0) or 0) > 0]
    return sorted(found, key=lambda item: not isinstance(item[1], DropBlock))


def _refuse_training_mode(model: nn.Module) -> None:
    training = [name or '(the model)' for name, module in model.named_modules() if module.training]
    if not training:
        return
    random_layers = active_random_layers(model)
    if random_layers:
        named = ', '.join(f'{type(m).__name__} at {name!r}' for name, m in random_layers[:3])
        more = f' and {len(random_layers) - 3} more' if len(random_layers) > 3 else ''
        raise ValueError(f'cannot export a model in training mode: {named}{more} would draw new random masks '
                         f'on every call, so the export would not be the model\'s inference function; call '
                         f'model.eval() first (in eval mode the regularisers are identities and export as such)')
    raise ValueError(f'cannot export a model in training mode ({training[0]!r} is; batch norm would use the '
                     f'batch\'s statistics): call model.eval() first')


def model_input_size(model: nn.Module, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> Tuple[int, ...]:
    """``(C, H, W)``: ``img_size`` if given, else the fixed size of a patch embedding (ViT, MLP mixers),
    else the model's ``pretrained_cfg`` input size."""
    channels, *size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3, 224, 224))
    channels = getattr(model, 'in_chans', channels)
    if img_size is not None:
        size = [img_size, img_size] if isinstance(img_size, int) else list(img_size)
    else:
        fixed = next((m for m in model.modules() if getattr(m, 'strict_img_size', False)
                      and getattr(m, 'img_size', None) is not None), None)
        size = list(fixed.img_size) if fixed is not None else size
    return (channels, *size)


def _model_name(model: nn.Module) -> str:
    """timm's architecture name where the model has one, else its class name."""
    return (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__


def _as_outputs(value: object) -> Outputs:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise TypeError(f'export checks models that return a tensor or a list of tensors, got {type(value).__name__}')


def _differences(expected: Sequence[Outputs], actual: Sequence[Outputs]) -> Tuple[float, float, float]:
    """(largest absolute difference, that over the largest |expected|, the largest |expected|) across every
    output of every input; a missing output or another shape is an infinite difference."""
    largest_diff, largest_value = 0.0, 0.0
    for want, got in zip(expected, actual):
        largest_value = max([largest_value] + [w.abs().max().item() for w in want if w.numel()])
        if len(want) != len(got) or any(tuple(w.shape) != tuple(g.shape) for w, g in zip(want, got)):
            largest_diff = math.inf
            continue
        largest_diff = max([largest_diff] + [(w.double() - g.double()).abs().max().item() for w, g in zip(want, got)
                                             if w.numel()])
    relative = largest_diff / largest_value if largest_value > 0 else (0.0 if largest_diff == 0 else math.inf)
    return largest_diff, relative, largest_value


# ------------------------------------------------------------------------------------------------------------
# Writers: (model, trace, temporary file) -> a runner of the written artefact (a callable on an input)
# ------------------------------------------------------------------------------------------------------------
def _write_onnx(program: torch.export.ExportedProgram, path: Path) -> Tuple[str, Callable[[torch.Tensor], Outputs]]:
    import onnxruntime

    # external data (torch's default): weights in <name>.data, so no 2 GB protobuf limit and less memory
    torch.onnx.export(program, (), str(path), external_data=True, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> Outputs:
        return [torch.from_numpy(y) for y in session.run(None, {input_name: x.numpy()})]
    return 'onnxruntime', run


def _write_exported_program(program: torch.export.ExportedProgram,
                            path: Path) -> Tuple[str, Callable[[torch.Tensor], Outputs]]:
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return 'the loaded ExportedProgram', lambda x: _as_outputs(loaded(x))


def _write_torchscript(model: nn.Module, path: Path) -> Tuple[str, Callable[[torch.Tensor], Outputs]]:
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = torch.jit.load(str(path))
    return 'the loaded TorchScript module', lambda x: _as_outputs(loaded(x))


def _install(written: Path, target: Path) -> Tuple[Path, ...]:
    """Move the files of ``written`` (a temporary folder) next to ``target``, the main file last."""
    main = written / target.name
    others = sorted(p for p in written.iterdir() if p != main)
    installed = []
    for file in others + [main]:
        destination = target.parent / file.name
        os.replace(file, destination)
        installed.append(destination)
    return (installed[-1], *installed[:-1])


def _trace(model: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    dynamic_shapes = ({0: torch.export.Dim('batch')},) if dynamic_batch else None
    return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def export_formats(model: nn.Module, outputs: Mapping[str, PathLike], *,
                   img_size: Optional[Union[int, Tuple[int, int]]] = None, batch: int = 1,
                   dynamic_batch: bool = False, rtol: float = DEFAULT_RTOL) -> List[ExportReport]:
    """Export ``model`` (in eval mode) to several formats (``{format: output path}``) from one trace.

    Each artefact is checked on random inputs of ``batch`` images (and ``batch + 1`` with ``dynamic_batch``,
    whose artefacts take any batch size) against the eager model; it replaces ``output`` only when its
    largest difference is within ``rtol`` of the largest eager output, else ExportParityError.
    An ONNX file keeps its weights next to it, in ``<output>.data``.
    """
    for fmt, output in outputs.items():
        if fmt not in FORMATS:
            raise ValueError(f'unknown export format {fmt!r}; expected one of {", ".join(FORMATS)}')
        check_output_name(fmt, output)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f'batch must be an integer >= 1, got {batch!r}')
    _refuse_training_mode(model)
    if 'onnx' in outputs:
        require_onnx()
    generator = torch.Generator().manual_seed(0)
    shape = model_input_size(model, img_size)
    inputs = [torch.randn(b, *shape, generator=generator) for b in ([batch, batch + 1] if dynamic_batch else [batch])]
    with torch.no_grad():
        expected = [_as_outputs(model(x)) for x in inputs]
    program = None
    if {'onnx', 'exported-program'} & set(outputs):  # the example has >= 2 images: torch.export fixes sizes 0 and 1
        program = _trace(model, inputs[-1], dynamic_batch)
    reports = []
    for fmt, output in outputs.items():
        target = Path(output)
        temporary = make_temp_dir(target.parent, f'.{target.name}.')
        try:
            written = temporary / target.name
            if fmt == 'torchscript':
                checked_with, run = _write_torchscript(model, written)
            elif fmt == 'onnx':
                checked_with, run = _write_onnx(program, written)
            else:
                checked_with, run = _write_exported_program(program, written)
            with torch.no_grad():
                actual = [run(x) for x in inputs]
            del run  # the loaded artefact (an onnxruntime session holds a copy of the weights)
            max_abs, max_rel, largest = _differences(expected, actual)
            if not max_rel <= rtol:
                raise ExportParityError(f'{fmt} export of {_model_name(model)}: {checked_with} differs from '
                                        f'the eager model by {max_abs:.3g} (relative {max_rel:.3g} > {rtol:g}); '
                                        f'{target} was not written')
            files = _install(temporary, target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        reports.append(ExportReport(fmt, target, files, tuple(tuple(x.shape) for x in inputs), checked_with,
                                    max_abs, max_rel, largest))
    return reports


def export_model(model: nn.Module, format: str, output: PathLike, *,
                 img_size: Optional[Union[int, Tuple[int, int]]] = None, batch: int = 1,
                 dynamic_batch: bool = False, rtol: float = DEFAULT_RTOL) -> ExportReport:
    """Export ``model`` (in eval mode) to ``format`` (``onnx``, ``exported-program`` or ``torchscript``) at
    ``output``, checked against the eager model; see :func:`export_formats`."""
    return export_formats(model, {format: output}, img_size=img_size, batch=batch, dynamic_batch=dynamic_batch,
                          rtol=rtol)[0]
