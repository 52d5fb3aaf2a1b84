"""Xception (Chollet, 2017) built from ``timm_metalayers.layers``: timm's ``legacy_xception``.

As Metalhead's ``xception``: a ``conv_norm`` stem, then the entry flow (three ``xception_block`` with stride 2),
the middle flow (eight ``xception_block`` of 728 maps) and the exit flow (a strided ``xception_block`` and two
``dwsep_conv_norm``), and a ``create_classifier`` head. Each ``xception_block`` adds its ``skip`` (a strided
1x1 ``conv_norm`` when the shape changes) to a chain of ReLU → depthwise-separable conv → norm.
Paper: https://arxiv.org/abs/1610.02357
"""
import re
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from timm.models import register_model

from ..layers import conv_norm, create_norm, dwsep_conv_norm, resolve_norm_layer
from ..layers._factory import check_bool, check_positive_int, create_activation
from ._base import ModelArgs, NumberedBlocks, TimmModel
from ._helpers import build_family_model, init_kaiming, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['Xception', 'XceptionBlock', 'xception', 'xception_block', 'separable_conv_norm']


def separable_conv_norm(inplanes: int, outplanes: int, activation: Any = None, *, norm_layer: Any = nn.BatchNorm2d
                        ) -> List[nn.Module]:
    """A 3x3 depthwise-separable conv with one norm after the pointwise conv (as Xception and timm; Metalhead's
    ``dwsep_conv_norm`` also normalises the depthwise output): ``[depthwise, pointwise, norm, act]``."""
    factory = resolve_norm_layer(norm_layer)
    layers = dwsep_conv_norm(3, inplanes, outplanes, None, norm_layer=None, pad=1, bias=False)
    if factory is not None:
        layers.append(create_norm(factory, outplanes))
    act = create_activation(activation, inplace=True)
    return layers + ([act] if act is not None else [])


class XceptionBlock(nn.Module):
    """``rep(x) + skip(x)``: Metalhead's ``Parallel(+, skip, layers)``."""

    def __init__(self, rep: List[nn.Module], skip: nn.Module):
        super().__init__()
        self.rep = nn.Sequential(*rep)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rep(x)
        out += self.skip(x)
        return out


def xception_block(inplanes: int, outplanes: int, nrepeats: int, *, stride: int = 1, start_with_relu: bool = True,
                   grow_first: bool = True, act_layer: Any = 'relu', norm_layer: Any = nn.BatchNorm2d
                   ) -> XceptionBlock:
    """An Xception block (Metalhead's ``xception_block``): ``nrepeats`` times act → ``separable_conv_norm``
    (the channels grow at the first repeat, or at the last with ``grow_first=False``), a 3x3 max pool when
    strided; the skip is a 1x1 ``conv_norm`` with the block's stride when the shape changes."""
    check_positive_int(nrepeats, 'nrepeats')
    check_positive_int(stride, 'stride')
    check_bool(start_with_relu, 'start_with_relu')
    check_bool(grow_first, 'grow_first')
    rep: List[nn.Module] = []
    for i in range(nrepeats):
        if grow_first:
            inc, outc = (inplanes if i == 0 else outplanes), outplanes
        else:
            inc, outc = inplanes, (inplanes if i < nrepeats - 1 else outplanes)
        # the first activation must not work in place: the skip reads the block's input
        rep.append(create_activation(act_layer, inplace=i > 0, argname='act_layer') or nn.Identity())
        rep += separable_conv_norm(inc, outc, norm_layer=norm_layer)
    if not start_with_relu:
        rep = rep[1:]
    if stride != 1:
        rep.append(nn.MaxPool2d(3, stride, 1))
    if outplanes != inplanes or stride != 1:
        skip = nn.Sequential(*conv_norm(1, inplanes, outplanes, None, stride=stride, norm_layer=norm_layer))
    else:
        skip = nn.Identity()
    return XceptionBlock(rep, skip)


