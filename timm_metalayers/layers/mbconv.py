"""Mobile blocks: ``dwsep_conv_norm`` (depthwise-separable conv), ``mbconv`` (the inverted residual) and
``fused_mbconv`` (EfficientNetV2's fused inverted residual), all composed from ``conv_norm``."""
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ._factory import ActivationArg, NormArg, check_bool, check_positive_int, check_probability
from .conv import PadArg, conv_norm
from .drop import StochasticDepth
from .squeeze_excite import squeeze_excite

class _Same:
    """Default of ``pw_activation``: the same activation as the depthwise conv."""

    def __repr__(self) -> str:
        return '<same as activation>'


_SAME = _Same()

# What MobileNetV3 (and timm's EfficientNet family) uses for the SE of an inverted residual:
# ReLU squeeze, hard-sigmoid gate, squeezed width rounded to a multiple of 8 (never below 90 %).
MBCONV_SE_DEFAULTS: Dict[str, Any] = dict(act_layer='relu', gate_layer='hard_sigmoid', rd_divisor=8, round_limit=0.9)


def dwsep_conv_norm(
        kernel_size: Union[int, Tuple[int, int]],
        inplanes: int,
        outplanes: int,
        activation: ActivationArg = 'relu',
        *,
        pw_activation: ActivationArg = _SAME,
        norm_layer: NormArg = nn.BatchNorm2d,
        stride: int = 1,
        pad: PadArg = 0,
        dilation: int = 1,
        bias: Optional[bool] = None,
) -> List[nn.Module]:
    """A depthwise-separable convolution (MobileNetV1, Fig. 3), as a list to splat into ``nn.Sequential``.

    The list is ``conv_norm(kernel_size, inplanes, inplanes, groups=inplanes, stride, pad, dilation)``
    (the depthwise conv, its norm and ``activation``) followed by ``conv_norm(1, inplanes, outplanes)``
    (the pointwise conv, its norm and ``pw_activation``).

    Args:
        kernel_size: size of the depthwise kernel (an int or ``(kh, kw)``).
        inplanes: number of input feature maps.
        outplanes: number of output feature maps.
        activation: activation after the depthwise conv (and, by default, after the pointwise conv).
        pw_activation: activation after the pointwise conv; by default the same as ``activation``
            (as Metalhead's ``dwsep_conv_norm``), None for a linear projection (timm's DS block).
        norm_layer: normalisation layer of both convs (see ``conv_norm``); None for none.
        stride, pad, dilation: of the depthwise conv (``pad`` may be ``"same"``); the pointwise conv has none.
        bias: bias of both convs; by default only when there is no normalisation layer.

    Returns:
        ``[dw_conv, dw_norm, dw_act, pw_conv, pw_norm, pw_act]`` (entries that are None left out).
    """
    check_positive_int(inplanes, 'inplanes')
    if pw_activation is _SAME:
        pw_activation = activation
    return [
        *conv_norm(kernel_size, inplanes, inplanes, activation, norm_layer=norm_layer, stride=stride, pad=pad,
                   dilation=dilation, groups=inplanes, bias=bias),
        *conv_norm(1, inplanes, outplanes, pw_activation, norm_layer=norm_layer, bias=bias),
    ]


