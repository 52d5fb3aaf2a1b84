"""What the Inception family shares: the TensorFlow-style conv block, Metalhead's ``Parallel(cat_channels, ...)``,
the scaled residual of Inception-ResNet, ``InceptionNet`` (timm's model API over ``stages`` and a
``create_classifier`` head) and the strict renamer from timm's parameter names to ours.

Every Inception model here is five stages, one per output stride (2, 4, 8, 16, 32); a stage is an
``nn.Sequential`` of conv blocks, pools and inception blocks. An inception block is a ``Parallel`` of
branches (``branch0``, ``branch1``, ... as TF-slim names them); a branch is one conv block, a pool, or an
``nn.Sequential`` of them. A conv block is ``nn.Sequential(*basic_conv_bn(...))``: ``0`` conv, ``1`` norm.
"""
from collections import OrderedDict
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from ..layers import StochasticDepth, basic_conv_bn, conv_norm, create_activation, create_classifier
from ..layers.pool import pool_feat_mult
from ._helpers import CheckpointMismatchError, remap_checkpoint

# The convolutions are unpadded ("valid"), so small inputs shrink below input / stride: the models run from
# 75x75, but only from 107x107 is the stride-32 feature map 2x2 and every feature level within 2x of its
# nominal reduction. timm's model tests read this as the smallest size to test at (README: Inception).
MIN_INPUT_SIZE = (3, 107, 107)

__all__ = ['MIN_INPUT_SIZE', 'inception_conv', 'Parallel', 'ScaledResidual', 'InceptionNet', 'inception_renamer',
           'remap_inception_checkpoint', 'device_context']


def inception_conv(
        kernel_size: Union[int, Tuple[int, int]],
        inplanes: int,
        outplanes: int,
        *,
        stride: int = 1,
        pad: Union[int, Tuple[int, int]] = 0,
        act_layer='relu',
        norm_layer=None,
) -> nn.Sequential:
    """One conv block of the Inception family: ``nn.Sequential(*basic_conv_bn(...))`` (batch norm, eps 1e-3).

    ``norm_layer=None`` keeps TensorFlow's batch norm; any other norm (a class, a ``planes -> module``
    callable or a timm name) goes through ``conv_norm`` instead. Padding is explicit ("valid" by default),
    as in the papers.
    """
    if norm_layer is None:
        return nn.Sequential(*basic_conv_bn(kernel_size, inplanes, outplanes, act_layer, stride=stride, pad=pad))
    return nn.Sequential(*conv_norm(kernel_size, inplanes, outplanes, act_layer, norm_layer=norm_layer,
                                    stride=stride, pad=pad))


