"""Publish ``timm_metalayers`` models to the Hugging Face Hub and load them back, safely.

Publishing reuses timm's own Hub writer (:func:`timm.models.save_for_hf`), so a repository
written here loads with plain timm::

    save_for_hub(model, "out/")                      # model.safetensors + config.json + README.md
    push_to_hub(model, "my-org/my-resnet")            # the same, uploaded with huggingface_hub
    timm.create_model("hf-hub:my-org/my-resnet", pretrained=True)

Loading through this module adds checks around timm's path: weights come only from
safetensors unless pickles are explicitly allowed (and even then ``torch.load(weights_only=True)``),
files are verified, and every key and shape is checked before anything is copied into the model::

    model = create_model_from_hub("my-org/my-resnet")         # or "hf-hub:my-org/my-resnet@<rev>"
    load_weights(model, "path/to/model.safetensors")          # a file, a folder or a Hub repo id

Every failure raises a :class:`HubLoadError` subclass whose message names the file, repository or
keys involved; a model passed to :func:`load_weights` is left untouched when loading fails.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import inspect
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import timm

from .state_dict import CheckpointMismatchError, HubLoadError, check_state_dict, key_listing

__all__ = [
    'ALLOW_PICKLE_ENV', 'HubLoadError', 'UnsafeCheckpointError', 'CorruptCheckpointError', 'MissingFileError',
    'MissingWeightsError', 'UnknownArchitectureError', 'CheckpointMismatchError', 'HubConnectionError',
    'save_for_hub', 'push_to_hub', 'read_state_dict', 'load_weights', 'create_model_from_hub',
    'count_params', 'count_macs', 'render_model_card', 'pretrained_model_card',
]

#: Set to 1/true/yes to allow pickle checkpoints (still read with ``torch.load(weights_only=True)``).
ALLOW_PICKLE_ENV = 'TIMM_METALAYERS_ALLOW_PICKLE'

SAFE_WEIGHTS_NAME = 'model.safetensors'
PICKLE_WEIGHTS_NAMES = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.pt', 'model.bin')
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.ckpt', '.pth.tar', '.pkl')
CONFIG_NAME = 'config.json'
_TRUE = {'1', 'true', 'yes', 'on'}
PathLike = Union[str, 'os.PathLike[str]']


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class UnsafeCheckpointError(HubLoadError):
    """A pickle checkpoint was refused (not opted in, or it holds more than tensors)."""


class CorruptCheckpointError(HubLoadError, ValueError):
    """A weights or config file is truncated, corrupt or not in the format its name says."""


class MissingFileError(HubLoadError, FileNotFoundError):
    """A repository, revision, config or local path does not exist."""


class MissingWeightsError(MissingFileError):
    """A repository or folder has no weights file this module may load."""


class UnknownArchitectureError(HubLoadError, ValueError):
    """A config names an architecture timm does not know."""


class HubConnectionError(HubLoadError, ConnectionError):
    """The Hub could not be reached (or offline mode is on) and the file is not in the local cache."""


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def _pickle_allowed(allow_pickle: Optional[bool]) -> bool:
    if allow_pickle is None:
        return os.environ.get(ALLOW_PICKLE_ENV, '').strip().lower() in _TRUE
    if not isinstance(allow_pickle, bool):
        raise TypeError(f'allow_pickle must be a bool or None, got {allow_pickle!r}')
    return allow_pickle


def _pickle_refusal(what: str) -> str:
    return (
        f'Refusing to load {what}: .bin/.pth/.pt checkpoints are Python pickles, and unpickling a file can run '
        f'arbitrary code. Prefer a model.safetensors file (timm_metalayers.hub.save_for_hub writes one). '
        f'If you trust this file, opt in with allow_pickle=True or by setting {ALLOW_PICKLE_ENV}=1; it is then '
        f'read with torch.load(weights_only=True), which accepts only tensors and plain containers.'
    )


def _check_module(model: object, argname: str = 'model') -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f'{argname} must be a torch.nn.Module, got {type(model).__name__}')
    return model


def _is_pickle_name(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES)


def parse_repo_spec(spec: str, revision: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Split ``"hf-hub:org/name@rev"`` (prefix and revision optional) into ``(repo_id, revision)``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(spec, str) or not spec:
        raise ValueError(f'repo id must be a non-empty string like "org/name", got {spec!r}')
    repo = spec
    for prefix in ('hf-hub:', 'hf_hub:'):
        if repo.startswith(prefix):
            repo = repo[len(prefix):]
    if '@' in repo:
        repo, _, at_revision = repo.partition('@')
        if revision is not None and revision != at_revision:
            raise ValueError(f'revision given twice: {spec!r} names {at_revision!r} but revision={revision!r}')
        revision = at_revision or None
    if repo.count('/') != 1:
        raise ValueError(f'repo id must look like "org/name" (optionally "hf-hub:org/name@revision"), got {spec!r}')
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ValueError(f'invalid repo id {spec!r}: {e}') from None
    return repo, revision


# ------------------------------------------------------------------------------------------------
# Reading checkpoints
# ------------------------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    import safetensors
    import safetensors.torch

    size = path.stat().st_size
    hint = ('The file is truncated or corrupt (an interrupted download or copy?). Delete it and fetch it again '
            '(hf_hub_download(..., force_download=True) for a Hub file).')
    if size < 8:
        raise CorruptCheckpointError(f'{path} is not a safetensors file: it has only {size} bytes. {hint}')
    with path.open('rb') as f:
        header_len = int.from_bytes(f.read(8), 'little')
        if header_len <= 0 or 8 + header_len > size:
            raise CorruptCheckpointError(
                f'{path} is not a valid safetensors file: its header claims {header_len} bytes but the file has '
                f'{size} bytes in all. {hint}')
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise CorruptCheckpointError(f'{path} is not a valid safetensors file: its header is not JSON. {hint}') \
                from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f'{path} is not a valid safetensors file: its header is not a JSON object. {hint}')
    data_len = max((int(v['data_offsets'][1]) for k, v in header.items()
                    if k != '__metadata__' and isinstance(v, dict) and 'data_offsets' in v), default=0)
    if 8 + header_len + data_len != size:
        raise CorruptCheckpointError(
            f'{path} is not a valid safetensors file: its header describes {8 + header_len + data_len} bytes but the '
            f'file has {size}. {hint}')
    try:
        return safetensors.torch.load_file(str(path), device='cpu')
    except Exception as e:  # SafetensorError does not derive from a public base class
        raise CorruptCheckpointError(f'{path} could not be read as safetensors ({e}). {hint}') from e


def _read_pickle(path: Path) -> Any:
    import pickle

    try:
        return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f'Refusing to load {path}: torch.load(weights_only=True) found Python objects other than tensors and '
            f'plain containers in it ({first_line}). Only weights are loaded from pickles; re-save the checkpoint '
            f'as safetensors from a trusted environment.') from e
    except Exception as e:
        raise CorruptCheckpointError(
            f'{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}).'
            f' The file is truncated, corrupt or not a torch.save file.') from e


def _unwrap_state_dict(obj: Any, path: Union[Path, str]) -> Dict[str, torch.Tensor]:
    from timm.models import clean_state_dict

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
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'path must be a str or os.PathLike, got {type(path).__name__}')
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f'checkpoint file not found: {path}')
    name = path.name.lower()
    if name.endswith('.safetensors'):
        return _read_safetensors(path)
    if _is_pickle_name(name):
        if not _pickle_allowed(allow_pickle):
            raise UnsafeCheckpointError(_pickle_refusal(str(path)))
        return _unwrap_state_dict(_read_pickle(path), path)
    raise ValueError(f'path {str(path)!r} is not a checkpoint this module reads: expected a .safetensors file '
                     f'(or, with allow_pickle=True, one of {", ".join(PICKLE_SUFFIXES)})')


# ------------------------------------------------------------------------------------------------
# Hub downloads with clear errors
# ------------------------------------------------------------------------------------------------
def _hub_download(
        repo_id: str,
        filename: str,
        *,
        revision: Optional[str],
        cache_dir: Optional[PathLike],
        local_files_only: bool,
        force_download: bool = False,
        missing_ok: bool = False,
) -> Optional[Path]:
    """``hf_hub_download`` with its errors turned into :class:`HubLoadError` subclasses.

    Returns None for a file the repository does not have when ``missing_ok``.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
        RepositoryNotFoundError, RevisionNotFoundError)

    where = f'{filename!r} of Hub repo {repo_id!r}' + (f' at revision {revision!r}' if revision else '')
    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download, library_name='timm_metalayers')
        return Path(path)
    except GatedRepoError as e:
        raise HubLoadError(f'cannot access {where}: the repository is gated; accept its terms on the Hub and log in '
                           f'(huggingface-cli login or HF_TOKEN).') from e
    except RepositoryNotFoundError as e:
        raise MissingFileError(f'Hub repo {repo_id!r} was not found at {constants.ENDPOINT} (or it is private and '
                               f'no valid token was sent).') from e
    except RevisionNotFoundError as e:
        raise MissingFileError(f'Hub repo {repo_id!r} has no revision {revision!r}.') from e
    except LocalEntryNotFoundError as e:
        offline = constants.HF_HUB_OFFLINE or local_files_only
        if offline:
            if missing_ok and _known_missing_in_cache(repo_id, filename, revision, cache_dir):
                return None
            raise HubConnectionError(
                f'{where} is not in the local cache ({cache_dir or constants.HF_HUB_CACHE}) and downloads are '
                f'disabled ({"HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "local_files_only=True"}). '
                f'Download it once while online.') from e
        raise HubConnectionError(
            f'could not reach the Hub at {constants.ENDPOINT} to fetch {where}, and it is not in the local cache '
            f'({cache_dir or constants.HF_HUB_CACHE}). Check the network connection / HF_ENDPOINT, or download '
            f'it once and use HF_HUB_OFFLINE=1.') from e
    except EntryNotFoundError as e:
        if missing_ok:
            return None
        raise MissingFileError(f'Hub repo {repo_id!r} has no file {filename!r}.') from e
    except OfflineModeIsEnabled as e:
        raise HubConnectionError(f'{where} is not cached and HF_HUB_OFFLINE=1 is set.') from e
    except HfHubHTTPError as e:
        raise HubLoadError(f'the Hub at {constants.ENDPOINT} refused {where}: {str(e).splitlines()[0]}') from e
    except OSError as e:  # e.g. "Consistency check failed" on a short download
        raise HubConnectionError(f'downloading {where} failed: {e}') from e