class MBConv(nn.Module):
    """An inverted residual block: expand 1x1 → depthwise kxk → [squeeze-excite] → project 1x1 [+ input].

    Build it with ``mbconv``. Every part is a named submodule, so parameter names depend only on the
    architecture: ``expand`` / ``dw`` / ``project`` are ``nn.Sequential(*conv_norm(...))``, ``se`` a
    ``SqueezeExcite``, ``drop_path`` a ``StochasticDepth`` on the residual branch. Parts a block does
    not have (``expand`` when ``explanes == inplanes``, ``se`` without a reduction, ``drop_path`` without
    a residual) are ``nn.Identity``.
    """

    def __init__(self, expand: nn.Module, dw: nn.Module, se: nn.Module, project: nn.Module,
                 drop_path: nn.Module, has_skip: bool):
        super().__init__()
        self.expand = expand
        self.dw = dw
        self.se = se
        self.project = project
        self.drop_path = drop_path
        self.has_skip = check_bool(has_skip, 'has_skip')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.expand(x)
        x = self.dw(x)
        x = self.se(x)
        x = self.project(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x

    def extra_repr(self) -> str:
        return f'has_skip={self.has_skip}'


class FusedMBConv(MBConv):
    """A fused inverted residual block: full kxk conv → [squeeze-excite] → project 1x1 [+ input].

    Build it with ``fused_mbconv``. The named parts are ``MBConv``'s, with ``dw`` always an ``nn.Identity``:
    ``expand`` is the full (not depthwise) ``conv_norm`` that carries the stride, ``project`` the linear 1x1
    ``conv_norm`` (an ``nn.Identity`` in the expansion-1 form, where ``expand`` maps straight to ``outplanes``).
    """

    def __init__(self, expand: nn.Module, se: nn.Module, project: nn.Module, drop_path: nn.Module, has_skip: bool):
        super().__init__(expand, nn.Identity(), se, project, drop_path, has_skip)


def _inverted_residual(name: str, fused: bool, doc: str) -> Callable[..., MBConv]:
    """The builder ``mbconv`` (``fused=False``) or ``fused_mbconv`` (True): one signature and one set of argument
    checks for both blocks, each building its own convs (see their docstrings)."""

    def build(
            kernel_size: Union[int, Tuple[int, int]],
            inplanes: int,
            explanes: int,
            outplanes: int,
            activation: ActivationArg = 'relu',
            *,
            stride: int = 1,
            reduction: Optional[float] = None,
            se_kwargs: Optional[Dict[str, Any]] = None,
            norm_layer: NormArg = nn.BatchNorm2d,
            pad: PadArg = 'symmetric',
            dilation: int = 1,
            drop_path_prob: Optional[float] = None,
            no_skip: bool = False,
    ) -> MBConv:
        check_positive_int(inplanes, 'inplanes')
        check_positive_int(explanes, 'explanes')
        check_positive_int(outplanes, 'outplanes')
        check_positive_int(stride, 'stride')
        check_bool(no_skip, 'no_skip')
        drop_path_prob = check_probability(drop_path_prob, 'drop_path_prob')
        has_skip = stride == 1 and inplanes == outplanes and not no_skip
        if drop_path_prob and not has_skip:
            raise ValueError(f'drop_path_prob={drop_path_prob} needs a residual connection (stride 1, inplanes == '
                             f'outplanes, no_skip=False); got stride={stride}, inplanes={inplanes}, '
                             f'outplanes={outplanes}, no_skip={no_skip}')
        if se_kwargs is not None and not isinstance(se_kwargs, dict):
            raise TypeError(f'se_kwargs must be a dict of squeeze_excite options or None, got {se_kwargs!r}')
        # the fused conv of the expansion-1 form maps straight to outplanes
        conv_planes = (outplanes if explanes == inplanes else explanes) if fused else explanes
        if reduction is not None:
            se: nn.Module = squeeze_excite(conv_planes, reduction, **{**MBCONV_SE_DEFAULTS, **(se_kwargs or {})})
        elif se_kwargs:
            raise ValueError(f'se_kwargs={se_kwargs!r} given without a reduction: pass reduction= to add the SE')
        else:
            se = nn.Identity()
        drop_path: nn.Module = StochasticDepth(drop_path_prob) if has_skip else nn.Identity()

        def conv(k, cin, cout, act, **kwargs) -> nn.Sequential:
            return nn.Sequential(*conv_norm(k, cin, cout, act, norm_layer=norm_layer, **kwargs))
        if fused:
            expand = conv(kernel_size, inplanes, conv_planes, activation, stride=stride, pad=pad, dilation=dilation)
            project = nn.Identity() if explanes == inplanes else conv(1, explanes, outplanes, None)
            return FusedMBConv(expand, se, project, drop_path, has_skip)
        expand = nn.Identity() if explanes == inplanes else conv(1, inplanes, explanes, activation)
        dw = conv(kernel_size, explanes, explanes, activation, stride=stride, pad=pad, dilation=dilation,
                  groups=explanes)
        return MBConv(expand, dw, se, conv(1, explanes, outplanes, None), drop_path, has_skip)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


mbconv = _inverted_residual('mbconv', False, """
The inverted residual block of MobileNetV2/V3 and EfficientNet ("MBConv"), from ``conv_norm``.

``expand``: 1x1 ``conv_norm`` ``inplanes → explanes`` with ``activation`` (left out when
``explanes == inplanes``, which makes the block a depthwise-separable conv, as MobileNetV3's first block);
``dw``: ``kernel_size`` depthwise ``conv_norm`` on ``explanes`` with ``stride`` and ``activation``;
``se``: ``squeeze_excite(explanes, reduction)`` when ``reduction`` is given;
``project``: 1x1 ``conv_norm`` ``explanes → outplanes`` without activation (a linear bottleneck).
With ``stride == 1`` and ``inplanes == outplanes`` the input is added back, the branch going through
``StochasticDepth(drop_path_prob)`` first (the module is there even for p = 0, so names never
depend on the drop rate).

Args:
    kernel_size: depthwise kernel size (an int or ``(kh, kw)``).
    inplanes: number of input feature maps.
    explanes: number of expanded feature maps (the depthwise width).
    outplanes: number of output feature maps.
    activation: activation of the expansion and depthwise convs.
    stride: stride of the depthwise conv.
    reduction: squeeze-excite reduction of ``explanes`` (4 in MobileNetV3); None for no SE.
    se_kwargs: options of ``squeeze_excite``, over ``MBCONV_SE_DEFAULTS``
        (ReLU squeeze, hard-sigmoid gate, width rounded to a multiple of 8 as timm's MobileNetV3).
    norm_layer: normalisation layer of every conv (see ``conv_norm``).
    pad, dilation: of the depthwise conv; ``"symmetric"`` (default, timm's and Flux's ``SamePad``) keeps
        ``H / stride``; ``"same"`` is TensorFlow's (asymmetric at stride 2, for TF-ported weights).
    drop_path_prob: stochastic-depth probability of the residual branch; needs a residual.
    no_skip: never add the input back, even when the shapes allow it.

Returns:
    An ``MBConv`` module.
""")

fused_mbconv = _inverted_residual('fused_mbconv', True, """
EfficientNetV2's fused inverted residual ("Fused-MBConv", timm's ``EdgeResidual``), from ``conv_norm``.

``expand``: ``kernel_size`` full ``conv_norm`` ``inplanes → explanes`` with ``stride`` and ``activation``
(it replaces MBConv's 1x1 expansion and depthwise conv);
``se``: ``squeeze_excite(explanes, reduction)`` when ``reduction`` is given;
``project``: 1x1 ``conv_norm`` ``explanes → outplanes`` without activation.
With ``explanes == inplanes`` (expansion 1) the block is a single ``conv_norm`` ``inplanes → outplanes``
with ``activation`` and no projection, as Metalhead's ``fused_mbconv`` and timm's ``ConvBnAct`` stage of
EfficientNetV2. With ``stride == 1`` and ``inplanes == outplanes`` the input is added back after
``StochasticDepth(drop_path_prob)``, as ``mbconv`` does.

Args:
    kernel_size: kernel size of the fused conv (an int or ``(kh, kw)``).
    inplanes: number of input feature maps.
    explanes: number of expanded feature maps; ``inplanes`` for the expansion-1 form.
    outplanes: number of output feature maps.
    activation: activation of the fused conv.
    stride: stride of the fused conv.
    reduction: squeeze-excite reduction of the fused conv's output width; None for no SE.
    se_kwargs: options of ``squeeze_excite``, over ``MBCONV_SE_DEFAULTS``.
    norm_layer: normalisation layer of every conv (see ``conv_norm``).
    pad, dilation: of the fused conv; ``"symmetric"`` (default) keeps ``H / stride``, ``"same"`` is TF's.
    drop_path_prob: stochastic-depth probability of the residual branch; needs a residual.
    no_skip: never add the input back, even when the shapes allow it.

Returns:
    A ``FusedMBConv`` module.
""")


__all__ = ['dwsep_conv_norm', 'mbconv', 'MBConv', 'fused_mbconv', 'FusedMBConv', 'MBCONV_SE_DEFAULTS']
