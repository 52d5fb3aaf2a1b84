"""MLP blocks of transformers and MLP mixers: ``mlp_block`` and gMLP's ``gated_mlp_block``."""

from collections import OrderedDict
from typing import Any, Callable, Optional

from torch import nn

from ._factory import ActivationArg, check_bool, check_positive_int, check_probability, create_activation

_UNSET: Any = object()  # "argument not given", where None is a meaningful value


def _one_of(metalhead_name: str, metalhead_value, timm_name: str, timm_value, default=_UNSET):
    """``(value, name)`` of the argument given under either name (the guide's or timm's); both is an error."""
    if metalhead_value is not _UNSET and timm_value is not _UNSET:
        raise TypeError(f'mlp_block got {metalhead_name}={metalhead_value!r} and {timm_name}={timm_value!r}: '
                        f'they are the same argument (the guide\'s and timm\'s name), give one')
    if metalhead_value is not _UNSET:
        return metalhead_value, metalhead_name
    if timm_value is not _UNSET:
        return timm_value, timm_name
    if default is _UNSET:
        raise TypeError(f'mlp_block needs {metalhead_name} (or timm\'s {timm_name})')
    return default, metalhead_name


def _two_layer_mlp(inplanes: int, hidden_planes: int, outplanes: int, activation: ActivationArg,
                   dropout_prob: float, bias: bool, gate: Optional[nn.Module], gated_planes: int,
                   device=None, dtype=None, act_argname: str = 'activation') -> nn.Sequential:
    """``fc1 → act → drop1 → [gate] → fc2 → drop2`` with timm's entry names."""
    act = create_activation(activation, argname=act_argname)
    dd = dict(device=device, dtype=dtype)
    layers = OrderedDict([
        ('fc1', nn.Linear(inplanes, hidden_planes, bias=bias, **dd)),
        ('act', nn.Identity() if act is None else act),
        ('drop1', nn.Dropout(dropout_prob)),
    ])
    if gate is not None:
        layers['gate'] = gate
    layers['fc2'] = nn.Linear(gated_planes, outplanes, bias=bias, **dd)
    layers['drop2'] = nn.Dropout(dropout_prob)
    return nn.Sequential(layers)


def _check_widths(inplanes: object, hidden_planes: object, outplanes: object, dropout_prob: object, bias: object,
                  names=('inplanes', 'hidden_planes', 'outplanes', 'dropout_prob')):
    """Validated ``(outplanes, dropout_prob)``, ``outplanes`` defaulting to ``inplanes``; errors use ``names``."""
    check_positive_int(inplanes, names[0])
    check_positive_int(hidden_planes, names[1])
    outplanes = inplanes if outplanes is None else check_positive_int(outplanes, names[2])
    dropout_prob = check_probability(dropout_prob, names[3], allow_none=False)
    check_bool(bias, 'bias')
    return outplanes, dropout_prob