def _known_missing_in_cache(repo_id: str, filename: str, revision: Optional[str],
                            cache_dir: Optional[PathLike]) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    return try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision) is _CACHED_NO_EXIST


def _verify_cached_blob(path: Path, repo_id: str, filename: str) -> None:
    """A cached LFS blob is named by its sha256: check the content still matches it."""
    blob = path.resolve()
    if blob.parent.name != 'blobs' or not re.fullmatch(r'[0-9a-f]{64}', blob.name):
        return
    digest = hashlib.sha256()
    with blob.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        raise CorruptCheckpointError(
            f'the cached copy of {filename!r} from Hub repo {repo_id!r} ({blob}) does not match the sha256 the Hub '
            f'published for it: the cache is corrupt. Delete that file or call '
            f'hf_hub_download({repo_id!r}, {filename!r}, force_download=True).')


def _hub_weights_file(repo_id: str, *, revision: Optional[str], filename: Optional[str], allow_pickle: bool,
                      cache_dir: Optional[PathLike], local_files_only: bool) -> Path:
    """Download the weights file of a repository: model.safetensors, or a pickle when allowed."""
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if filename is not None:
        if _is_pickle_name(filename) and not allow_pickle:
            raise UnsafeCheckpointError(_pickle_refusal(f'{filename!r} of Hub repo {repo_id!r}'))
        path = _hub_download(repo_id, filename, missing_ok=True, **kw)
        if path is None:
            raise MissingWeightsError(f'Hub repo {repo_id!r} has no weights file {filename!r}.')
        _verify_cached_blob(path, repo_id, filename)
        return path
    path = _hub_download(repo_id, SAFE_WEIGHTS_NAME, missing_ok=True, **kw)
    if path is not None:
        _verify_cached_blob(path, repo_id, SAFE_WEIGHTS_NAME)
        return path
    if allow_pickle:
        for name in PICKLE_WEIGHTS_NAMES:
            path = _hub_download(repo_id, name, missing_ok=True, **kw)
            if path is not None:
                _verify_cached_blob(path, repo_id, name)
                return path
        raise MissingWeightsError(
            f'Hub repo {repo_id!r} has no weights: neither {SAFE_WEIGHTS_NAME} nor any of '
            f'{", ".join(PICKLE_WEIGHTS_NAMES)}.')
    pickles = _pickle_files_on_hub(repo_id, revision)
    if pickles:
        raise UnsafeCheckpointError(
            f'Hub repo {repo_id!r} has no {SAFE_WEIGHTS_NAME}, only pickle weights ({", ".join(pickles)}). '
            + _pickle_refusal('them'))
    raise MissingWeightsError(f'Hub repo {repo_id!r} has no weights file: {SAFE_WEIGHTS_NAME} is missing.')