class Parallel(nn.Sequential):
    """Metalhead's ``Parallel(cat_channels, branches...)``: every branch sees the input, the outputs are
    concatenated along the channels. Branches are named ``branch0``, ``branch1``, ..."""

    def __init__(self, *branches: nn.Module):
        if len(branches) < 2:
            raise ValueError(f'Parallel needs at least two branches, got {len(branches)}')
        super().__init__(OrderedDict((f'branch{i}', branch) for i, branch in enumerate(branches)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for branch in self:
            outs.append(branch(x))
        return torch.cat(outs, dim=1)


class ScaledResidual(nn.Module):
    """The Inception-ResNet block: ``act(x + drop_path(scale * proj(branches(x))))``.

    Metalhead writes it ``SkipConnection(Chain(Parallel(...), conv, inputscale(scale)), +)``. ``proj`` is the
    1x1 convolution (with bias, no norm) back to the input width; ``drop_path`` is a ``StochasticDepth``
    with probability ``drop_prob`` (an identity at 0), so parameter names never depend on it.
    """

    def __init__(self, branches: nn.Module, proj: nn.Module, scale: float = 1.0,
                 drop_prob: Optional[float] = None, act_layer='relu'):
        super().__init__()
        self.scale = float(scale)
        self.branches = branches
        self.proj = proj
        self.drop_path = StochasticDepth(drop_prob)
        self.act = create_activation(act_layer, inplace=True) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.proj(self.branches(x))
        return self.act(x + self.drop_path(out * self.scale))

    def extra_repr(self) -> str:
        return f'scale={self.scale}'


def device_context(device):
    """Build modules directly on ``device`` (timm passes ``device=`` to every model)."""
    return torch.device(device) if device is not None else nullcontext()


class InceptionNet(nn.Module):
    """timm's model API for the Inception family: ``stages`` (one per output stride) and a ``create_classifier`` head.

    Subclasses build the stages with their mid-level constructor and call ``_init_inception``.
    """
    reductions: Tuple[int, ...] = (2, 4, 8, 16, 32)

    def _init_inception(self, stages: nn.Sequential, stage_chs: Sequence[int], *, num_classes: int,
                        in_chans: int, global_pool, drop_rate: float) -> None:
        if len(stages) != len(stage_chs) or len(stages) != len(self.reductions):
            raise ValueError(f'{type(self).__name__}: expected {len(self.reductions)} stages with their widths, '
                             f'got {len(stages)} stages and {len(stage_chs)} widths')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stages = stages
        self.feature_info = [dict(num_chs=c, reduction=r, module=f'stages.{i}')
                             for i, (c, r) in enumerate(zip(stage_chs, self.reductions))]
        self.num_feature_levels = len(self.feature_info)  # stays when stages are pruned; scriptable
        self.num_features = stage_chs[-1]
        self.head = self._make_head(num_classes, global_pool)
        self.head_hidden_size = self._head_width()

    def _make_head(self, num_classes: int, global_pool) -> nn.Sequential:
        head = create_classifier(self.num_features, num_classes, pool_layer=global_pool,
                                 dropout_prob=self.drop_rate or None)
        assert list(head._modules)[-1] == 'fc'  # forward_head(pre_logits=True) runs all but the last entry
        return head

    def _head_width(self) -> int:
        return self.num_features * pool_feat_mult(getattr(self.head, 'global_pool', None))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stages\.0\.',
            blocks=r'^stages\.(\d+)' if coarse else [(r'^stages\.(\d+)\.(\d+)', None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        """A new head for ``num_classes`` (0: pooled features); ``global_pool=None`` keeps the current pooling."""
        if global_pool is None:
            global_pool = getattr(self.head, 'global_pool', None) or ''
        head = self._make_head(num_classes, global_pool)
        ref = next(self.parameters(), None)
        if ref is not None:
            head.to(device=ref.device, dtype=ref.dtype)
        self.head = head.train(self.training)
        self.num_classes = num_classes
        self.head_hidden_size = self._head_width()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint_seq(stage, x)
            return x
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        last = len(self.head) - 1
        for i, layer in enumerate(self.head):
            if i < last or not pre_logits:
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (the output of each stage, see ``feature_info``).

        Args:
            x: Input image tensor.
            indices: Take last n stages if int, all if None, select matching indices if sequence.
            norm: Apply norm layer to compatible intermediates (unused, there is no final norm).
            stop_early: Stop iterating over stages when last desired intermediate hit.
            output_fmt: Shape of intermediate feature outputs (NCHW only).
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(self.num_feature_levels, indices)
        if torch.jit.is_scripting() or not stop_early:  # can't slice stages in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune the stages after the last index needed (and the head); returns the indices kept."""
        take_indices, max_index = feature_take_indices(self.num_feature_levels, indices)
        self.stages = self.stages[:max_index + 1]
        prune_end = max_index < self.num_feature_levels - 1
        if prune_end:
            # the features now end at the last kept stage; the head was sized for the final ones, so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices


def inception_renamer(
        blocks: Dict[str, Tuple[str, Optional[Dict[str, str]]]],
) -> Callable[[str], str]:
    """A renamer for ``remap_checkpoint`` from timm's names to ours.

    ``blocks`` maps a timm module path to ``(our path, children)``; ``children`` renames the module's
    direct children (timm's ``branch5x5_2`` → our ``branch1.1``), None keeps their names. After that,
    timm's ``ConvNormAct`` parts ``conv`` / ``bn`` become our conv block's ``0`` / ``1``. A key under
    no known module is returned unchanged, so ``remap_checkpoint`` reports it.
    """
    def rename(key: str) -> str:
        parts = key.split('.')
        for n in range(len(parts) - 1, 0, -1):
            entry = blocks.get('.'.join(parts[:n]))
            if entry is None:
                continue
            ours, children = entry
            rest = parts[n:]
            if children is not None and len(rest) > 1 and rest[0] in children:
                rest = children[rest[0]].split('.') + rest[1:]
            rest = ['0' if p == 'conv' else '1' if p == 'bn' else p for p in rest[:-1]] + rest[-1:]
            return '.'.join([ours] + rest)
        return key
    return rename


def remap_inception_checkpoint(state_dict, model, renamer, **kwargs):
    """``remap_checkpoint`` with this family's defaults; raises ``CheckpointMismatchError`` naming the keys."""
    if not isinstance(state_dict, dict):
        raise CheckpointMismatchError(f'expected a state dict, got {type(state_dict).__name__}')
    return remap_checkpoint(state_dict, model, renamer, **kwargs)
