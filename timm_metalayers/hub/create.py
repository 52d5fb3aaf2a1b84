"""Creating a model from a Hub repository: config checked, weights read as safetensors, every key checked.

The model is built by timm from the ``config.json`` already downloaded and checked (timm's ``local-dir:``
source pointed at its folder in the cache), so building makes no request and needs no process-wide
offline switch: other threads keep downloading while a ``local_files_only`` load runs.
"""
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
from torch import nn

from ..state_dict import CheckpointMismatchError, HubLoadError
from ._checks import PathLike
from .config import CONFIG_NAME, checkpoint_num_classes, read_config
from .download import describe_repo, hub_download, hub_file_exists, hub_weights_file, parse_repo_spec
from .errors import MissingFileError
from .files import SAFE_WEIGHTS_NAME, pickle_allowed, read_state_dict
from .loading import load_checked

__all__ = ['create_model_from_hub']

_SOURCE_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path')


def _config_file(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike], local_files_only: bool) -> Path:
    path = hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir,
                        local_files_only=local_files_only, missing_ok=True)
    if path is not None:
        return path
    has_weights = not local_files_only and hub_file_exists(repo_id, SAFE_WEIGHTS_NAME, revision)
    raise MissingFileError(
        f'{describe_repo(repo_id, revision)} has no {CONFIG_NAME}'
        + (' (it has weights but nothing says which architecture they are for)' if has_weights else '')
        + '; it was not published with timm (save_for_hub / timm.models.push_to_hf_hub).')


def _build(cfg_path: Path, cfg: Dict[str, Any], repo_id: str, revision: Optional[str], kwargs: Dict[str, Any]
           ) -> nn.Module:
    """The model timm builds from the checked ``config.json`` at ``cfg_path`` (no download, no weights)."""
    hub_id = repo_id + (f'@{revision}' if revision else '')
    overlay = {'hf_hub_id': hub_id, 'source': 'hf-hub', 'file': None}  # as timm's own hf-hub: source sets them
    try:
        return timm.create_model(f'local-dir:{cfg_path.parent}', pretrained=False, pretrained_cfg_overlay=overlay,
                                 **kwargs)
    except HubLoadError:
        raise
    except TypeError as e:
        raise HubLoadError(f'timm could not build {cfg["architecture"]!r} from {CONFIG_NAME} of '
                           f'{describe_repo(repo_id, revision)} with arguments {sorted(kwargs)} + model_args '
                           f'{sorted(cfg.get("model_args") or {})}: {e}') from e


def _load_repo_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], cfg: Dict[str, Any], *, source: str,
                       where: str, kwargs: Dict[str, Any]) -> None:
    ckpt_classes = checkpoint_num_classes(cfg)
    num_classes = kwargs.get('num_classes')
    replace_head = num_classes is not None and ckpt_classes is not None and num_classes != ckpt_classes
    load_checked(model, state_dict, source=source, pretrained_cfg=cfg.get('pretrained_cfg'),
                 replace_head=replace_head, adapt_in_chans=kwargs.get('in_chans') is not None)
    if not replace_head and ckpt_classes is not None and getattr(model, 'num_classes', ckpt_classes) != ckpt_classes:
        raise CheckpointMismatchError(f'{CONFIG_NAME} of {where} says num_classes={ckpt_classes} but the model '
                                      f'built from it has {model.num_classes}.')


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

    The config is fetched and checked first (architecture known to timm, every field timm reads of
    the right type), the weights are read from ``model.safetensors`` (pickles only when ``allow_pickle``),
    then timm builds the model from that config and every key and shape is checked before loading.
    Passing a ``num_classes`` different from the checkpoint's starts a new head.

    Args:
        repo: ``"org/name"``, ``"hf-hub:org/name"`` or ``"org/name@revision"``.
        pretrained: load the weights (``False`` builds the architecture only).
        revision: branch, tag or commit. allow_pickle: see :func:`load_weights`.
        cache_dir: Hub cache folder. local_files_only: use only the local cache, never the network
            (for this call only; other threads are not affected).
        **kwargs: passed to :func:`timm.create_model` (``num_classes``, ``in_chans``, ``drop_rate``, ...).
    """
    repo_id, revision = parse_repo_spec(repo, revision)
    allowed = pickle_allowed(allow_pickle)
    for key in _SOURCE_KWARGS:
        if kwargs.get(key) is not None:
            raise ValueError(f'{key} cannot be combined with create_model_from_hub (the repo supplies the config '
                             f'and the weights); got {key}={kwargs[key]!r}')
    where = describe_repo(repo_id, revision)
    cfg_path = _config_file(repo_id, revision, cache_dir, local_files_only)
    cfg = read_config(cfg_path, where)
    state_dict = weights_path = None
    if pretrained:
        weights_path = hub_weights_file(repo_id, revision=revision, filename=None, allow_pickle=allowed,
                                        cache_dir=cache_dir, local_files_only=local_files_only)
        state_dict = read_state_dict(weights_path, allow_pickle=allowed)
    model = _build(cfg_path, cfg, repo_id, revision, kwargs)
    if state_dict is not None:
        _load_repo_weights(model, state_dict, cfg, source=f'{weights_path.name} of {where}', where=where,
                           kwargs=kwargs)
    return model
