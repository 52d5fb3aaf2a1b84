"""What the Inception family shares: the TensorFlow-style conv block, Metalhead's ``Parallel(cat_channels, ...)``,
the scaled residual of Inception-ResNet, ``InceptionNet`` (``stages`` and a ``create_classifier`` head on the
shared ``TimmModel``, with optional ``AuxClassifier`` heads: Inception-v3's, GoogLeNet's), the family's pretrained
config, the renamer from timm's parameter names to ours and the checkpoint filter for auxiliary classifiers.

Every Inception model here is five stages, one per output stride (2, 4, 8, 16, 32); a stage is an
``nn.Sequential`` of conv blocks, pools and inception blocks. An inception block is a ``Parallel`` of
branches (``branch0``, ``branch1``, ... as TF-slim names them); a branch is one conv block, a pool, or an
``nn.Sequential`` of them. A conv block is ``nn.Sequential(*basic_conv_bn(...))``: ``0`` conv, ``1`` norm.
"""
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import checkpoint

from ..layers import StochasticDepth, basic_conv_bn, conv_norm, create_activation, create_classifier
from ..layers.classifier import ClassifierHead
from ._base import TimmModel, device_context
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs, unwrap_state_dict

# The convolutions are unpadded ("valid"), so small inputs shrink below input / stride: the models run from
# 75x75, but only from 107x107 is the stride-32 feature map 2x2 and every feature level within 2x of its
# nominal reduction. timm's model tests read this as the smallest size to test at (README: Inception).
MIN_INPUT_SIZE = (3, 107, 107)

__all__ = ['MIN_INPUT_SIZE', 'inception_conv', 'Parallel', 'ScaledResidual', 'AuxClassifier', 'InceptionNet',
           'build_inception', 'remap_with_aux', 'inception_cfgs', 'inception_renamer']


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


class AuxClassifier(nn.Sequential):
    """An auxiliary classifier: its own ``layers`` (a pool, convs, ...), then the layers of ``classifier`` (a
    ``create_classifier`` head) under their names there (``global_pool``, ``hidden``, ``fc``, ...), so that its
    keys are those of the network it comes from. ``reset(num_classes)`` gives it a new output layer."""

    def __init__(self, layers: 'OrderedDict[str, nn.Module]', classifier: ClassifierHead):
        super().__init__(OrderedDict([*layers.items(), *classifier.named_children()]))
        self.fc_inplanes = classifier.hidden_size

    def reset(self, num_classes: int) -> None:
        """A new output layer for ``num_classes`` (0: none), on the classifier's device and dtype."""
        ref = next(self.parameters())
        fc = create_classifier(self.fc_inplanes, num_classes, pool_layer=None).fc
        self.fc = fc.to(device=ref.device, dtype=ref.dtype).train(self.training)


