"""``mlp_block``: the two-layer perceptron of a transformer block (Metalhead's ``mlp_block``)."""

from collections import OrderedDict
from typing import Optional

from torch import nn

from ._factory import ActivationArg, check_bool, check_positive_int, check_probability, create_activation


def mlp_block(dim: int, hidden_dim: int, act_layer: ActivationArg = 'gelu', drop: float = 0.0, *,
              out_dim: Optional[int] = None, bias: bool = True, device=None, dtype=None) -> nn.Sequential:
    """``Linear(dim, hidden_dim) → activation → Dropout → Linear(hidden_dim, out_dim) → Dropout``.

    Args:
        dim: input features (the token width).
        hidden_dim: width of the hidden layer (``mlp_ratio * dim`` in a ViT).
        act_layer: activation after the first layer: a timm name, a module class or instance, or a function.
        drop: dropout probability after each layer.
        out_dim: output features (defaults to ``dim``).
        bias: learn biases in both layers.

    Returns:
        An ``nn.Sequential`` with named entries ``fc1``, ``act``, ``drop1``, ``fc2``, ``drop2``
        (the names of timm's ``Mlp``, so weight names never depend on the dropout).
    """
    check_positive_int(dim, 'dim')
    check_positive_int(hidden_dim, 'hidden_dim')
    out_dim = dim if out_dim is None else check_positive_int(out_dim, 'out_dim')
    drop = check_probability(drop, 'drop', allow_none=False)
    check_bool(bias, 'bias')
    act = create_activation(act_layer, argname='act_layer')
    dd = dict(device=device, dtype=dtype)
    return nn.Sequential(OrderedDict([
        ('fc1', nn.Linear(dim, hidden_dim, bias=bias, **dd)),
        ('act', nn.Identity() if act is None else act),
        ('drop1', nn.Dropout(drop)),
        ('fc2', nn.Linear(hidden_dim, out_dim, bias=bias, **dd)),
        ('drop2', nn.Dropout(drop)),
    ]))


__all__ = ['mlp_block']