def _hub_file_exists(repo_id: str, filename: str, revision: Optional[str]) -> bool:
    """A HEAD request, only used to word an error message (False when offline or unsure)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        return HfApi().file_exists(repo_id, filename, revision=revision)
    except Exception:
        return False


def _pickle_files_on_hub(repo_id: str, revision: Optional[str]) -> List[str]:
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return []
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # only used to improve an error message
        return []
    return [f for f in files if _is_pickle_name(f)]


# ------------------------------------------------------------------------------------------------
# Checking and loading state dicts
# ------------------------------------------------------------------------------------------------
def _module_filter_fn(model: nn.Module) -> Optional[Callable]:
    """The model family's checkpoint filter (timm convention: ``checkpoint_filter_fn`` in its module)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, 'checkpoint_filter_fn', None)
    return fn if callable(fn) else None


def _apply_filter(fn: Callable, state_dict: Dict[str, torch.Tensor], model: nn.Module, source: str) -> dict:
    try:
        try:
            params = inspect.signature(fn).parameters
            two_args = len(params) >= 2
        except (TypeError, ValueError):
            two_args = True
        out = fn(state_dict, model) if two_args else fn(state_dict)
    except HubLoadError:
        raise
    except Exception as e:
        raise CheckpointMismatchError(f'the checkpoint filter {getattr(fn, "__name__", fn)!r} could not map the '
                                      f'weights of {source} onto {type(model).__name__}: {e}') from e
    if not isinstance(out, Mapping):
        raise CheckpointMismatchError(f'checkpoint filter {fn!r} returned {type(out).__name__}, not a state dict')
    return dict(out)


