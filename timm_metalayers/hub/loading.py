"""Loading weights into a model: mapped by the family's checkpoint filter, every key and shape checked first.

Nothing is copied into the model until the whole state dict has been checked, so a failed load leaves the
model exactly as it was.
"""
import inspect
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..state_dict import CheckpointMismatchError, HubLoadError, check_state_dict, checkpoint_filter_of, key_listing
from ._checks import PathLike, check_module
from .config import layer_names
from .download import parse_repo_spec, hub_weights_file
from .errors import CorruptCheckpointError, MissingFileError
from .files import local_weights_file, pickle_allowed, read_state_dict

__all__ = ['load_weights', 'load_checked', 'classifier_names']

_REPO_ID = re.compile(r'(hf[-_]hub:)?[\w.\-]+/[\w.\-]+(@.+)?')


def _module_filter_fn(model: nn.Module) -> Optional[Callable]:
    """The model family's checkpoint filter: the one its architecture was built with, else timm's convention
    (``checkpoint_filter_fn`` in the model class's module)."""
    fn = checkpoint_filter_of(model)
    if fn is not None:
        return fn
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, 'checkpoint_filter_fn', None)
    return fn if callable(fn) else None


def _apply_filter(fn: Callable, state_dict: Dict[str, torch.Tensor], model: nn.Module, source: str) -> dict:
    try:
        try:
            two_args = len(inspect.signature(fn).parameters) >= 2
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


def classifier_names(model: nn.Module, pretrained_cfg: Optional[Mapping]) -> Tuple[str, ...]:
    """The classifier layer names of ``pretrained_cfg`` (or the model's own pretrained_cfg)."""
    cfg = pretrained_cfg or getattr(model, 'pretrained_cfg', None) or {}
    return layer_names(cfg.get('classifier'))


def _adapt_in_chans(model: nn.Module, sd: Dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    """Adapt the input stem to the model's number of input channels (timm's ``adapt_input_conv``)."""
    from timm.models import adapt_input_conv

    for conv in layer_names((getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')):
        key = conv + '.weight'
        if key in sd and key in target and sd[key].ndim == 4 and sd[key].shape[1] != target[key].shape[1]:
            sd[key] = adapt_input_conv(target[key].shape[1], sd[key])


def _check_head_fits(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     head_names: Tuple[str, ...], source: str) -> None:
    """A checkpoint that differs only in its classifier's size gets an error saying how to start a new head."""
    mismatch = [k for k in sd if k in target and tuple(sd[k].shape) != tuple(target[k].shape)]
    if not mismatch or set(sd) != set(target) or \
            not all(any(k.startswith(n + '.') for n in head_names) for k in mismatch):
        return
    key = mismatch[0]
    ckpt_classes, model_classes = sd[key].shape[0], target[key].shape[0]
    raise CheckpointMismatchError(
        f'{source} has a {ckpt_classes}-class head ({key}: {tuple(sd[key].shape)}) but the model has '
        f'{model_classes} classes ({tuple(target[key].shape)}). Create the model with num_classes={ckpt_classes}, '
        f'or start a new head: create_model_from_hub(..., num_classes={model_classes}) or '
        f'load_weights(..., replace_head=True).')


def _prepare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                        pretrained_cfg: Optional[Mapping] = None, filter_fn: Optional[Callable] = None,
                        replace_head: bool = False, adapt_in_chans: bool = False
                        ) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Map, adapt and fully check a state dict against ``model``; returns ``(state_dict, strict)``.

    Nothing is copied into the model here, so a failure leaves it untouched.
    """
    target = model.state_dict()
    sd = dict(state_dict)
    fn = filter_fn or _module_filter_fn(model)
    if set(sd) != set(target) and fn is not None:
        sd = _apply_filter(fn, sd, model, source)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CorruptCheckpointError(f'{source}: entries {key_listing(sorted(map(str, bad)))} are not tensors')
    if adapt_in_chans:
        _adapt_in_chans(model, sd, target)
    head_names = classifier_names(model, pretrained_cfg)
    dropped_head = set()
    if replace_head:
        dropped_head = {name + suffix for name in head_names for suffix in ('.weight', '.bias')}
        for key in dropped_head:
            sd.pop(key, None)
    _check_head_fits(sd, target, head_names, source)
    check_state_dict(sd, model, source=f'the weights in {source}', may_miss=dropped_head.__contains__)
    return sd, not dropped_head


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, **kwargs) -> None:
    """Check ``state_dict`` fully against ``model``, then load it (``kwargs``: see ``_prepare_state_dict``)."""
    sd, strict = _prepare_state_dict(model, state_dict, source=source, **kwargs)
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:  # keys and shapes were checked; this is a dtype/device surprise
        raise CheckpointMismatchError(f'loading {source} into {type(model).__name__} failed: {e}') from e


def _weights_location(source: PathLike, *, revision: Optional[str], filename: Optional[str], allow_pickle: bool,
                      cache_dir: Optional[PathLike], local_files_only: bool) -> Tuple[Path, str]:
    """The weights file ``source`` (a file, a folder or a Hub repo id) names, and how to name it in messages."""
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.exists() and not text.startswith(('hf-hub:', 'hf_hub:')):
        path = local_weights_file(local, filename, allow_pickle) if local.is_dir() else local
        return path, str(path)
    if isinstance(source, Path) or not _REPO_ID.fullmatch(text):
        raise MissingFileError(f'source {text!r} is neither an existing file or folder nor a Hub repo id '
                               f'("org/name")')
    repo_id, revision = parse_repo_spec(text, revision)
    path = hub_weights_file(repo_id, revision=revision, filename=filename, allow_pickle=allow_pickle,
                            cache_dir=cache_dir, local_files_only=local_files_only)
    return path, f'{path.name} of Hub repo {repo_id!r}'


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
    check_module(model)
    allowed = pickle_allowed(allow_pickle)
    if filename is not None and (not isinstance(filename, str) or not filename):
        raise ValueError(f'filename must be a non-empty string, got {filename!r}')
    if isinstance(source, Mapping):
        load_checked(model, source, source='the given state dict', filter_fn=filter_fn, replace_head=replace_head)
        return model
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f'source must be a path, a Hub repo id or a state dict, got {type(source).__name__}')
    path, described = _weights_location(source, revision=revision, filename=filename, allow_pickle=allowed,
                                        cache_dir=cache_dir, local_files_only=local_files_only)
    state_dict = read_state_dict(path, allow_pickle=allowed)
    load_checked(model, state_dict, source=described, filter_fn=filter_fn, replace_head=replace_head)
    return model
