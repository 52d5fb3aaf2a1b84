"""``flatten_chains``: nested ``nn.Sequential`` containers as one flat list of layers."""

from typing import Iterable, List, Union

from torch import nn


def flatten_chains(model: Union[nn.Module, Iterable[nn.Module]]) -> List[nn.Module]:
    """Every layer of ``model`` with nested ``nn.Sequential`` containers opened, in order (Metalhead's
    ``flatten_chains``), ``nn.Identity`` entries left out.

    Args:
        model: an ``nn.Sequential`` (possibly holding others), any other module (returned as ``[model]``), or a
            list / tuple of modules (what ``conv_norm`` returns).

    Returns:
        A list of modules to splat into ``nn.Sequential``; the modules themselves, not copies, so parameters
        are shared with ``model``.
    """
    if isinstance(model, nn.Sequential):
        children: Iterable = model.children()
    elif isinstance(model, (list, tuple)):
        children = model
    elif isinstance(model, nn.Module):
        return [] if isinstance(model, nn.Identity) else [model]
    else:
        raise TypeError(f'flatten_chains takes an nn.Module or a list of them, got {model!r} of type '
                        f'{type(model).__name__}')
    layers: List[nn.Module] = []
    for child in children:
        if not isinstance(child, (nn.Module, list, tuple)):
            raise TypeError(f'flatten_chains takes modules, got an entry {child!r} of type {type(child).__name__}')
        layers.extend(flatten_chains(child))
    return layers


__all__ = ['flatten_chains']