class Xception(TimmModel):
    """The Xception network assembled by ``xception(...)``, with timm's model API.

    Modules: ``stem`` (two 3x3 ``conv_norm``), ``entry_flow`` (3 strided blocks), ``middle_flow`` (8 blocks),
    ``exit_flow`` (a strided block and two ``separable_conv_norm``) and ``head``.
    """
    # as timm's legacy_xception: one parameter group per block (its block1 ... block12), then the exit flow's two
    # separable convs together (its conv3 / conv4); coarse: one group per flow
    block_pattern = NumberedBlocks('entry_flow.*', 'middle_flow.*', r'exit_flow\.0', r'exit_flow\.[12]')
    block_pattern_coarse = [(r'^entry_flow', (0,)), (r'^middle_flow', (1,)), (r'^exit_flow', (2,))]

    def __init__(
            self,
            *,
            middle_repeats: int = 8,
            act_layer: Any = 'relu',
            norm_layer: Any = nn.BatchNorm2d,
            **timm_args: Any,
    ):
        """``timm_args``: timm's ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate`` (the head's dropout),
        ``device``, ``dtype`` (``ModelArgs``)."""
        super().__init__()
        args = ModelArgs.take('Xception', timm_args)
        check_positive_int(middle_repeats, 'middle_repeats')
        kw = dict(act_layer=act_layer, norm_layer=norm_layer)
        with args.device_context():
            self.stem = nn.Sequential(*conv_norm(3, args.in_chans, 32, act_layer, stride=2, norm_layer=norm_layer),
                                      *conv_norm(3, 32, 64, act_layer, norm_layer=norm_layer))
            self.entry_flow = nn.Sequential(
                xception_block(64, 128, 2, stride=2, start_with_relu=False, **kw),
                xception_block(128, 256, 2, stride=2, **kw),
                xception_block(256, 728, 2, stride=2, **kw))
            self.middle_flow = nn.Sequential(*[xception_block(728, 728, 3, **kw) for _ in range(middle_repeats)])
            self.exit_flow = nn.Sequential(
                xception_block(728, 1024, 2, stride=2, grow_first=False, **kw),
                nn.Sequential(*separable_conv_norm(1024, 1536, act_layer, norm_layer=norm_layer)),
                nn.Sequential(*separable_conv_norm(1536, 2048, act_layer, norm_layer=norm_layer)))
            # the block outputs, before the activation that starts the next block (timm applies it to its taps)
            feature_info = [dict(num_chs=64, reduction=2, module='stem'),
                            dict(num_chs=128, reduction=4, module='entry_flow.0'),
                            dict(num_chs=256, reduction=8, module='entry_flow.1'),
                            dict(num_chs=728, reduction=16, module='middle_flow'),
                            dict(num_chs=2048, reduction=32, module='exit_flow')]
            self.attach_head(2048, feature_info, args)
        self.finish_init(args.dtype)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal convs (fan out), as timm's Xception."""
        init_kaiming(self)


def xception(**options) -> Xception:
    """Build Xception, like Metalhead's ``xception``: ``middle_repeats`` (8), ``act_layer``, ``norm_layer``,
    ``drop_rate`` (head dropout), ``global_pool``, ``num_classes``, ``in_chans``."""
    return Xception(**options)


def _rep_index(block: str, index: int) -> int:
    """timm's ``rep`` is (relu, SeparableConv2d, bn) per repeat, ours (act, depthwise, pointwise, norm); block1
    starts without the activation."""
    offset = 1 if block == '1' else 0
    unit, position = divmod(index + offset, 3)
    return unit * 4 + (position if position < 2 else 3) - offset


def _timm_rename(key: str) -> Optional[str]:
    for timm_name, ours in (('conv1', 'stem.0'), ('bn1', 'stem.1'), ('conv2', 'stem.3'), ('bn2', 'stem.4'),
                            ('conv3.conv1', 'exit_flow.1.0'), ('conv3.pointwise', 'exit_flow.1.1'),
                            ('bn3', 'exit_flow.1.2'), ('conv4.conv1', 'exit_flow.2.0'),
                            ('conv4.pointwise', 'exit_flow.2.1'), ('bn4', 'exit_flow.2.2'), ('fc', 'head.fc')):
        if key.startswith(timm_name + '.'):
            return ours + key[len(timm_name):]
    match = re.match(r'^block(\d+)\.', key)
    if not match:
        return key
    n = int(match.group(1))
    prefix = f'entry_flow.{n - 1}' if n <= 3 else f'middle_flow.{n - 4}' if n <= 11 else f'exit_flow.{n - 12}'
    rest = key[match.end():]
    rep = re.match(r'^rep\.(\d+)\.(conv1\.|pointwise\.)?', rest)
    if rep:
        index = _rep_index(match.group(1), int(rep.group(1)))
        index += 1 if rep.group(2) == 'pointwise.' else 0
        return f'{prefix}.rep.{index}.' + rest[rep.end():]
    rest = re.sub(r'^skip\.', 'skip.0.', rest)
    rest = re.sub(r'^skipbn\.', 'skip.1.', rest)
    return f'{prefix}.{rest}'


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Xception) -> Dict[str, torch.Tensor]:
    """Map a timm ``legacy_xception`` checkpoint onto ``model``: every key mapped, every shape checked; a
    checkpoint already in this package's naming passes through unchanged."""
    return remap_checkpoint(state_dict, model, _timm_rename)


default_cfgs = twin_pretrained_cfgs({'legacy_xception': ('tf_in1k',)}, first_conv='stem.0', classifier='head.fc')


@register_model
def metalayers_legacy_xception(pretrained: bool = False, **kwargs) -> Xception:
    """Xception (the original 2017 network, timm's ``legacy_xception``), at 299 px."""
    return build_family_model(Xception, 'metalayers_legacy_xception', pretrained, checkpoint_filter_fn, **kwargs)