def _classifier_names(model: nn.Module, pretrained_cfg: Optional[Mapping]) -> Tuple[str, ...]:
    cfg = pretrained_cfg or getattr(model, 'pretrained_cfg', None) or {}
    names = cfg.get('classifier')
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _prepare_state_dict(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        *,
        source: str,
        pretrained_cfg: Optional[Mapping] = None,
        filter_fn: Optional[Callable] = None,
        replace_head: bool = False,
        adapt_in_chans: bool = False,
) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Map, adapt and fully check a state dict against ``model``; returns ``(state_dict, strict)``.

    Nothing is copied into the model here, so a failure leaves it untouched.
    """
    target = model.state_dict()
    sd = dict(state_dict)
    if set(sd) != set(target):
        fn = filter_fn or _module_filter_fn(model)
        if fn is not None:
            sd = _apply_filter(fn, sd, model, source)

    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CorruptCheckpointError(f'{source}: entries {key_listing(sorted(map(str, bad)))} are not tensors')

    # Input stem for a different number of input channels (timm's adapt_input_conv).
    if adapt_in_chans:
        from timm.models import adapt_input_conv

        first_convs = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv') or ()
        for conv in ((first_convs,) if isinstance(first_convs, str) else first_convs):
            key = conv + '.weight'
            if key in sd and key in target and sd[key].ndim == 4 and sd[key].shape[1] != target[key].shape[1]:
                sd[key] = adapt_input_conv(target[key].shape[1], sd[key])

    classifier_keys = set()
    if replace_head:
        for name in _classifier_names(model, pretrained_cfg):
            for suffix in ('.weight', '.bias'):
                classifier_keys.add(name + suffix)
                sd.pop(name + suffix, None)

    head_names = _classifier_names(model, pretrained_cfg)
    head_mismatch = [k for k in sd if k in target and tuple(sd[k].shape) != tuple(target[k].shape)]
    if head_mismatch and all(any(k.startswith(n + '.') for n in head_names) for k in head_mismatch) \
            and set(sd) == set(target):
        key = head_mismatch[0]
        ckpt_classes, model_classes = sd[key].shape[0], target[key].shape[0]
        raise CheckpointMismatchError(
            f'{source} has a {ckpt_classes}-class head ({key}: {tuple(sd[key].shape)}) but the model has '
            f'{model_classes} classes ({tuple(target[key].shape)}). Create the model with num_classes={ckpt_classes}, '
            f'or start a new head: create_model_from_hub(..., num_classes={model_classes}) or '
            f'load_weights(..., replace_head=True).')
    check_state_dict(sd, model, source=f'the weights in {source}', may_miss=classifier_keys.__contains__)
    return sd, not classifier_keys


def _load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, **kwargs) -> None:
    sd, strict = _prepare_state_dict(model, state_dict, source=source, **kwargs)
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:  # keys and shapes were checked; this is a dtype/device surprise
        raise CheckpointMismatchError(f'loading {source} into {type(model).__name__} failed: {e}') from e


def load_weights(
        model: nn.Module,
        source: Union[PathLike, Mapping[str, torch.Tensor]],
        *,
        revision: Optional[str] = None,
        filename: Optional[str] = None,
        allow_pickle: Optional[bool] = None,
        replace_head: bool = False,
        filter_fn: Optional[Callable] = None,
        cache_dir: Optional[PathLike] = None,
        local_files_only: bool = False,
) -> nn.Module:
    """Load weights into ``model`` from a file, a folder, a Hub repo or an in-memory state dict.

    Every key and shape is checked before anything is copied, so on error the model is unchanged.
    Checkpoints in timm's naming go through the model family's ``checkpoint_filter_fn``
    (or ``filter_fn``); a state dict already in the model's naming loads unchanged.

    Args:
        model: the model to fill.
        source: a ``.safetensors`` file, a folder holding ``model.safetensors``, a Hub repo id
            (``"org/name"``, ``"hf-hub:org/name@revision"``) or a state dict.
        revision: Hub revision (branch, tag or commit).
        filename: weights file inside a folder or repo (default ``model.safetensors``).
        allow_pickle: allow pickle checkpoints (read with ``torch.load(weights_only=True)``);
            ``None`` defers to ``TIMM_METALAYERS_ALLOW_PICKLE``.
        replace_head: drop the checkpoint's classifier and keep the model's own (new) head.
        filter_fn: maps the checkpoint's keys onto the model (``fn(state_dict, model)``).
        cache_dir: Hub cache folder. local_files_only: never touch the network.

    Returns:
        ``model``, for chaining.
    """
    _check_module(model)
    allowed = _pickle_allowed(allow_pickle)
    if filename is not None and (not isinstance(filename, str) or not filename):
        raise ValueError(f'filename must be a non-empty string, got {filename!r}')
    if isinstance(source, Mapping):
        _load_checked(model, source, source='the given state dict', filter_fn=filter_fn, replace_head=replace_head)
        return model
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f'source must be a path, a Hub repo id or a state dict, got {type(source).__name__}')
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.exists() and not text.startswith(('hf-hub:', 'hf_hub:')):
        if local.is_dir():
            path = _local_weights_file(local, filename, allowed)
        else:
            path = local
        state_dict = read_state_dict(path, allow_pickle=allowed)
        _load_checked(model, state_dict, source=str(path), filter_fn=filter_fn, replace_head=replace_head)
        return model
    if isinstance(source, Path) or not re.fullmatch(r'(hf[-_]hub:)?[\w.\-]+/[\w.\-]+(@.+)?', text):
        raise MissingFileError(f'source {text!r} is neither an existing file or folder nor a Hub repo id '
                               f'("org/name")')
    repo_id, revision = parse_repo_spec(text, revision)
    path = _hub_weights_file(repo_id, revision=revision, filename=filename, allow_pickle=allowed,
                             cache_dir=cache_dir, local_files_only=local_files_only)
    state_dict = read_state_dict(path, allow_pickle=allowed)
    _load_checked(model, state_dict, source=f'{path.name} of Hub repo {repo_id!r}', filter_fn=filter_fn,
                  replace_head=replace_head)
    return model


def _local_weights_file(folder: Path, filename: Optional[str], allow_pickle: bool) -> Path:
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
                                    f'({", ".join(p.name for p in pickles)}). ' + _pickle_refusal('them'))
    raise MissingWeightsError(f'folder {folder} has no weights file ({SAFE_WEIGHTS_NAME})')


# ------------------------------------------------------------------------------------------------
# Creating models from the Hub
# ------------------------------------------------------------------------------------------------
def _read_config(path: Path, where: str) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} is not valid JSON ({e}).') from e
    if not isinstance(cfg, dict):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} must hold a JSON object, found {type(cfg).__name__}.')
    arch = cfg.get('architecture')
    if not isinstance(arch, str) or not arch:
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} has no "architecture" field naming a timm model.')
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise UnknownArchitectureError(
            f'{CONFIG_NAME} of {where} names architecture {arch!r}, which timm does not know'
            + (f' (did you mean {", ".join(map(repr, close))}?)' if close else '')
            + '. Import the package that registers it (timm_metalayers registers the metalayers_* models) '
              'or upgrade timm.')
    num_classes = cfg.get('num_classes', (cfg.get('pretrained_cfg') or {}).get('num_classes'))
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 0):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} has an invalid num_classes: {num_classes!r}.')
    model_args = cfg.get('model_args') or {}
    if not isinstance(model_args, dict):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where}: model_args must be a JSON object.')
    if num_classes is not None and model_args.get('num_classes', num_classes) != num_classes:
        raise CorruptCheckpointError(
            f'{CONFIG_NAME} of {where} is inconsistent: num_classes={num_classes} but '
            f'model_args.num_classes={model_args["num_classes"]}.')
    return cfg


def create_model_from_hub(
        repo: str,
        *,
        pretrained: bool = True,
        revision: Optional[str] = None,
        allow_pickle: Optional[bool] = None,
        cache_dir: Optional[PathLike] = None,
        local_files_only: bool = False,
        **kwargs: Any,
) -> nn.Module:
    """``timm.create_model("hf-hub:<repo>", pretrained=True)`` with safe, checked weight loading.

    The config is fetched and validated first (architecture known to timm, sane ``num_classes``),
    the weights are read from ``model.safetensors`` (pickles only when ``allow_pickle``), then the
    model is built by timm from the repository's config and every key and shape is checked
    before loading. Passing a ``num_classes`` different from the checkpoint's starts a new head.

    Args:
        repo: ``"org/name"``, ``"hf-hub:org/name"`` or ``"org/name@revision"``.
        pretrained: load the weights (``False`` builds the architecture only).
        revision: branch, tag or commit. allow_pickle: see :func:`load_weights`.
        cache_dir: Hub cache folder. local_files_only: never touch the network.
        **kwargs: passed to :func:`timm.create_model` (``num_classes``, ``in_chans``, ``drop_rate``, ...).
    """
    repo_id, revision = parse_repo_spec(repo, revision)
    allowed = _pickle_allowed(allow_pickle)
    where = f'Hub repo {repo_id!r}' + (f' at revision {revision!r}' if revision else '')
    for key in ('pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path'):
        if kwargs.get(key) is not None:
            raise ValueError(f'{key} cannot be combined with create_model_from_hub (the repo supplies the config '
                             f'and the weights); got {key}={kwargs[key]!r}')
    dl = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    cfg_path = _hub_download(repo_id, CONFIG_NAME, missing_ok=True, **dl)
    if cfg_path is None:
        weights = _hub_file_exists(repo_id, SAFE_WEIGHTS_NAME, revision)
        raise MissingFileError(
            f'{where} has no {CONFIG_NAME}' + (' (it has weights but nothing says which architecture they are for)'
                                               if weights else '')
            + '; it was not published with timm (save_for_hub / timm.models.push_to_hf_hub).')
    cfg = _read_config(cfg_path, where)
    ckpt_classes = cfg.get('num_classes', (cfg.get('pretrained_cfg') or {}).get('num_classes'))

    state_dict = None
    weights_path = None
    if pretrained:
        weights_path = _hub_weights_file(repo_id, filename=None, allow_pickle=allowed, **dl)
        state_dict = read_state_dict(weights_path, allow_pickle=allowed)

    num_classes = kwargs.get('num_classes')
    replace_head = num_classes is not None and ckpt_classes is not None and num_classes != ckpt_classes
    if local_files_only:
        ctx = _offline()
    else:
        ctx = contextlib.nullcontext()
    name = f'hf-hub:{repo_id}' + (f'@{revision}' if revision else '')
    try:
        with ctx:
            model = timm.create_model(name, pretrained=False, cache_dir=cache_dir, **kwargs)
    except HubLoadError:
        raise
    except TypeError as e:
        raise HubLoadError(f'timm could not build {cfg["architecture"]!r} from {CONFIG_NAME} of {where} with '
                           f'arguments {sorted(kwargs)} + model_args {sorted(cfg.get("model_args") or {})}: {e}') from e
    if state_dict is not None:
        in_chans = kwargs.get('in_chans')
        _load_checked(
            model, state_dict, source=f'{weights_path.name} of {where}',
            pretrained_cfg=cfg.get('pretrained_cfg'), replace_head=replace_head,
            adapt_in_chans=in_chans is not None)
        if not replace_head and ckpt_classes is not None and getattr(model, 'num_classes', ckpt_classes) != ckpt_classes:
            raise CheckpointMismatchError(f'{CONFIG_NAME} of {where} says num_classes={ckpt_classes} but the model '
                                          f'built from it has {model.num_classes}.')
    return model


@contextlib.contextmanager
def _offline():
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


# ------------------------------------------------------------------------------------------------
# Complexity and model cards
# ------------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device too)."""
    return sum(p.numel() for p in _check_module(model).parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (C, H, W), as FLOPs / 2.

    Runs on the meta device with ``torch.utils.flop_counter.FlopCounterMode``: no real compute,
    and the model's own tensors are not touched (meta stand-ins are passed with ``functional_call``).
    """
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    _check_module(model)
    if len(input_size) != 3 or any(not isinstance(s, int) or s <= 0 for s in input_size):
        raise ValueError(f'input_size must be (C, H, W) positive ints, got {tuple(input_size)!r}')
    meta = {k: torch.empty_like(v, device='meta') for k, v in model.named_parameters()}
    meta.update({k: torch.empty_like(v, device='meta') for k, v in model.named_buffers()})
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            functional_call(model, meta, (torch.empty(1, *input_size, device='meta'),), strict=False)
    finally:
        for m, training in modes.items():
            m.training = training
    return counter.get_total_flops() // 2


def _layers_used(model: nn.Module, architecture: Optional[str] = None) -> List[str]:
    """Names from ``timm_metalayers.layers`` the model's family uses (imported by its modules or instantiated)."""
    try:
        from timm_metalayers import layers
    except ImportError:  # pragma: no cover - package partially installed
        return []
    public = getattr(layers, '__all__', None) or [n for n in dir(layers) if not n.startswith('_')]
    exported = {n: getattr(layers, n) for n in public if hasattr(layers, n)}
    used = set()
    # the family's code: the registered entrypoint, the model class and its bases, and every block class
    names = [cls.__module__ for cls in type(model).__mro__] + [type(m).__module__ for m in model.modules()]
    if architecture and timm.is_model(architecture):
        names.append(timm.models.model_entrypoint(architecture).__module__)
    modules = [sys.modules[n] for n in dict.fromkeys(names)
               if n in sys.modules and n.startswith('timm_metalayers.models')]
    for mod in modules:
        for name, obj in exported.items():
            if getattr(mod, name, None) is obj:
                used.add(name)
    classes = {obj: n for n, obj in exported.items() if isinstance(obj, type)}
    for m in model.modules():
        if type(m) in classes:
            used.add(classes[type(m)])
    return sorted(used, key=lambda n: (not n[0].islower(), n.lower()))


_DATASET_TAGS = {
    'in1k': 'imagenet-1k', 'in12k': 'imagenet-12k', 'in21k': 'imagenet-21k', 'in22k': 'imagenet-22k',
}
_LICENSE_OK = re.compile(r'^[a-z0-9.\-]+$')


def _datasets_from_tag(tag: Optional[str]) -> List[str]:
    if not tag:
        return []
    found = []
    for part in tag.split('_'):
        ds = _DATASET_TAGS.get(part)
        if ds and ds not in found:
            found.append(ds)
    return found


def _yaml_front_matter(fields: Dict[str, Any]) -> str:
    import yaml

    return '---\n' + yaml.safe_dump(fields, sort_keys=False, default_flow_style=False, allow_unicode=True) + '---\n'


def _fmt_size(size: Sequence[int]) -> str:
    return f'{size[-2]} x {size[-1]}'


def render_model_card(
        *,
        model_name: str,
        architecture: str,
        description: str,
        num_params: int,
        macs: Optional[int],
        input_size: Sequence[int],
        layers_used: Sequence[str],
        usage: str,
        license: str = 'apache-2.0',
        datasets: Sequence[str] = (),
        tags: Sequence[str] = (),
        weights: Optional[str] = None,
        extra_details: Optional[Mapping[str, str]] = None,
        base_model: Optional[str] = None,
        citation: Optional[str] = None,
) -> str:
    """Render a Hub model card (YAML front matter + markdown) from already-computed facts."""
    front: Dict[str, Any] = {'library_name': 'timm', 'license': license,
                             'tags': list(dict.fromkeys(['image-classification', 'timm', 'timm-metalayers', *tags]))}
    if datasets:
        front['datasets'] = list(datasets)
    if base_model:
        front['base_model'] = base_model
    front['pipeline_tag'] = 'image-classification'
    lines = [_yaml_front_matter(front).rstrip('\n'),
             '<!-- Generated by timm_metalayers.hub; do not edit by hand. -->',
             f'# Model card for {model_name}', '', description.strip(), '', '## Model Details', '',
             '- **Model Type:** Image classification / feature backbone',
             f'- **Architecture:** `{architecture}` (registered with timm by `import timm_metalayers`)']
    if layers_used:
        lines.append('- **Built from timm_metalayers layers:** ' + ', '.join(f'`{n}`' for n in layers_used))
    if weights:
        lines.append(f'- **Weights:** {weights}')
    lines.append(f'- **Params (M):** {num_params / 1e6:.2f}')
    if macs is not None:
        lines.append(f'- **GMACs:** {macs / 1e9:.2f} (at {_fmt_size(input_size)}, computed with '
                     f'`torch.utils.flop_counter`, MACs = FLOPs / 2)')
    lines.append(f'- **Image size:** {_fmt_size(input_size)}')
    for key, value in (extra_details or {}).items():
        lines.append(f'- **{key}:** {value}')
    if datasets:
        lines.append('- **Dataset:** ' + ', '.join(datasets))
    lines += ['', '## Model Usage', '', '```python', usage.strip(), '```']
    if citation:
        lines += ['', '## Citation', '', '```bibtex', citation.strip(), '```']
    return '\n'.join(lines) + '\n'


def _usage_snippet(create_call: str) -> str:
    return f'''from urllib.request import urlopen

import torch
from PIL import Image

import timm
import timm_metalayers  # noqa: F401  (registers the metalayers_* models with timm)

img = Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
)).convert('RGB')

model = {create_call}
model = model.eval()

# the preprocessing the weights were trained with
data_config = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**data_config, is_training=False)

with torch.no_grad():
    output = model(transform(img).unsqueeze(0))  # (1, num_classes) logits
top5_probabilities, top5_class_indices = torch.topk(output.softmax(dim=1) * 100, k=5)'''


def _entrypoint_description(architecture: str) -> str:
    try:
        doc = inspect.getdoc(timm.models.model_entrypoint(architecture)) or ''
    except Exception:
        doc = ''
    return doc.split('\n\n')[0].replace('\n', ' ').strip()


@functools.lru_cache(maxsize=None)
def _architecture_facts(architecture: str, num_classes: int, input_size: Tuple[int, ...]
                        ) -> Tuple[int, int, Tuple[str, ...], str]:
    """Params, MACs, layers used and family module of an architecture, built on the meta device."""
    with torch.device('meta'):
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    return (count_params(model), count_macs(model, input_size), tuple(_layers_used(model, architecture)),
            timm.models.model_entrypoint(architecture).__module__)


def pretrained_model_card(name: str) -> str:
    """The model card of a registered pretrained tag (``"metalayers_resnet50.tv_in1k"``).

    Parameter count and GMACs are computed on the meta device at the tag's input size.
    """
    from timm.models import get_pretrained_cfg, split_model_name_tag

    if not isinstance(name, str) or '.' not in name:
        raise ValueError(f'name must be a pretrained tag like "metalayers_resnet50.tv_in1k", got {name!r}')
    architecture, tag = split_model_name_tag(name)
    if not timm.is_model(architecture):
        raise ValueError(f'name {name!r}: {architecture!r} is not a registered model')
    cfg = get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None:
        raise ValueError(f'name {name!r}: {architecture!r} has no pretrained tag {tag!r}')
    cfg = cfg.to_dict()
    input_size = tuple(cfg.get('input_size') or (3, 224, 224))
    params, macs, layers, family = _architecture_facts(architecture, cfg.get('num_classes', 1000), input_size)
    license = str(cfg.get('license') or 'other').lower()
    hub_id = cfg.get('hf_hub_id')
    source_bits = []
    if hub_id:
        source_bits.append(f'timm\'s [`{hub_id}`](https://huggingface.co/{hub_id}) (`model.safetensors`), '
                           f'mapped onto this architecture by its checkpoint filter on load')
    elif cfg.get('url'):
        source_bits.append(f'<{cfg["url"]}>')
    source_bits.append(f'licence: {license}')
    if cfg.get('origin_url'):
        source_bits.append(f'originally from <{cfg["origin_url"]}>')
    weights = '; '.join(source_bits)
    summary = _entrypoint_description(architecture)
    description = (
        f'{summary + " " if summary else ""}An image classification model built with `timm_metalayers` '
        f'(module `{family}`), the PyTorch port of Metalhead.jl\'s layer toolkit, and registered with timm. '
        f'Pretrained weights `{tag}` come from timm\'s matching model; they are loaded as safetensors and '
        f'every parameter is mapped and shape-checked.')
    extra = {}
    if cfg.get('test_input_size'):
        extra['Test image size'] = _fmt_size(cfg['test_input_size'])
    if cfg.get('paper_ids'):
        extra['Papers'] = str(cfg['paper_ids'])
    return render_model_card(
        model_name=name, architecture=architecture, description=description, num_params=params, macs=macs,
        input_size=input_size, layers_used=layers, license=license if _LICENSE_OK.match(license) else 'other',
        datasets=_datasets_from_tag(tag), weights=weights, extra_details=extra,
        base_model=hub_id, usage=_usage_snippet(f"timm.create_model('{name}', pretrained=True)"))


_CARD_FIELDS = ('license', 'tags', 'datasets', 'description', 'model_name', 'base_model', 'citation', 'weights')


def _card_for_saved_model(model: nn.Module, repo_id: Optional[str], card_fields: Mapping[str, Any]) -> str:
    unknown = sorted(set(card_fields) - set(_CARD_FIELDS))
    if unknown:
        raise TypeError(f'unknown model card field(s) {", ".join(unknown)}; known: {", ".join(_CARD_FIELDS)}')
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    architecture = cfg.get('architecture') or type(model).__name__
    input_size = tuple(cfg.get('input_size') or (3, 224, 224))
    try:
        macs = count_macs(model, input_size)
    except Exception:  # exotic models: the card simply omits GMACs
        macs = None
    name = card_fields.get('model_name') or (repo_id.split('/')[-1] if repo_id else architecture)
    ref = f'hf-hub:{repo_id}' if repo_id else 'hf-hub:<org>/<name>'
    license = card_fields.get('license') or str(cfg.get('license') or 'apache-2.0').lower()
    for key in ('tags', 'datasets'):
        value = card_fields.get(key)
        if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
            raise TypeError(f'{key} must be a list of strings, got {value!r}')
    description = card_fields.get('description') or (
        f'A `{architecture}` image classifier ({getattr(model, "num_classes", "?")} classes) built with '
        f'`timm_metalayers` and saved with `timm_metalayers.hub.save_for_hub`.')
    weights = card_fields.get('weights') or '`model.safetensors` in this repository'
    usage = _usage_snippet(f"timm.create_model('{ref}', pretrained=True)") + (
        '\n\n# or, with safetensors-only loading and full key/shape checks:\n'
        'from timm_metalayers.hub import create_model_from_hub\n'
        f"model = create_model_from_hub('{ref[len('hf-hub:'):]}')")
    return render_model_card(
        model_name=name, architecture=architecture, description=description, num_params=count_params(model),
        macs=macs, input_size=input_size, layers_used=_layers_used(model, architecture), usage=usage, license=license,
        datasets=list(card_fields.get('datasets') or _datasets_from_tag(cfg.get('tag'))),
        tags=list(card_fields.get('tags') or ()), weights=weights, base_model=card_fields.get('base_model'),
        citation=card_fields.get('citation'),
        extra_details={'Classes': str(getattr(model, 'num_classes', '?'))})


# ------------------------------------------------------------------------------------------------
# Publishing
# ------------------------------------------------------------------------------------------------
def _check_publishable(model: nn.Module, label_names: Optional[Union[Sequence[str], Mapping[int, str]]]) -> str:
    _check_module(model)
    cfg = getattr(model, 'pretrained_cfg', None)
    arch = (cfg or {}).get('architecture')
    if not arch or not timm.is_model(arch):
        raise ValueError(
            f'model must be created with timm.create_model (its pretrained_cfg names the architecture a Hub repo '
            f'is rebuilt from); got a {type(model).__name__} whose pretrained_cfg architecture is {arch!r}')
    if label_names is not None:
        if isinstance(label_names, str) or not isinstance(label_names, (Sequence, Mapping)):
            raise TypeError(f'label_names must be a list of class names or a {{index: name}} dict, '
                            f'got {type(label_names).__name__}')
        n = getattr(model, 'num_classes', None)
        if isinstance(label_names, Sequence) and n is not None and len(label_names) != n:
            raise ValueError(f'label_names has {len(label_names)} names but the model has num_classes={n}')
    return arch


def save_for_hub(
        model: nn.Module,
        directory: PathLike,
        *,
        model_card: bool = True,
        label_names: Optional[Union[Sequence[str], Mapping[int, str]]] = None,
        label_descriptions: Optional[Mapping[str, str]] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        repo_id: Optional[str] = None,
        **card_fields: Any,
) -> Path:
    """Write what timm's Hub loader reads: ``model.safetensors``, ``config.json`` and a ``README.md`` card.

    Weights and config are written by :func:`timm.models.save_for_hf` (safetensors only), so
    ``timm.create_model("hf-hub:<repo>", pretrained=True)`` rebuilds the model from them.

    Args:
        model: a model made by ``timm.create_model``.
        directory: output folder (created if needed).
        model_card: also write ``README.md``.
        label_names: class names (list, or ``{index: name}``), stored in ``config.json``.
        label_descriptions: ``{label name: description}``, stored in ``config.json``.
        model_args, data_config: passed to timm's ``save_for_hf`` (extra reconstruction args, preprocessing).
        repo_id: the repo the folder is meant for (used in the card's usage snippet).
        **card_fields: model card fields: ``license``, ``tags``, ``datasets``, ``description``,
            ``model_name``, ``base_model``, ``citation``, ``weights``.

    Returns:
        The directory, as a :class:`~pathlib.Path`.
    """
    from timm.models import save_for_hf

    _check_publishable(model, label_names)
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f'directory must be a path, got {type(directory).__name__}')
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f'directory {str(directory)!r} exists and is not a folder')
    if repo_id is not None:
        repo_id = parse_repo_spec(repo_id)[0]
    unknown = sorted(set(card_fields) - set(_CARD_FIELDS))
    if unknown:
        raise TypeError(f'save_for_hub() got unknown model card field(s) {", ".join(unknown)}; '
                        f'known: {", ".join(_CARD_FIELDS)}')
    card = _card_for_saved_model(model, repo_id, card_fields) if model_card else None

    model_config: Dict[str, Any] = {}
    if label_names is not None:
        model_config['label_names'] = dict(label_names) if isinstance(label_names, Mapping) else list(label_names)
    if label_descriptions is not None:
        model_config['label_descriptions'] = dict(label_descriptions)
    kwargs: Dict[str, Any] = {'model_config': model_config, 'safe_serialization': True}
    params = inspect.signature(save_for_hf).parameters
    if model_args is not None:
        if 'model_args' not in params:
            raise ValueError('model_args needs a newer timm (its save_for_hf has no model_args)')
        kwargs['model_args'] = dict(model_args)
    if data_config is not None:
        if 'data_config' not in params:
            raise ValueError('data_config needs a newer timm (its save_for_hf has no data_config)')
        kwargs['data_config'] = dict(data_config)
    save_for_hf(model, str(directory), **kwargs)
    if card is not None:
        (directory / 'README.md').write_text(card, encoding='utf-8')
    return directory


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        *,
        commit_message: str = 'Add model',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: Optional[bool] = None,
        create_pr: bool = False,
        model_card: bool = True,
        replace_card: bool = False,
        label_names: Optional[Union[Sequence[str], Mapping[int, str]]] = None,
        label_descriptions: Optional[Mapping[str, str]] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        **card_fields: Any,
):
    """Publish ``model`` to a Hub repository (created if missing) with huggingface_hub's upload API.

    The files are those of :func:`save_for_hub`, uploaded in one commit with ``HfApi.upload_folder``.
    Like timm's ``push_to_hf_hub``, an existing ``README.md`` on the Hub is kept unless ``replace_card``.
    Only safetensors weights are uploaded (timm's helper would add a pickle copy by default).

    Returns:
        huggingface_hub's ``CommitInfo`` for the commit.
    """
    from huggingface_hub import HfApi

    repo_id, at_revision = parse_repo_spec(repo_id, revision)
    revision = at_revision
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError(f'commit_message must be a non-empty string, got {commit_message!r}')
    _check_publishable(model, label_names)
    api = HfApi(token=token, library_name='timm_metalayers')
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    write_card = model_card and (replace_card or not api.file_exists(repo_id, 'README.md', revision=revision))
    with tempfile.TemporaryDirectory(prefix='timm_metalayers_push_') as tmp:
        save_for_hub(model, tmp, model_card=write_card, label_names=label_names,
                     label_descriptions=label_descriptions, model_args=model_args, data_config=data_config,
                     repo_id=repo_id, **card_fields)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)
