"""The model: a checked name, the data's image size where the model takes one, starting weights
(Hub, a local file under the package's pickle policy, exact weights), and the frozen-backbone probe."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

import timm
from timm.data import resolve_data_config

from .. import models as _models  # noqa: F401  (registers the metalayers_* models with timm)
from ..hub import HubLoadError, load_weights, read_state_dict
from ..hub.timm_layout import NoTimmTwinError, timm_twin_of
from ..models._helpers import unknown_model_message
from .errors import FinetuneError, first_line

__all__ = ['check_export_layout', 'check_model_name', 'create_model', 'data_config_for', 'freeze_backbone', 'set_train_mode']


def check_model_name(name: str) -> None:
    """A one-line error for an unknown model or pretrained tag, with close names."""
    base, _, tag = name.partition('.')
    if timm.is_model(base):
        if tag and name not in timm.list_pretrained(base + '.*'):
            tags = [n.partition('.')[2] for n in timm.list_pretrained(base + '.*')]
            raise FinetuneError(f"model {name!r}: unknown pretrained tag {tag!r}; {base} has "
                                f"{', '.join(tags) or 'none'}")
        return
    raise FinetuneError(unknown_model_message(name))


def check_export_layout(args: argparse.Namespace) -> None:
    """``--timm-native`` needs a model with a timm twin: said before any training, not at the export."""
    if args.timm_native and not args.no_export:
        check_model_name(args.model)
        try:
            timm_twin_of(args.model.partition('.')[0])
        except NoTimmTwinError as e:
            raise FinetuneError(f'--timm-native: {e}') from e


def _pretrained_source(args: argparse.Namespace) -> Dict[str, Any]:
    """``timm.create_model`` arguments for the starting weights; a local file is read by the package's
    ``read_state_dict``, so a pickle needs the same opt-in as everywhere else."""
    if not args.pretrained_file:
        return {'pretrained': bool(args.pretrained)}
    try:
        state_dict = read_state_dict(args.pretrained_file)
    except (HubLoadError, ValueError, OSError) as e:
        raise FinetuneError(f'--pretrained-file: {first_line(e)}') from e
    return {'pretrained': True, 'pretrained_cfg_overlay': {'state_dict': state_dict}}


def _build(args: argparse.Namespace, kwargs: Dict[str, Any]) -> nn.Module:
    """``timm.create_model``, passing ``img_size`` only to models that take it."""
    try:
        return timm.create_model(args.model, **kwargs)
    except TypeError as e:
        if 'img_size' in kwargs and "'img_size'" in str(e):
            return _build(args, {k: v for k, v in kwargs.items() if k != 'img_size'})
        raise FinetuneError(f'{args.model} does not accept these options: {first_line(e)}') from e
    except (FileNotFoundError, ConnectionError) as e:
        raise FinetuneError(f'could not get the pretrained weights of {args.model}: {first_line(e)}') from e
    except Exception as e:  # checkpoint filters raise ValueError/RuntimeError naming the keys
        if kwargs.get('pretrained'):
            source = args.pretrained_file or f"{args.model}'s Hub weights"
            raise FinetuneError(f'cannot load {source} into {args.model}: {first_line(e)}') from e
        raise


def _forward_fails(model: nn.Module, in_chans: int, size: int) -> Optional[Exception]:
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size))
    except (RuntimeError, ValueError, AssertionError) as e:
        return e
    return None


def _check_input_size(model: nn.Module, args: argparse.Namespace) -> None:
    """A one-line error naming the smallest size a model takes when it cannot take ``--img-size``."""
    size, default = args.img_size, int(model.pretrained_cfg.get('input_size', (3, 224, 224))[-1])
    if size is None or size == default:
        return
    was_training = model.training
    model.eval()
    try:
        error = _forward_fails(model, args.in_chans, size)
        if error is None:
            return
        if size > default or _forward_fails(model, args.in_chans, default) is not None:
            raise FinetuneError(f'{args.model} cannot take {size}x{size} images: {first_line(error)}')
        low, high = size, default  # fails at low, works at high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if _forward_fails(model, args.in_chans, middle) else (low, middle)
        raise FinetuneError(f'{args.model} cannot take {size}x{size} images: its minimum input size is '
                            f'{high}x{high} (pass --img-size {high} or more)')
    finally:
        model.train(was_training)


def create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The model of ``args`` for ``num_classes`` classes, with its starting weights, checked to take the
    data's image size."""
    check_model_name(args.model)
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=args.in_chans, **_pretrained_source(args))
    kwargs.update({name: getattr(args, name) for name in ('drop_rate', 'drop_path_rate', 'drop_block_rate')
                   if getattr(args, name)})
    if args.img_size is not None:
        kwargs['img_size'] = args.img_size
    model = _build(args, kwargs)
    _check_input_size(model, args)
    if args.initial_checkpoint:
        path = Path(args.initial_checkpoint)
        if not path.exists():
            raise FinetuneError(f'--initial-checkpoint {path} does not exist')
        try:
            load_weights(model, path)  # every key and shape checked; timm-named checkpoints filtered
        except (HubLoadError, ValueError, OSError) as e:
            raise FinetuneError(f'cannot load --initial-checkpoint {path} into {args.model}: {first_line(e)}') from e
    return model


def data_config_for(args: argparse.Namespace, model: nn.Module) -> Dict[str, Any]:
    """timm's data config of ``model`` (mean, std, crop, size), for ``--in-chans`` channels."""
    overrides: Dict[str, Any] = {'in_chans': args.in_chans}
    if args.img_size is not None:
        overrides['img_size'] = args.img_size
    cfg = dict(resolve_data_config(overrides, model=model))
    cfg['input_size'] = (args.in_chans, *tuple(cfg['input_size'])[1:])
    for key in ('mean', 'std'):
        values = tuple(float(x) for x in cfg[key])
        cfg[key] = values if len(values) == args.in_chans else (sum(values) / len(values),) * args.in_chans
    return cfg


def freeze_backbone(model: nn.Module) -> List[str]:
    """Train the classifier only; returns the names of the parameters left trainable."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        raise FinetuneError(f'--freeze-backbone: {type(model).__name__} has no classifier with parameters')
    for p in model.parameters():
        p.requires_grad_(False)
    for p in classifier.parameters():
        p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """Train mode; with a frozen backbone, eval mode (fixed BatchNorm statistics) but active dropout."""
    if not frozen_backbone:
        model.train()
        return
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()  # --drop-rate still regularises the probe
