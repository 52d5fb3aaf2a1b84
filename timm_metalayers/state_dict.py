"""One comparison of a state dict against a model, and the errors of loading weights.

The checkpoint filters of the model families, the Hub loader and fine-tuning resume all check a state
dict with :func:`check_state_dict`, so a checkpoint that does not fit is reported the same way
everywhere: the keys with no place in the model, the keys the model needs and the checkpoint lacks, and
the shapes that differ, each named.
"""
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ['HubLoadError', 'CheckpointMismatchError', 'state_dict_problems', 'check_state_dict', 'key_listing',
           'model_name', 'record_checkpoint_filter', 'checkpoint_filter_of']

KeyTest = Callable[[str], bool]

# registered architecture name -> the checkpoint filter its family builds it with
_CHECKPOINT_FILTERS: Dict[str, Callable] = {}


def record_checkpoint_filter(architecture: str, filter_fn: Callable) -> None:
    """Remember which checkpoint filter maps timm's (or torchvision's) keys onto ``architecture``."""
    _CHECKPOINT_FILTERS[architecture] = filter_fn


def checkpoint_filter_of(model: nn.Module) -> Optional[Callable]:
    """The checkpoint filter of ``model``'s architecture (``None`` when none was recorded for it)."""
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    return _CHECKPOINT_FILTERS.get(arch) if isinstance(arch, str) else None


class HubLoadError(RuntimeError):
    """Base class of every error raised while loading weights into a model (from the Hub, a file,
    a checkpoint filter or a fine-tuning checkpoint)."""


class CheckpointMismatchError(HubLoadError, ValueError):
    """A state dict does not fit the model: keys with no place in it, keys it lacks or shapes that differ
    (all named in the message). Also a ``ValueError``, as timm's loaders expect of a filter."""


def key_listing(keys: Iterable[str], limit: int = 12) -> str:
    """``a, b, c, ... (n more)``: a bounded, readable list of keys for an error message."""
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def _never(key: str) -> bool:
    return False


def state_dict_problems(
        state_dict: Mapping[str, torch.Tensor],
        target: Mapping[str, torch.Tensor],
        *,
        may_miss: Optional[KeyTest] = None,
        may_differ: Optional[KeyTest] = None,
        may_be_extra: Optional[KeyTest] = None,
        unmapped: Sequence[str] = (),
) -> List[str]:
    """What keeps ``state_dict`` from loading into a model whose own state dict is ``target``.

    ``may_miss(key)``: a model key the checkpoint may leave out; ``may_differ(key)``: a key whose shape may
    differ (a head being replaced, a first conv being adapted); ``may_be_extra(key)``: a checkpoint key the
    model may lack. ``unmapped`` lists further checkpoint keys a renamer could not place. Returns one line
    per kind of problem, empty when the state dict fits.
    """
    may_miss, may_differ, may_be_extra = may_miss or _never, may_differ or _never, may_be_extra or _never
    extra = list(unmapped) + [k for k in state_dict if k not in target and not may_be_extra(k)]
    missing = [k for k in target if k not in state_dict and not may_miss(k)]
    wrong_shape = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}'
                   for k, v in state_dict.items()
                   if k in target and tuple(v.shape) != tuple(target[k].shape) and not may_differ(k)]
    problems = []
    if extra:
        problems.append(f'{len(extra)} checkpoint key(s) with no place in the model: {key_listing(extra)}')
    if missing:
        problems.append(f'{len(missing)} model key(s) the checkpoint does not provide: {key_listing(missing)}')
    if wrong_shape:
        problems.append(f'{len(wrong_shape)} shape mismatch(es): {key_listing(wrong_shape)}')
    return problems


def model_name(model: nn.Module) -> str:
    """The model's timm architecture name if it has one, else its class name."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('architecture') or type(model).__name__)


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        model: Union[nn.Module, Mapping[str, torch.Tensor]],
        *,
        source: str = 'checkpoint',
        **allowances,
) -> None:
    """Raise ``CheckpointMismatchError`` unless ``state_dict`` fits ``model`` (a module or its state dict).

    ``source`` names where the weights come from (a file, a repository); ``allowances`` are the keyword
    arguments of :func:`state_dict_problems`. The message names every offending key (up to a limit).
    """
    target = model.state_dict() if isinstance(model, nn.Module) else model
    problems = state_dict_problems(state_dict, target, **allowances)
    if problems:
        name = model_name(model) if isinstance(model, nn.Module) else 'the model'
        raise CheckpointMismatchError(f'{source} does not fit {name}: ' + '; '.join(problems))
