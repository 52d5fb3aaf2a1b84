"""Metalhead's connection functions: how a residual block joins its branches (``addact``, ``actadd``)."""

from typing import List, Optional, Union, overload

import torch
from torch import nn

from ._factory import ActivationArg, create_activation
from .drop import StochasticDepth


def _activation_module(activation: ActivationArg) -> nn.Module:
    # never in place: actadd applies it to the block's inputs, which others may still read
    act = create_activation(activation)
    return nn.Identity() if act is None else act


def _check_tensors(xs: tuple, who: str) -> List[torch.Tensor]:
    for i, x in enumerate(xs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{who} adds tensors; argument {i + 1} after the activation is {x!r} of type '
                            f'{type(x).__name__}')
    return list(xs)


class _Connection(nn.Module):
    """A join of a residual block's branches that holds its activation."""

    def __init__(self, activation: ActivationArg = 'relu'):
        super().__init__()
        self.act = _activation_module(activation)


class AddAct(_Connection):
    """``activation(x + y)``: sum the branches of a residual block, then activate (ResNet's join).

    Build it with ``addact(activation)``; call it with the two branches, ``connection(branch, shortcut)``.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.act(x + y)


class ActAdd(_Connection):
    """``activation(x) + activation(y)``: activate each branch of a residual block, then sum.

    Build it with ``actadd(activation)``; call it with the two branches, ``connection(branch, shortcut)``.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.act(x) + self.act(y)


@overload
def addact(activation: ActivationArg = 'relu') -> AddAct: ...


@overload
def addact(activation: ActivationArg, *xs: torch.Tensor) -> torch.Tensor: ...


def addact(activation: ActivationArg = 'relu', *xs: torch.Tensor) -> Union[AddAct, torch.Tensor]:
    """Metalhead's ``addact(activation, xs...) = activation(sum(xs))``.

    With tensors, returns ``activation(x1 + x2 + ...)``; with the activation alone, returns the ``AddAct``
    module (Metalhead's ``addact$activation``), a ``connection`` for a residual block that composes in
    ``nn.Sequential`` models and compiles.

    Args:
        activation: any ``conv_norm`` activation form (a timm name, a module, a function), None for none.
        xs: the tensors to add.
    """
    if not xs:
        return AddAct(activation)
    tensors = _check_tensors(xs, 'addact')
    total = tensors[0]
    for x in tensors[1:]:
        total = total + x
    return _activation_module(activation)(total)


@overload
def actadd(activation: ActivationArg = 'relu') -> ActAdd: ...


@overload
def actadd(activation: ActivationArg, *xs: torch.Tensor) -> torch.Tensor: ...


def actadd(activation: ActivationArg = 'relu', *xs: torch.Tensor) -> Union[ActAdd, torch.Tensor]:
    """Metalhead's ``actadd(activation, xs...) = sum(activation(x) for x in xs)``.

    With tensors, returns ``activation(x1) + activation(x2) + ...``; with the activation alone, returns the
    ``ActAdd`` module (Metalhead's ``actadd$activation``), a ``connection`` for a residual block.

    Args:
        activation: any ``conv_norm`` activation form, None for none (then a plain sum).
        xs: the tensors to activate and add.
    """
    if not xs:
        return ActAdd(activation)
    tensors = _check_tensors(xs, 'actadd')
    act = _activation_module(activation)
    total = act(tensors[0])
    for x in tensors[1:]:
        total = total + act(x)
    return total




class SkipConnection(nn.Module):
    """A residual block: ``x + drop_path(branch(x))`` (Flux's ``SkipConnection(branch, +)`` with stochastic
    depth on the branch, as Metalhead's ConvNeXt, ConvMixer and MLP mixers build their blocks).

    Args:
        branch: the residual branch (keeps its input's shape).
        drop_path: ``StochasticDepth`` probability of dropping the branch in training (None or 0: never);
            the ``drop_path`` child exists either way, so the keys do not depend on it.
    """

    def __init__(self, branch: nn.Module, drop_path: Optional[float] = 0.0):
        super().__init__()
        if not isinstance(branch, nn.Module):
            raise TypeError(f'branch must be an nn.Module, got {branch!r}')
        self.branch = branch
        self.drop_path = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.branch(x))


__all__ = ['addact', 'actadd', 'AddAct', 'ActAdd', 'SkipConnection']
