"""Publishing: the files timm's Hub loader reads, written by timm's ``save_for_hf``, uploaded by huggingface_hub.

Every file written follows the process umask (``safetensors`` itself creates its file with mode 0600).
"""
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import timm
from huggingface_hub import HfApi, ModelCard
from timm.models import save_for_hf
from torch import nn

from ._checks import PathLike, check_module, check_path
from .cards import card_for_saved_model, check_card_fields
from .download import parse_repo_spec
from .files import SAFE_WEIGHTS_NAME
from .timm_layout import timm_twin_name, to_timm_model

__all__ = ['save_for_hub', 'push_to_hub']

Labels = Union[Sequence[str], Mapping[int, str]]


def _new_file_mode(directory: Path) -> int:
    """The permission bits a new file gets in ``directory`` under the current umask (read without changing it)."""
    probe = directory / f'.mode-probe-{uuid.uuid4().hex}'
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink()


def _check_publishable(model: nn.Module, label_names: Optional[Labels]) -> str:
    check_module(model)
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


def _save_for_hf_kwargs(label_names: Optional[Labels], label_descriptions: Optional[Mapping[str, str]],
                        model_args: Optional[Mapping[str, Any]], data_config: Optional[Mapping[str, Any]]
                        ) -> Dict[str, Any]:
    """The keyword arguments of timm's ``save_for_hf``: labels in ``config.json``, safetensors only."""
    model_config: Dict[str, Any] = {}
    if label_names is not None:
        model_config['label_names'] = dict(label_names) if isinstance(label_names, Mapping) else list(label_names)
    if label_descriptions is not None:
        model_config['label_descriptions'] = dict(label_descriptions)
    kwargs: Dict[str, Any] = {'model_config': model_config, 'safe_serialization': True}
    if model_args is not None:
        kwargs['model_args'] = dict(model_args)
    if data_config is not None:
        kwargs['data_config'] = dict(data_config)
    return kwargs


def _loadable_by_transformers(config_path: Path) -> None:
    """Drop ``num_classes`` from ``model_args`` in ``config.json``: transformers' timm wrapper passes the root
    ``num_classes`` to ``timm.create_model`` itself, and a second copy is a ``TypeError`` there. timm reads the root
    ``num_classes`` too, so nothing is lost."""
    config = json.loads(config_path.read_text(encoding='utf-8'))
    model_args = config.get('model_args') or {}
    if 'num_classes' not in model_args:
        return
    if model_args.pop('num_classes') != config.get('num_classes'):
        raise ValueError(f'{config_path}: model_args num_classes disagrees with num_classes')
    if not model_args:
        config.pop('model_args')
    tmp = config_path.with_name(f'.{config_path.name}.{uuid.uuid4().hex}.tmp')
    tmp.write_text(json.dumps(config, indent=2), encoding='utf-8')
    os.replace(tmp, config_path)


def save_for_hub(
        model: nn.Module,
        directory: PathLike,
        *,
        timm_native: bool = False,
        model_card: bool = True,
        label_names: Optional[Labels] = None,
        label_descriptions: Optional[Mapping[str, str]] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        repo_id: Optional[str] = None,
        **card_fields: Any,
) -> Path:
    """Write what timm's Hub loader reads: ``model.safetensors``, ``config.json`` and a ``README.md`` card.

    Weights and config are written by :func:`timm.models.save_for_hf` (safetensors only), so
    ``timm.create_model("hf-hub:<repo>", pretrained=True)`` rebuilds the model from them, and so does
    ``transformers.AutoModelForImageClassification.from_pretrained`` (after ``import timm_metalayers``).

    Args:
        model: a model made by ``timm.create_model``.
        directory: output folder (created if needed).
        timm_native: write timm's own architecture and key layout (the model's architecture must be a twin of
            a timm one), so plain timm and transformers load the folder without this package.
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
    _check_publishable(model, label_names)
    if not isinstance(timm_native, bool):
        raise TypeError(f'timm_native must be True or False, got {timm_native!r}')
    directory = check_path(directory, 'directory')
    if directory.exists() and not directory.is_dir():
        raise ValueError(f'directory {str(directory)!r} exists and is not a folder')
    if repo_id is not None:
        repo_id = parse_repo_spec(repo_id)[0]
    check_card_fields(card_fields)
    if timm_native:
        model = to_timm_model(model)
    card = card_for_saved_model(model, repo_id, card_fields, timm_native=timm_native) if model_card else None

    kwargs = _save_for_hf_kwargs(label_names, label_descriptions, model_args, data_config)
    save_for_hf(model, str(directory), **kwargs)
    _loadable_by_transformers(directory / 'config.json')
    if card is not None:
        ModelCard(card).save(directory / 'README.md')
    # safetensors creates its file with mode 0600; give it the mode config.json and the card get
    (directory / SAFE_WEIGHTS_NAME).chmod(_new_file_mode(directory))
    return directory


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        *,
        commit_message: str = 'Add model',
        timm_native: bool = False,
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: Optional[bool] = None,
        create_pr: bool = False,
        model_card: bool = True,
        replace_card: bool = False,
        label_names: Optional[Labels] = None,
        label_descriptions: Optional[Mapping[str, str]] = None,
        model_args: Optional[Mapping[str, Any]] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        **card_fields: Any,
):
    """Publish ``model`` to a Hub repository (created if missing) with huggingface_hub's upload API.

    The files are those of :func:`save_for_hub` (``timm_native`` as there), uploaded in one commit with
    ``HfApi.upload_folder``.
    Like timm's ``push_to_hf_hub``, an existing ``README.md`` on the Hub is kept unless ``replace_card``.
    Only safetensors weights are uploaded (timm's helper would add a pickle copy by default).

    Returns:
        huggingface_hub's ``CommitInfo`` for the commit.
    """
    repo_id, at_revision = parse_repo_spec(repo_id, revision)
    revision = at_revision
    if not isinstance(commit_message, str) or not commit_message.strip():
        raise ValueError(f'commit_message must be a non-empty string, got {commit_message!r}')
    _check_publishable(model, label_names)
    if timm_native:
        timm_twin_name(model)  # before anything is created on the Hub
    api = HfApi(token=token, library_name='timm_metalayers')
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    write_card = model_card and (replace_card or not api.file_exists(repo_id, 'README.md', revision=revision))
    with tempfile.TemporaryDirectory(prefix='timm_metalayers_push_') as tmp:
        save_for_hub(model, tmp, timm_native=timm_native, model_card=write_card, label_names=label_names,
                     label_descriptions=label_descriptions, model_args=model_args, data_config=data_config,
                     repo_id=repo_id, **card_fields)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)
