"""Turn the guide's flexible ``activation`` / ``norm_layer`` arguments into modules."""

import inspect
import math
import numbers
from typing import Callable, Optional, Union

import torch
from torch import nn
from timm.layers import get_act_layer, get_norm_layer

ActivationArg = Union[None, str, type, nn.Module, Callable[[torch.Tensor], torch.Tensor]]
NormArg = Union[None, str, type, Callable[[int], nn.Module]]


class ActivationFn(nn.Module):
    """Wraps a plain function on tensors (``torch.tanh``, a lambda, ...) so it can sit in ``nn.Sequential``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, '__name__', repr(self.fn))


def create_activation(activation: ActivationArg, *, inplace: bool = False,
                      argname: str = 'activation') -> Optional[nn.Module]:
    """Build an activation module from a timm name, a module class, an instance or a tensor function.

    Returns None for ``None``, ``''`` or ``'identity'`` so callers can leave the entry out.
    """
    if activation is None:
        return None
    if isinstance(activation, str):
        if activation.lower() in ('', 'identity', 'linear'):
            return None
        try:
            act_cls = get_act_layer(activation)
        except KeyError:
            raise ValueError(f'{argname}={activation!r} is not an activation name timm knows '
                             f'(e.g. "relu", "gelu", "silu", "hard_swish")') from None
        return _instantiate_act(act_cls, inplace)
    if isinstance(activation, nn.Module):
        return activation
    if inspect.isclass(activation):
        if not issubclass(activation, nn.Module):
            raise TypeError(f'{argname}={activation!r} is a class but not an nn.Module subclass')
        if activation is nn.Identity:
            return None
        return _instantiate_act(activation, inplace)
    if callable(activation):
        return ActivationFn(activation)
    raise TypeError(f'{argname} must be a name, an nn.Module class or instance, a callable or None, '
                    f'got {activation!r} of type {type(activation).__name__}')


def _instantiate_act(act_cls: Callable[..., nn.Module], inplace: bool) -> nn.Module:
    if inplace:
        try:
            return act_cls(inplace=True)
        except TypeError:
            pass
    return act_cls()


def resolve_norm_layer(norm_layer: NormArg, *, argname: str = 'norm_layer') -> Optional[Callable[[int], nn.Module]]:
    """Turn ``norm_layer`` into a ``planes -> nn.Module`` factory, or None for "no normalisation".

    Accepts a class, any callable taking the number of planes, or a name timm's norm factory knows.
    """
    if norm_layer is None or norm_layer is nn.Identity:
        return None
    if isinstance(norm_layer, str):
        if not norm_layer or norm_layer.lower() == 'identity':
            return None
        try:
            return get_norm_layer(norm_layer)
        except KeyError:
            raise ValueError(f'{argname}={norm_layer!r} is not a normalisation name timm knows '
                             f'(e.g. "batchnorm2d", "groupnorm", "layernorm2d")') from None
    if isinstance(norm_layer, nn.Module):
        raise TypeError(f'{argname} must build a layer for a number of planes (a class or a callable), '
                        f'got the module instance {norm_layer!r}')
    if inspect.isclass(norm_layer) and not issubclass(norm_layer, nn.Module):
        raise TypeError(f'{argname}={norm_layer!r} is a class but not an nn.Module subclass')
    if not callable(norm_layer):
        raise TypeError(f'{argname} must be a class, a callable planes -> nn.Module, a name or None, '
                        f'got {norm_layer!r} of type {type(norm_layer).__name__}')
    return norm_layer


def resolve_norm_act_layer(norm_layer: NormArg, act_layer: ActivationArg, *, argname: str = 'norm_layer'
                           ) -> Optional[Callable[[int], nn.Module]]:
    """A ``planes -> nn.Module`` factory of ``norm_layer`` followed by ``act_layer`` in one module (Flux's
    ``BatchNorm(planes, relu)``; timm's ``BatchNormAct2d`` and kin), or None for "no normalisation".

    For pre-activation blocks: ``conv_norm(..., activation=None, revnorm=True, norm_layer=<this>)`` is
    norm → act → conv. The state-dict keys are those of ``norm_layer``.
    """
    from timm.layers import get_norm_act_layer
    factory = resolve_norm_layer(norm_layer, argname=argname)
    if factory is None:
        return None
    try:
        return get_norm_act_layer(factory, act_layer=act_layer)
    except (AssertionError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f'{argname}={norm_layer!r} with act_layer={act_layer!r} has no fused norm + activation '
                         f'layer in timm ({error})') from None


def create_norm(norm_factory: Callable[[int], nn.Module], planes: int, *, argname: str = 'norm_layer') -> nn.Module:
    """Call a norm factory for ``planes`` and check that it returned a module."""
    layer = norm_factory(planes)
    if not isinstance(layer, nn.Module):
        raise TypeError(f'{argname} returned {layer!r} for {planes} planes; it must return an nn.Module')
    return layer


def check_bool(value: object, argname: str) -> bool:
    """Return ``value`` if it is True or False (not 1, not "yes"), else raise a clear error."""
    if not isinstance(value, bool):
        raise TypeError(f'{argname} must be True or False, got {value!r}')
    return value


def check_positive_int(value: object, argname: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is an int > 0 (or >= 0), else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{argname} must be an int, got {value!r} of type {type(value).__name__}')
    if value < 0 or (value == 0 and not allow_zero):
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(f'{argname} must be {bound}, got {value}')
    return value


def check_probability(value: object, argname: str, *, allow_none: bool = True) -> Optional[float]:
    """Return ``value`` as a float in [0, 1] (or None when allowed), else raise a clear error."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{argname} must be a float in [0, 1]{" or None" if allow_none else ""}, '
                        f'got {value!r} of type {type(value).__name__}')
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'{argname} must be in [0, 1], got {value}')
    return float(value)


def check_real(value: object, argname: str) -> float:
    """Return ``value`` as a float if it is a finite real number (not a bool, NaN or infinity), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'{argname} must be a number, got {value!r} of type {type(value).__name__}')
    if not math.isfinite(value):
        raise ValueError(f'{argname} must be a finite number, got {value}')
    return float(value)


def pair(value: object, argname: str) -> tuple:
    """An int or a 2-tuple of ints as a 2-tuple of positive ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f'{argname} must be an int or a pair of ints, got {value!r}')
        return tuple(check_positive_int(v, argname) for v in value)
    v = check_positive_int(value, argname)
    return (v, v)


__all__ = ['ActivationFn', 'create_activation', 'resolve_norm_layer', 'create_norm']
