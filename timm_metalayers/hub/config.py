"""Reading a repository's ``config.json``: every field this package or timm's Hub loader relies on is checked.

A field of the wrong type (``pretrained_cfg`` a string, ``classifier`` an int, ``input_size`` too short,
a field timm's :class:`~timm.models.PretrainedCfg` does not have) is a :class:`CorruptCheckpointError`
naming the file and the field, never an ``AttributeError``/``TypeError`` from deep inside timm.
"""
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import timm
from timm.models import PretrainedCfg

from .errors import CorruptCheckpointError, UnknownArchitectureError

__all__ = ['CONFIG_NAME', 'read_config', 'checkpoint_num_classes', 'layer_names']

CONFIG_NAME = 'config.json'
# top-level fields of timm's config.json that are not part of pretrained_cfg (legacy single-dict form)
_TOP_LEVEL_FIELDS = ('architecture', 'num_features', 'labels', 'label_names', 'label_descriptions')
_SIZE_FIELDS = ('input_size', 'test_input_size', 'min_input_size')
_LAYER_FIELDS = ('classifier', 'first_conv')


def layer_names(value: Any) -> tuple:
    """A config's ``classifier``/``first_conv`` (a name, a list of names or nothing) as a tuple of names."""
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def checkpoint_num_classes(cfg: Dict[str, Any]) -> Optional[int]:
    """The number of classes a checked config says its checkpoint has (None when it does not say)."""
    return cfg.get('num_classes', _pretrained_section(cfg).get('num_classes'))


def _pretrained_section(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``pretrained_cfg``, or, in timm's legacy single-dict form, the config itself minus its top-level fields."""
    if 'pretrained_cfg' in cfg:
        return cfg['pretrained_cfg']
    return {k: v for k, v in cfg.items() if k not in _TOP_LEVEL_FIELDS}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _load_object(path: Path, where: str) -> Dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} is not valid JSON ({e}).') from e
    if not isinstance(cfg, dict):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} must hold a JSON object, found {type(cfg).__name__}.')
    return cfg


def _check_architecture(cfg: Dict[str, Any], where: str) -> None:
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


def _check_pretrained_cfg(section: Any, where: str) -> None:
    def bad(field: str, expected: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f'{CONFIG_NAME} of {where}: pretrained_cfg.{field} must be {expected}, '
                                      f'found {section[field]!r}.')

    if not isinstance(section, dict):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where}: pretrained_cfg must be a JSON object, found '
                                     f'{type(section).__name__} {section!r}.')
    unknown = sorted(set(section) - {f.name for f in dataclasses.fields(PretrainedCfg)})
    if unknown:
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where}: pretrained_cfg has fields timm does not know: '
                                     f'{", ".join(unknown)} (written by another timm version?).')
    for field in _LAYER_FIELDS:
        value = section.get(field)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad(field, 'a layer name or a list of layer names')
    for field in _SIZE_FIELDS:
        value = section.get(field)
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(map(_is_count, value))):
            raise bad(field, 'a list [channels, height, width] of non-negative ints')
    if section.get('num_classes') is not None and not _is_count(section['num_classes']):
        raise bad('num_classes', 'a non-negative int')


def _check_model_args(cfg: Dict[str, Any], where: str) -> None:
    model_args = cfg.get('model_args')
    if model_args is None:
        return
    if not isinstance(model_args, dict):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where}: model_args must be a JSON object, found '
                                     f'{model_args!r}.')
    in_chans = model_args.get('in_chans')
    if in_chans is not None and not (_is_count(in_chans) and in_chans > 0):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where}: model_args.in_chans must be a positive int, '
                                     f'found {in_chans!r}.')


def read_config(path: Path, where: str) -> Dict[str, Any]:
    """Read and check ``config.json`` of ``where`` (a repository, for messages); returns the JSON object.

    Raises ``CorruptCheckpointError`` (or ``UnknownArchitectureError``) naming the file and the field.
    """
    cfg = _load_object(path, where)
    _check_architecture(cfg, where)
    _check_pretrained_cfg(cfg['pretrained_cfg'] if 'pretrained_cfg' in cfg else _pretrained_section(cfg), where)
    _check_model_args(cfg, where)
    num_classes = checkpoint_num_classes(cfg)
    if num_classes is not None and not _is_count(num_classes):
        raise CorruptCheckpointError(f'{CONFIG_NAME} of {where} has an invalid num_classes: {num_classes!r}.')
    model_args = cfg.get('model_args') or {}
    if num_classes is not None and model_args.get('num_classes', num_classes) != num_classes:
        raise CorruptCheckpointError(
            f'{CONFIG_NAME} of {where} is inconsistent: num_classes={num_classes} but '
            f'model_args.num_classes={model_args["num_classes"]}.')
    return cfg