def mlp_block(inplanes: int = _UNSET, hidden_planes: int = _UNSET, outplanes: Optional[int] = _UNSET,
              drop: float = _UNSET, *, dropout_prob: float = _UNSET, activation: ActivationArg = _UNSET,
              bias: bool = True, dim: int = _UNSET, hidden_dim: int = _UNSET, out_dim: Optional[int] = _UNSET,
              act_layer: ActivationArg = _UNSET, device=None, dtype=None) -> nn.Sequential:
    """``Linear(inplanes, hidden_planes) → activation → Dropout → Linear(hidden_planes, outplanes) → Dropout``.

    The guide's ``mlp_block(inplanes, hidden_planes, outplanes=inplanes; dropout_prob=0, activation=gelu)``;
    timm's names are accepted as well: ``mlp_block(dim, hidden_dim, act_layer='gelu', drop=0.0, *, out_dim)``.
    A third positional argument that is an int is ``outplanes``; anything else there (a name, a module,
    a function, None) is timm's positional ``act_layer``, and a fourth positional is the dropout.

    Args:
        inplanes (``dim``): input features (the token width).
        hidden_planes (``hidden_dim``): width of the hidden layer (``mlp_ratio * inplanes`` in a ViT).
        outplanes (``out_dim``): output features; ``inplanes`` by default.
        dropout_prob (``drop``): dropout probability after each layer.
        activation (``act_layer``): activation after the first layer: a timm name, a module class or instance,
            or a function; GELU by default.
        bias: learn biases in both layers.

    Returns:
        An ``nn.Sequential`` with named entries ``fc1``, ``act``, ``drop1``, ``fc2``, ``drop2``
        (the names of timm's ``Mlp``, so weight names never depend on the dropout).
    """
    if outplanes is not _UNSET and (isinstance(outplanes, bool) or not isinstance(outplanes, int)):
        if act_layer is not _UNSET:
            raise TypeError(f'mlp_block got act_layer twice: {outplanes!r} (third positional) and {act_layer!r}')
        outplanes, act_layer = _UNSET, outplanes
    inplanes, in_name = _one_of('inplanes', inplanes, 'dim', dim)
    hidden_planes, hidden_name = _one_of('hidden_planes', hidden_planes, 'hidden_dim', hidden_dim)
    outplanes, out_name = _one_of('outplanes', outplanes, 'out_dim', out_dim, None)
    dropout_prob, drop_name = _one_of('dropout_prob', dropout_prob, 'drop', drop, 0.0)
    activation, act_name = _one_of('activation', activation, 'act_layer', act_layer, 'gelu')
    outplanes, dropout_prob = _check_widths(inplanes, hidden_planes, outplanes, dropout_prob, bias,
                                            (in_name, hidden_name, out_name, drop_name))
    return _two_layer_mlp(inplanes, hidden_planes, outplanes, activation, dropout_prob, bias, None, hidden_planes,
                          device, dtype, act_argname=act_name)


def gated_mlp_block(gate_layer: Optional[Callable[[int], nn.Module]], inplanes: int, hidden_planes: int,
                    outplanes: Optional[int] = None, *, dropout_prob: float = 0.0, activation: ActivationArg = 'gelu',
                    bias: bool = True, device=None, dtype=None) -> nn.Sequential:
    """gMLP's channel MLP with a gate in the middle ("Pay Attention to MLPs", https://arxiv.org/abs/2105.08050).

    ``Linear(inplanes, hidden_planes) → activation → Dropout → gate_layer(hidden_planes) →
    Linear(hidden_planes // 2, outplanes) → Dropout``. The gate halves the width, as gMLP's
    ``SpatialGatingUnit`` does (pass ``lambda planes: SpatialGatingUnit(planes, npatches)``).

    Args:
        gate_layer: a callable ``planes -> nn.Module`` building the gate for ``hidden_planes`` features; None or
            ``nn.Identity`` (Metalhead's ``identity``) gives a plain ``mlp_block``.
        inplanes: input features.
        hidden_planes: width of the first layer; even, since the gate keeps half of it.
        outplanes: output features; ``inplanes`` by default.
        dropout_prob: dropout probability after each layer.
        activation: activation after the first layer.
        bias: learn biases in both layers.

    Returns:
        An ``nn.Sequential`` with named entries ``fc1``, ``act``, ``drop1``, ``gate``, ``fc2``, ``drop2``
        (timm's ``GatedMlp`` names).
    """
    outplanes, dropout_prob = _check_widths(inplanes, hidden_planes, outplanes, dropout_prob, bias)
    if gate_layer is None or gate_layer is nn.Identity:
        return _two_layer_mlp(inplanes, hidden_planes, outplanes, activation, dropout_prob, bias, None, hidden_planes,
                              device, dtype)
    if hidden_planes % 2:
        raise ValueError(f'hidden_planes must be even for a gated MLP (the gate keeps half), got {hidden_planes}')
    if not callable(gate_layer) or isinstance(gate_layer, nn.Module):
        raise TypeError(f'gate_layer must be a callable planes -> nn.Module (e.g. lambda planes: '
                        f'SpatialGatingUnit(planes, npatches)) or None, got {gate_layer!r}')
    gate = gate_layer(hidden_planes)
    if not isinstance(gate, nn.Module):
        raise TypeError(f'gate_layer returned {gate!r} for {hidden_planes} planes; it must return an nn.Module')
    return _two_layer_mlp(inplanes, hidden_planes, outplanes, activation, dropout_prob, bias, gate,
                          hidden_planes // 2, device, dtype)


__all__ = ['mlp_block', 'gated_mlp_block']
