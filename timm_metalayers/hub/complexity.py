"""What a model card reports about a model: parameters, MACs and the ``timm_metalayers`` layers it is built from."""
import sys
from typing import List, Optional, Sequence

import timm
import torch
from torch import nn

from ._checks import check_module

__all__ = ['count_params', 'count_macs', 'layers_used']


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device too)."""
    return sum(p.numel() for p in check_module(model).parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (C, H, W), as FLOPs / 2.

    Runs on the meta device with ``torch.utils.flop_counter.FlopCounterMode``: no real compute,
    and the model's own tensors are not touched (meta stand-ins are passed with ``functional_call``).
    """
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    check_module(model)
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


def layers_used(model: nn.Module, architecture: Optional[str] = None) -> List[str]:
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

