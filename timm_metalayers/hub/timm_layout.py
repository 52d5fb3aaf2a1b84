"""Our weights in timm's own layout, for the architectures that are twins of timm's.

A ``metalayers_<name>`` model whose architecture is timm's ``<name>`` can be handed over as timm's model: its
family's checkpoint filter maps timm's keys onto ours, and :func:`to_timm_model` runs that mapping backwards,
tensor for tensor, into a freshly built timm model. The result is checked both ways before it is returned: the
filter maps the timm model's weights back onto exactly ours (bit for bit), and both models give the same logits.
"""
import copy
from typing import Callable, Dict, Optional, Tuple

import timm
import torch
from timm.models._input import get_model_args, get_model_input_config
from torch import nn

from ..state_dict import checkpoint_filter_of

__all__ = ['NoTimmTwinError', 'timm_twin_of', 'timm_twin_name', 'timm_state_dict', 'to_timm_model']

PREFIX = 'metalayers_'
# the construction arguments a timm twin shares with ours; everything else of ours must leave the logits as timm's
_SHARED_ARGS = ('num_classes', 'in_chans', 'global_pool', 'img_size')


class NoTimmTwinError(ValueError):
    """The model's architecture has no timm counterpart its weights could be written for."""


def timm_twin_of(architecture: str) -> str:
    """The timm architecture a registered ``metalayers_*`` architecture is a twin of, by name."""
    from ..models._torchvision import TORCHVISION_TWINS
    name = architecture[len(PREFIX):] if architecture.startswith(PREFIX) else None
    if architecture in TORCHVISION_TWINS:
        why = f"its twin is torchvision's {TORCHVISION_TWINS[architecture][0]}, which timm does not have"
    elif name is None or not timm.is_model(architecture) or not timm.is_model(name):
        why = f'timm has no architecture named {name or architecture!r}'
    else:
        return name
    raise NoTimmTwinError(f"{architecture} has no timm twin ({why}), so it cannot be saved in timm's layout")


def timm_twin_name(model: nn.Module) -> str:
    """The timm architecture ``model`` is a twin of (``metalayers_resnet50`` -> ``resnet50``)."""
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if not isinstance(arch, str) or checkpoint_filter_of(model) is None:
        raise NoTimmTwinError(
            f'a {type(model).__name__} whose pretrained_cfg architecture is {arch!r} has no timm twin: only the '
            f'registered {PREFIX}* architectures that are copies of a timm architecture can be saved in timm\'s layout')
    return timm_twin_of(arch)


def _timm_args(model: nn.Module) -> Dict:
    args = get_model_args(model)
    return {k: args[k] for k in _SHARED_ARGS if k in args}


def _source_keys(filter_fn: Callable, timm_shapes: Dict[str, torch.Size], model: nn.Module) -> Dict[str, str]:
    """``{timm key: our key}``: what the filter makes of each of timm's tensors, traced on the meta device."""
    probes = {k: torch.empty(shape, device='meta') for k, shape in timm_shapes.items()}
    owner = {id(t): k for k, t in probes.items()}
    mapped = filter_fn(probes, model)
    sources: Dict[str, str] = {}
    for our_key, tensor in mapped.items():
        timm_key = owner.get(id(tensor)) or owner.get(id(tensor._base))
        if timm_key is None:
            raise NoTimmTwinError(f'the checkpoint filter of {type(model).__name__} computes {our_key!r} instead of '
                                  f'moving one of timm\'s tensors, so it cannot be run backwards')
        sources[timm_key] = our_key
    return sources


def timm_state_dict(model: nn.Module, timm_model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model``'s weights under ``timm_model``'s keys and shapes (the family filter run backwards)."""
    filter_fn = checkpoint_filter_of(model)
    target = timm_model.state_dict()
    ours = model.state_dict()
    sources = _source_keys(filter_fn, {k: v.shape for k, v in target.items()}, model)
    missing = [k for k in target if k not in sources and not k.endswith('num_batches_tracked')]
    if missing:
        raise NoTimmTwinError(f'{len(missing)} of timm\'s tensors have no counterpart in {type(model).__name__}: '
                              f'{", ".join(missing[:5])}')
    out = {}
    for timm_key, value in target.items():
        source = sources.get(timm_key)
        out[timm_key] = value if source is None else ours[source].detach().reshape(value.shape).clone()
    return out


def _same_logits(model: nn.Module, timm_model: nn.Module) -> Tuple[bool, float]:
    current = get_model_input_config(model)  # the size a fixed-size model was built for, else a small one
    size = current['input_size'] if current['fixed_input_size'] else (
        current['input_size'][0], *[max(64, s) for s in (model.pretrained_cfg.get('min_input_size') or (0, 0, 0))[1:]])
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours, theirs = model(x), timm_model(x)
    finally:
        model.train(was_training)
    scale = float(ours.abs().max()) or 1.0
    diff = float((ours - theirs).abs().max())
    return ours.shape == theirs.shape and diff <= 1e-4 * scale + 1e-6, diff


def to_timm_model(model: nn.Module, *, check_logits: bool = True) -> nn.Module:
    """timm's own model of ``model``'s architecture, holding ``model``'s weights (in eval mode, on the CPU).

    Its ``pretrained_cfg`` is ``model``'s with timm's architecture name. Raises :class:`NoTimmTwinError` when the
    architecture has no timm twin, or when this model was built with options timm's lacks (its weights do not
    map, or the logits differ: ``check_logits``).
    """
    name = timm_twin_name(model)
    args = _timm_args(model)
    model_cpu = model if next(model.parameters()).device.type == 'cpu' else copy.deepcopy(model).to('cpu')
    try:
        twin = timm.create_model(name, pretrained=False, **args)
    except Exception as e:
        raise NoTimmTwinError(f"timm's {name} cannot be built with {args}: {e}") from e
    try:
        state_dict = timm_state_dict(model_cpu, twin)
        twin.load_state_dict(state_dict, strict=True)
    except NoTimmTwinError:
        raise
    except Exception as e:
        raise NoTimmTwinError(f"the weights of {type(model).__name__} do not fit timm's {name}{args}: {e}") from e
    back = checkpoint_filter_of(model)(twin.state_dict(), model_cpu)
    ours = model_cpu.state_dict()
    if set(back) != set(ours) or not all(torch.equal(back[k], ours[k]) for k in ours):
        raise NoTimmTwinError(f"timm's {name} layout does not round-trip to {type(model).__name__}'s weights")
    twin.eval()
    if check_logits:
        same, diff = _same_logits(model_cpu, twin)
        if not same:
            raise NoTimmTwinError(
                f"{model.pretrained_cfg['architecture']} as built here is not timm's {name}: with the same weights "
                f'the logits differ by {diff:.3g} (built with options timm\'s architecture does not have?)')
    twin.pretrained_cfg = {**model.pretrained_cfg, 'architecture': name}
    return twin