class InceptionNet(TimmModel):
    """An Inception model: ``stages`` (one per output stride), a ``create_classifier`` head and, where the
    family has them, optional auxiliary classifiers on inner trunk modules (``aux_logits=True``: ``forward``
    then returns ``(logits, *aux_logits)`` in training and evaluation, as timm's Inception-v3).

    A family sets ``stage_chs`` (the width of each stage), ``build_stages(in_chans, *, act_layer,
    norm_layer, **options)`` (its mid-level constructor) and, for auxiliary classifiers, ``aux_taps`` (``(name,
    trunk module it reads)`` per classifier, in the order ``forward`` returns them) and ``build_aux_head(name,
    num_classes, *, act_layer, norm_layer, **options)``; the timm model API comes from ``TimmModel``.
    """
    reductions: Tuple[int, ...] = (2, 4, 8, 16, 32)
    stage_chs: Tuple[int, ...] = ()
    aux_taps: Tuple[Tuple[str, str], ...] = ()
    aux_logits: torch.jit.Final[bool]
    stem_pattern = r'^stages\.0\.'
    block_pattern = [(r'^stages\.(\d+)\.(\d+)', None)]
    block_pattern_coarse = r'^stages\.(\d+)'

    def __init__(
            self,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: Union[str, nn.Module] = 'avg',
            drop_rate: float = 0.,
            aux_logits: bool = False,
            act_layer='relu',
            norm_layer=None,
            device=None,
            dtype=None,
            **stage_options,
    ):
        super().__init__()
        self.aux_logits = bool(aux_logits)
        if self.aux_logits and not self.aux_taps:
            raise ValueError(f'aux_logits=True: {type(self).__name__} has no auxiliary classifier')
        with device_context(device):
            self.stages = self.build_stages(in_chans, act_layer=act_layer, norm_layer=norm_layer, **stage_options)
            self.head = create_classifier(self.stage_chs[-1], num_classes, pool_layer=global_pool,
                                          dropout_prob=drop_rate or None)
            for name, _ in self.aux_taps:
                setattr(self, name, self.build_aux_head(name, num_classes, act_layer=act_layer, norm_layer=norm_layer,
                                                        **stage_options) if self.aux_logits else None)
            feature_info = [dict(num_chs=c, reduction=r, module=f'stages.{i}')
                            for i, (c, r) in enumerate(zip(self.stage_chs, self.reductions))]
            self.init_model_api(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                                num_features=self.stage_chs[-1], feature_info=feature_info,
                                not_trunk=[name for name, _ in self.aux_taps])
            self.init_weights()
        self.finish_init(dtype)

    def build_stages(self, in_chans: int, *, act_layer, norm_layer, **options) -> nn.Sequential:
        raise NotImplementedError

    def build_aux_head(self, name: str, num_classes: int, *, act_layer, norm_layer, **options) -> AuxClassifier:
        raise NotImplementedError

    @torch.jit.ignore
    def _aux_heads(self) -> List[Tuple[str, str, AuxClassifier]]:
        """The auxiliary classifiers the model has: ``(name, trunk module it reads, module)``."""
        return [(name, path, self._modules[name]) for name, path in self.aux_taps
                if self._modules.get(name) is not None]

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        super().reset_classifier(num_classes, global_pool)
        for _, _, aux_head in self._aux_heads():
            aux_head.reset(num_classes)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """As ``TimmModel``'s; the auxiliary classifiers go with the head."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if len(self.stages) < len(self.feature_info) or prune_head:
            for name, _ in self.aux_taps:
                setattr(self, name, None)
            self.aux_logits = False
        return take_indices

    @torch.jit.ignore
    def forward_features_aux(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The final features and the auxiliary logits in ``aux_taps`` order (needs ``aux_logits=True``)."""
        heads = {path: (name, module) for name, path, module in self._aux_heads()}
        aux: Dict[str, torch.Tensor] = {}
        for path, step in self._steps(taps=heads):
            x = checkpoint(step, x) if self.grad_checkpointing else step(x)
            if path in heads:
                name, module = heads[path]
                aux[name] = module(x)
        return x, [aux[name] for name, _ in self.aux_taps if name in aux]

    def forward(self, x: torch.Tensor):
        if self.aux_logits:
            x, aux = self.forward_features_aux(x)
            return (self.forward_head(x), *aux)
        return self.forward_head(self.forward_features(x))


def build_inception(model_cls: type, variant: str, pretrained: bool, checkpoint_filter_fn: Callable,
                    **kwargs) -> InceptionNet:
    """``build_family_model`` for the family: a feature extractor has no auxiliary classifiers to run."""
    if kwargs.get('features_only') and kwargs.get('aux_logits'):
        raise ValueError('features_only=True does not go with aux_logits=True')
    return build_family_model(model_cls, variant, pretrained, checkpoint_filter_fn, **kwargs)


def remap_with_aux(state_dict: Dict[str, torch.Tensor], model: InceptionNet, rename: Callable[[str], str],
                   aux_names: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """``remap_checkpoint`` for a model of the family with auxiliary classifiers: ``aux_names`` maps the
    checkpoint's auxiliary classifiers (timm's ``AuxLogits``, torchvision's ``aux1``) to ours (``aux_head``,
    ``aux_head1``); ``rename`` maps every other key and the keys inside them.

    The checkpoint's auxiliary classifiers are dropped when the model has none; a model with them keeps its own
    initialisation where the checkpoint has none, and its own output layer where the checkpoint's is for another
    number of classes.
    """
    state_dict = unwrap_state_dict(state_dict)
    built = {theirs: ours for theirs, ours in aux_names.items() if getattr(model, ours, None) is not None}
    ours_names = set(aux_names.values())

    def aux_rename(key: str) -> Optional[str]:
        head = key.split('.', 1)[0]
        if head in aux_names:
            return rename(key) if head in built else None
        if head in ours_names:
            return key if head in built.values() else None
        return rename(key)

    heads_of = {key.split('.', 1)[0] for key in state_dict}
    own = {f'{ours}.{k}': v for theirs, ours in built.items() if not heads_of & {theirs, ours}
           for k, v in getattr(model, ours).state_dict().items()}
    if own:
        state_dict = {**state_dict, **own}

    def keep_own_output_layer(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        head, _, rest = key.partition('.')
        return target if head in built.values() and rest.startswith('fc.') else value

    return remap_checkpoint(state_dict, model, aux_rename, reshape=keep_own_output_layer)


def inception_cfgs(tags: Dict[str, Sequence[str]]) -> Dict:
    """The family's ``default_cfgs``: timm's configs (299 input, Inception mean/std, crop, licence, ...) with
    our first conv / classifier names, and the smallest input size (unpadded convs leave a 1x1 stride-32 map
    below 107x107, which timm's configs do not say)."""
    return twin_pretrained_cfgs(tags, first_conv='stages.0.0.0', classifier='head.fc',
                                min_input_size=MIN_INPUT_SIZE)


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
