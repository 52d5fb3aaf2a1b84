"""Squeeze-and-excitation (Hu et al.), composed from ``conv_norm``, and its one-conv "effective" variant (eSE)."""
from typing import Optional

import torch
from torch import nn
from timm.layers import make_divisible

from ._factory import ActivationArg, NormArg, check_positive_int, create_activation
from .conv import conv_norm


class SqueezeExcite(nn.Module):
    """Scale each channel by a gate computed from the globally pooled input.

    ``reduce`` is a 1x1 ``conv_norm`` to ``rd_planes`` with ``act_layer``; ``expand`` a 1x1 ``conv_norm``
    back to ``inplanes`` with ``gate_layer``. Numerically timm's ``SEModule`` (``fc1``/``bn``/``act`` are
    ``reduce``, ``fc2``/``gate`` are ``expand``).

    Args:
        inplanes: number of channels of the input (and output).
        rd_planes: the squeezed width.
        act_layer: activation of the squeezed layer (any ``conv_norm`` activation form).
        gate_layer: the gate, e.g. ``"sigmoid"`` or ``"hard_sigmoid"`` (MobileNetV3).
        norm_layer: optional normalisation after the squeeze conv (None for none).
    """

    def __init__(self, inplanes: int, rd_planes: int, *, act_layer: ActivationArg = 'relu',
                 gate_layer: ActivationArg = 'sigmoid', norm_layer: NormArg = None):
        super().__init__()
        act = create_activation(act_layer, inplace=True, argname='act_layer')
        gate = create_activation(gate_layer, argname='gate_layer')
        self.reduce = nn.Sequential(*conv_norm(1, inplanes, rd_planes, act, norm_layer=norm_layer, bias=True))
        self.expand = nn.Sequential(*conv_norm(1, rd_planes, inplanes, gate, norm_layer=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.expand(self.reduce(x.mean((2, 3), keepdim=True)))


def squeeze_excite(inplanes: int, reduction: float = 16, *, rd_planes: Optional[int] = None, rd_divisor: int = 8,
                   round_limit: float = 0.0, act_layer: ActivationArg = 'relu',
                   gate_layer: ActivationArg = 'sigmoid', norm_layer: NormArg = None) -> SqueezeExcite:
    """A squeeze-and-excitation module for ``inplanes`` channels.

    Args:
        inplanes: number of channels of the input (and output).
        reduction: ratio of ``inplanes`` to the squeezed width.
        rd_planes: the squeezed width; by default ``inplanes / reduction`` rounded to ``rd_divisor``.
        rd_divisor, round_limit: rounding of the squeezed width (timm's ``make_divisible``).
        act_layer: activation of the squeezed layer.
        gate_layer: the gate, ``"sigmoid"`` or ``"hard_sigmoid"`` (MobileNetV3).
        norm_layer: optional normalisation after the squeeze conv.
    """
    check_positive_int(inplanes, 'inplanes')
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or reduction <= 0:
        raise ValueError(f'reduction must be a number > 0, got {reduction!r}')
    if rd_planes is None:
        rd_planes = make_divisible(inplanes / reduction, rd_divisor, round_limit=round_limit)
    check_positive_int(rd_planes, 'rd_planes')
    return SqueezeExcite(inplanes, rd_planes, act_layer=act_layer, gate_layer=gate_layer, norm_layer=norm_layer)


class EffectiveSqueezeExcite(nn.Module):
    """Scale each channel by ``gate(fc(mean over H, W))``: one biased 1x1 conv, no reduction (CenterMask's eSE).

    Build it with ``effective_squeeze_excite``. Parameter names are those of timm's ``EffectiveSEModule``
    (``fc.weight``, ``fc.bias``), so its weights load unchanged.
    """

    def __init__(self, fc: nn.Conv2d, gate: nn.Module):
        super().__init__()
        self.fc = fc
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


def effective_squeeze_excite(inplanes: int, *, gate_activation: ActivationArg = 'sigmoid') -> EffectiveSqueezeExcite:
    """The effective squeeze-and-excitation block of VoVNetV2 / CenterMask (https://arxiv.org/abs/1911.06667).

    Global average pool → 1x1 conv ``inplanes → inplanes`` with bias → ``gate_activation`` → multiply the input.

    Args:
        inplanes: number of channels of the input (and output).
        gate_activation: the gate; ``"sigmoid"`` as in Metalhead (timm's ``EffectiveSEModule`` defaults to
            ``"hard_sigmoid"``); any ``conv_norm`` activation form, None for no gate.
    """
    check_positive_int(inplanes, 'inplanes')
    gate = create_activation(gate_activation, argname='gate_activation')
    return EffectiveSqueezeExcite(nn.Conv2d(inplanes, inplanes, 1, bias=True), nn.Identity() if gate is None else gate)


__all__ = ['SqueezeExcite', 'squeeze_excite', 'EffectiveSqueezeExcite', 'effective_squeeze_excite']
