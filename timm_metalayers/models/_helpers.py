"""Shared pieces of the model families: building through timm's factory, strict checkpoint remapping from
timm's names onto ours, and pretrained configs taken from timm's."""
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from timm.models import build_model_with_cfg, generate_default_cfgs

from ..hub.download import pretrained_weights_error
from ..state_dict import CheckpointMismatchError, check_state_dict, record_checkpoint_filter

Renamer = Callable[[str], Optional[str]]


def unwrap_state_dict(state_dict: Mapping) -> Mapping:
    """The state dict inside a training checkpoint (``{'state_dict': ...}`` or ``{'model': ...}``), or
    ``state_dict`` itself; anything but a mapping is a ``CheckpointMismatchError``."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(f'expected a state dict, got {type(state_dict).__name__}')
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']
    return state_dict


def remap_checkpoint(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        renamer: Renamer,
        *,
        reshape: Optional[Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Map a checkpoint in timm's naming (or already in ours) onto ``model``'s keys, strictly.

    Every checkpoint key must map onto a key of the model (``renamer`` may return None to drop a key on
    purpose), every model key must be provided, and every shape must match, except the classifier
    (which timm drops when ``num_classes`` differs) and the first conv (which timm adapts to ``in_chans``),
    both named by ``model.pretrained_cfg``. ``reshape(new_key, tensor, target)`` may convert a tensor
    (e.g. a 1x1 conv weight to a Linear weight). Raises ``CheckpointMismatchError`` naming the keys.
    """
    state_dict = unwrap_state_dict(state_dict)
    target = model.state_dict()
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifier = cfg.get('classifier') or ()
    first_conv = cfg.get('first_conv') or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    first_conv = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
    optional_prefixes = tuple(c + '.' for c in classifier)
    adaptable = {c + '.weight' for c in first_conv}

    ours = all(k in target for k in state_dict)
    out: Dict[str, torch.Tensor] = {}
    unmapped: List[str] = []
    for key, value in state_dict.items():
        new_key = key if ours else renamer(key)
        if new_key is None:
            continue
        if new_key in out:
            unmapped.append(f'{key} -> {new_key} (twice)')
            continue
        if new_key not in target and new_key != key:
            if not (new_key.startswith(optional_prefixes) or new_key.endswith('num_batches_tracked')):
                unmapped.append(f'{key} -> {new_key}')
                continue
        if reshape is not None and new_key in target and value.shape != target[new_key].shape:
            value = reshape(new_key, value, target[new_key])
        out[new_key] = value

    check_state_dict(
        out, model, source='checkpoint', unmapped=unmapped,
        may_miss=lambda k: k.endswith('num_batches_tracked') or k.startswith(optional_prefixes),
        may_differ=lambda k: k.startswith(optional_prefixes) or k in adaptable,
        # timm drops a classifier the model does not have
        may_be_extra=lambda k: k.startswith(optional_prefixes) or k.endswith('num_batches_tracked'))
    return out


def unknown_model_message(name: str) -> str:
    """``unknown model 'x'; did you mean a, b?``: the registered names closest to ``name`` (ours first)."""
    import difflib
    import timm
    candidates = list(dict.fromkeys(timm.list_models('metalayers_*') + timm.list_models()))
    close = difflib.get_close_matches(name, candidates, n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    return f"unknown model {name!r}{hint} (see timm.list_models('metalayers_*'))"


def init_kaiming(model: nn.Module, *, mode: str = 'fan_out', linear_std: Optional[float] = None,
                 zero_linear_bias: bool = False) -> None:
    """The usual CNN initialisation: Kaiming-normal conv weights (ReLU gain, ``mode`` ``"fan_out"`` or ``"fan_in"``)
    with zero biases. Linear layers keep PyTorch's default unless ``linear_std`` (weights ~ N(0, linear_std), zero
    biases) or ``zero_linear_bias`` is given."""
    if mode not in ('fan_out', 'fan_in'):
        raise ValueError(f'mode must be "fan_out" or "fan_in", got {mode!r}')
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity='relu')
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if module.bias is not None and (linear_std is not None or zero_linear_bias):
                nn.init.zeros_(module.bias)


