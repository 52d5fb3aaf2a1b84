"""Reading weights files: safetensors always, pickles only when the caller opts in.

Safetensors files are validated by the ``safetensors`` library itself (header length, JSON, dtypes,
shapes and ``data_offsets``, the file being fully covered); whatever it rejects becomes a
:class:`CorruptCheckpointError` naming the file. Pickles are read with ``torch.load(weights_only=True)``.
"""
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Optional, Union

import safetensors
import safetensors.torch
import torch
from timm.models import clean_state_dict

from ..state_dict import key_listing
from ._checks import PathLike, check_path
from .errors import CorruptCheckpointError, MissingFileError, MissingWeightsError, UnsafeCheckpointError

__all__ = ['ALLOW_PICKLE_ENV', 'SAFE_WEIGHTS_NAME', 'PICKLE_WEIGHTS_NAMES', 'PICKLE_SUFFIXES', 'read_state_dict',
           'pickle_allowed', 'pickle_refusal', 'is_pickle_name', 'local_weights_file']

#: Set to 1/true/yes to allow pickle checkpoints (still read with ``torch.load(weights_only=True)``).
ALLOW_PICKLE_ENV = 'TIMM_METALAYERS_ALLOW_PICKLE'

SAFE_WEIGHTS_NAME = 'model.safetensors'
PICKLE_WEIGHTS_NAMES = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.pt', 'model.bin')
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.ckpt', '.pth.tar', '.pkl')
_TRUE = {'1', 'true', 'yes', 'on'}
_CORRUPT_HINT = ('The file is truncated or corrupt (an interrupted download or copy?). Delete it and fetch it again '
                 '(hf_hub_download(..., force_download=True) for a Hub file).')


def pickle_allowed(allow_pickle: Optional[bool]) -> bool:
    """The pickle policy: ``allow_pickle`` when given, else the ``TIMM_METALAYERS_ALLOW_PICKLE`` variable."""
    if allow_pickle is None:
        return os.environ.get(ALLOW_PICKLE_ENV, '').strip().lower() in _TRUE
    if not isinstance(allow_pickle, bool):
        raise TypeError(f'allow_pickle must be a bool or None, got {allow_pickle!r}')
    return allow_pickle


def pickle_refusal(what: str) -> str:
    """Why ``what`` (a pickle) is refused, and how to opt in."""
    return (
        f'Refusing to load {what}: .bin/.pth/.pt checkpoints are Python pickles, and unpickling a file can run '
        f'arbitrary code. Prefer a model.safetensors file (timm_metalayers.hub.save_for_hub writes one). '
        f'If you trust this file, opt in with allow_pickle=True or by setting {ALLOW_PICKLE_ENV}=1; it is then '
        f'read with torch.load(weights_only=True), which accepts only tensors and plain containers.'
    )


def is_pickle_name(name: str) -> bool:
    """Whether a file name has one of the pickle checkpoint suffixes."""
    return name.lower().endswith(PICKLE_SUFFIXES)


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path), device='cpu')
    except safetensors.SafetensorError as e:
        raise CorruptCheckpointError(f'{path} is not a valid safetensors file ({e}). {_CORRUPT_HINT}') from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f'Refusing to load {path}: torch.load(weights_only=True) found Python objects other than tensors and '
            f'plain containers in it ({_first_line(e)}). Only weights are loaded from pickles; re-save the '
            f'checkpoint as safetensors from a trusted environment.') from e
    except Exception as e:  # torch.load raises many types for a damaged file
        raise CorruptCheckpointError(
            f'{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)}). '
            f'The file is truncated, corrupt or not a torch.save file.') from e


def _unwrap_state_dict(obj: Any, path: Union[Path, str]) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(f'{path} does not hold a state dict (found a {type(obj).__name__}).')
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CorruptCheckpointError(
            f'{path} is not a plain state dict: entries {key_listing(sorted(map(str, bad)))} are not tensors.')
    return clean_state_dict(dict(obj))


def read_state_dict(path: PathLike, *, allow_pickle: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file, or from a pickle checkpoint when opted in.

    Args:
        path: the checkpoint file.
        allow_pickle: allow ``.bin/.pth/.pt`` files (read with ``torch.load(weights_only=True)``);
            ``None`` defers to the ``TIMM_METALAYERS_ALLOW_PICKLE`` environment variable.

    Raises:
        MissingFileError: no such file. UnsafeCheckpointError: a refused pickle.
        CorruptCheckpointError: truncated or corrupt file. ValueError: unsupported file type.
    """
    path = check_path(path, 'path')
    if not path.is_file():
        raise MissingFileError(f'checkpoint file not found: {path}')
    if path.name.lower().endswith('.safetensors'):
        return _read_safetensors(path)
    if is_pickle_name(path.name):
        if not pickle_allowed(allow_pickle):
            raise UnsafeCheckpointError(pickle_refusal(str(path)))
        return _unwrap_state_dict(_read_pickle(path), path)
    raise ValueError(f'path {str(path)!r} is not a checkpoint this module reads: expected a .safetensors file '
                     f'(or, with allow_pickle=True, one of {", ".join(PICKLE_SUFFIXES)})')


def local_weights_file(folder: Path, filename: Optional[str], allow_pickle: bool) -> Path:
    """The weights file of a local folder: ``filename``, else model.safetensors, else a pickle when allowed."""
    if filename is not None:
        path = folder / filename
        if not path.is_file():
            raise MissingWeightsError(f'folder {folder} has no file {filename!r}')
        return path
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return folder / SAFE_WEIGHTS_NAME
    pickles = [folder / n for n in PICKLE_WEIGHTS_NAMES if (folder / n).is_file()]
    if pickles and allow_pickle:
        return pickles[0]
    if pickles:
        raise UnsafeCheckpointError(f'folder {folder} has no {SAFE_WEIGHTS_NAME}, only pickle weights '
                                    f'({", ".join(p.name for p in pickles)}). ' + pickle_refusal('them'))
    raise MissingWeightsError(f'folder {folder} has no weights file ({SAFE_WEIGHTS_NAME})')