def conv_to_linear(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``reshape`` hook: a 1x1 conv weight ``(out, in, 1, 1)`` as a Linear weight ``(out, in)``."""
    if value.dim() == 4 and target.dim() == 2 and value.shape[2:] == (1, 1):
        return value.flatten(1)
    return value


_CFG_FIELDS_NOT_COPIED = ('url', 'file', 'state_dict', 'hf_hub_filename', 'source', 'architecture', 'tag',
                          'custom_load', 'first_conv', 'classifier')


def timm_pretrained_cfg(timm_name: str, **overrides) -> Dict:
    """The pretrained config of one of timm's tags (``'resnet50.a1_in1k'``), for our twin of that model.

    Copies timm's preprocessing and provenance (input size, mean, std, crop, interpolation, licence, ...),
    points ``hf_hub_id`` at timm's Hub repository and ``hf_hub_filename`` at its ``model.safetensors``, and
    drops the download URL, so weights only ever come from the Hub as safetensors (a tag without weights,
    as timm's ``untrained``, stays without). ``overrides`` set our own fields (``first_conv``, ``classifier``).
    """
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        raise ValueError(f'timm has no pretrained config named {timm_name!r}')
    out = {k: v for k, v in cfg.to_dict(remove_source=False, remove_null=True).items()
           if k not in _CFG_FIELDS_NOT_COPIED}
    if cfg.has_weights:  # timm's ``untrained`` configs give input size etc. but no weights
        out['hf_hub_id'] = f'timm/{timm_name}'
        out['hf_hub_filename'] = 'model.safetensors'  # never fall back to a pickle checkpoint
    out.update(overrides)
    return out


def build_family_model(model_fn: Callable[..., nn.Module], variant: str, pretrained: bool,
                       checkpoint_filter_fn: Callable, *, feature_cfg: Optional[Dict] = None,
                       **kwargs) -> nn.Module:
    """``timm.models.build_model_with_cfg`` as every family here uses it: weights through the family's strict
    ``checkpoint_filter_fn``, and ``features_only`` through ``forward_intermediates`` (timm's getter).

    A failed download of the tag's pretrained weights (offline with an empty cache, no network, no such repo)
    is a one-line :class:`~timm_metalayers.hub.HubLoadError` subclass naming the tag, its Hub repository and
    the file, instead of huggingface_hub's generic message."""
    record_checkpoint_filter(variant, checkpoint_filter_fn)
    try:
        return build_model_with_cfg(model_fn, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                    feature_cfg=dict(feature_cls='getter', **(feature_cfg or {})), **kwargs)
    except Exception as e:
        error = pretrained_weights_error(e, variant, kwargs) if pretrained else None
        if error is None:
            raise
        raise error from e


def _untrained_cfg(arch: str, **overrides) -> Dict:
    """timm's config of an architecture it has no weights for (preprocessing only, nothing to download)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        raise ValueError(f'timm has no config for {arch!r}')
    out = {k: v for k, v in cfg.to_dict(remove_source=True, remove_null=True).items()
           if k not in _CFG_FIELDS_NOT_COPIED and k not in ('hf_hub_id', 'hf_hub_filename')}
    out.update(overrides)
    return out


def twin_pretrained_cfgs(tags: Dict[str, Sequence[str]], **overrides) -> Dict:
    """The ``default_cfgs`` of a family of twins: ``metalayers_<arch>.<tag>`` for every ``<arch>: [<tag>, ...]``
    of ``tags``, each timm's ``<arch>.<tag>`` config (``timm_pretrained_cfg``) with ``overrides``; the first tag is
    the default of ``metalayers_<arch>``. An architecture with no tags (timm has no weights for it) gets timm's
    untrained config, without weights."""
    cfgs = {}
    for arch, arch_tags in tags.items():
        if not arch_tags:
            cfgs[f'metalayers_{arch}'] = _untrained_cfg(arch, **overrides)
        for tag in arch_tags:
            cfgs[f'metalayers_{arch}.{tag}'] = timm_pretrained_cfg(f'{arch}.{tag}', **overrides)
    return generate_default_cfgs(cfgs)
