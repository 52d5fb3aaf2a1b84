"""The one implementation of timm's model API that every model family here stands on.

A family builds its modules and declares its layout; ``TimmModel`` does the rest:

- the **trunk** is the model's child modules in the order they were registered, except the head (and any
  names in ``not_trunk``); ``forward_features`` runs them in that order;
- ``feature_info`` names the modules whose outputs are the features (``"layer2"``, ``"stages.3"``,
  ``"blocks.7"``): a child of the model, or a module inside plain ``nn.Sequential`` children (which then run
  child by child);
- ``head`` is the ``ClassifierHead`` that ``create_classifier`` returns; an optional ``pre_logits`` module
  (VGG's conv MLP, which runs on the unpooled map) sits between the trunk and the head: ``forward_head``
  runs it first, ``pre_logits=True`` keeps it (timm's semantics), and pruning the head removes it;
- ``final_norm`` (optional) names a trunk module that is the final norm: ``norm=True`` applies it to the
  intermediates, and only ``prune_norm`` removes it;
- ``final_conv`` (optional) names a trunk module after the last feature that maps the trunk's output to
  ``num_features`` (EfficientNet's 1x1 head conv): it ends the trunk as the final norm does, is never applied
  to intermediates, and a prune removes it when it keeps fewer features or ``prune_norm`` is set (as timm's).

From that come ``forward_features``, ``forward_head``, ``forward_intermediates``,
``prune_intermediate_layers``, ``set_grad_checkpointing``, ``group_matcher``, ``get_classifier``,
``reset_classifier`` and ``no_weight_decay``, with timm's semantics and one set of errors. timm's arguments that
every family takes are checked once (``ModelArgs``), and ``attach_head`` ends a family's constructor (head, model
API, weight initialisation).
"""
import re
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn
from timm.models import checkpoint
from timm.models._features import feature_take_indices

from ..layers.classifier import ClassifierHead, create_classifier
from ..layers._factory import check_positive_int, check_probability

__all__ = ['TimmModel', 'ModelArgs', 'NumberedBlocks', 'device_context', 'tokens_to_map']

Step = Tuple[str, Callable[[torch.Tensor], torch.Tensor]]
Indices = Optional[Union[int, List[int]]]


def device_context(device: Union[str, torch.device, None]) -> ContextManager:
    """Build modules directly on ``device`` (timm passes ``device=`` to every model)."""
    return torch.device(device) if device is not None else nullcontext()


def tokens_to_map(tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``(N, H*W, C)`` as a map ``(N, C, H, W)`` for a token ``grid`` ``(H, W)``."""
    return tokens.reshape(tokens.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()


@dataclass
class ModelArgs:
    """timm's arguments that every family takes, checked once: ``num_classes`` (0: no output layer, the model
    returns its pre-logits features), ``in_chans``, ``global_pool`` (the head's pool: a timm pool name, a module or
    ``''``), ``drop_rate`` (the head's dropout; None is 0) and ``device`` / ``dtype`` (where and in which dtype the
    parameters are created)."""
    num_classes: int = 1000
    in_chans: int = 3
    global_pool: Any = 'avg'
    drop_rate: Optional[float] = 0.0
    device: Union[str, torch.device, None] = None
    dtype: Optional[torch.dtype] = None

    def __post_init__(self) -> None:
        check_positive_int(self.num_classes, 'num_classes', allow_zero=True)
        check_positive_int(self.in_chans, 'in_chans')
        self.drop_rate = check_probability(self.drop_rate, 'drop_rate') or 0.0

    @classmethod
    def take(cls, owner: str, kwargs: Dict[str, Any], **defaults: Any) -> 'ModelArgs':
        """The arguments in ``kwargs`` (a family's ``**timm_args``) over the family's ``defaults``; any other
        keyword is the ``TypeError`` Python gives ``owner``."""
        unknown = [k for k in kwargs if k not in {f.name for f in fields(cls)}]
        if unknown:
            raise TypeError(f'{owner}() got an unexpected keyword argument {unknown[0]!r}')
        return cls(**{**defaults, **kwargs})

    def device_context(self) -> ContextManager:
        return device_context(self.device)


def _split(path: str, module: nn.Module, paths: Set[str]) -> List[Step]:
    """``module`` as one step, or as its children's steps where one of ``paths`` lies inside it (a plain
    ``nn.Sequential``: running its children one after another is running it)."""
    if not any(p.startswith(path + '.') for p in paths):
        return [(path, module)]
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        raise ValueError(f'{path} ({type(module).__name__}) holds a feature or tap inside it, so it must be a plain '
                         'nn.Sequential to run child by child')
    return [step for name, child in module.named_children() for step in _split(f'{path}.{name}', child, paths)]


class NumberedBlocks:
    r"""A ``block_pattern`` for blocks held in several containers, numbered one after another in forward order
    (timm's Xception numbers ``block1`` ... ``block12`` across its entry, middle and exit flows).

    Each entry is one parameter group, or several: ``'middle_flow.*'`` gives one group per child of
    ``middle_flow`` (those the built model has), any other entry is a regex of module paths that forms one group
    (``r'exit_flow\.[12]'``). ``patterns(model)`` gives timm's ``[(regex, (ordinal,)), ...]`` form.
    """

    def __init__(self, *entries: str):
        self.entries = entries

    def patterns(self, model: nn.Module) -> List[Tuple[str, Tuple[int]]]:
        paths: List[str] = []
        for entry in self.entries:
            if entry.endswith('.*'):
                container = entry[:-2]
                paths += [re.escape(f'{container}.{child}') for child in model.get_submodule(container)._modules]
            else:
                paths.append(entry)
        return [(rf'^{path}\.', (i,)) for i, path in enumerate(paths)]


class TimmModel(nn.Module):
    """timm's model API over a declared layout (see the module docstring).

    A family's ``__init__`` registers its trunk modules in forward order, then calls ``attach_head`` (or registers
    ``head`` and calls ``init_model_api`` itself). Class attributes a family may set: ``output_fmts`` (the layouts its intermediates can
    take), ``final_norm``, ``final_conv``, ``stem_pattern, ``block_pattern`` / ``block_pattern_coarse`` (for
    ``group_matcher``: timm's regex forms, or ``NumberedBlocks``) and ``no_decay`` (parameter names exempt from
    weight decay).
    """
    output_fmts: Tuple[str, ...] = ('NCHW', 'NHWC')
    final_norm: str = ''
    final_conv: str = ''
    stem_pattern: str = r'^stem'
    block_pattern: Any = None
    block_pattern_coarse: Any = None
    no_decay: Tuple[str, ...] = ()

    def init_model_api(self, *, num_classes: int, in_chans: int, drop_rate: float, num_features: int,
                       feature_info: List[Dict[str, Any]], not_trunk: Sequence[str] = ()) -> None:
        """Record what the API needs; called by a family once its modules (``head`` included) exist."""
        if not isinstance(getattr(self, 'head', None), ClassifierHead):
            raise TypeError(f'{type(self).__name__}.head must be the ClassifierHead create_classifier returns')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = num_features
        self.head_hidden_size = self.head.hidden_size
        self.feature_info = feature_info
        self.not_trunk: List[str] = ['head'] + list(not_trunk)
        if 'pre_logits' in self._modules:
            self.not_trunk.append('pre_logits')
        self.grad_checkpointing = False
        known = {path for path, _ in self._steps()}
        unknown = [f['module'] for f in feature_info if f['module'] not in known]
        if unknown:
            raise ValueError(f'{type(self).__name__}.feature_info names modules outside the trunk: {unknown}')

    def attach_head(self, num_features: int, feature_info: List[Dict[str, Any]], args: ModelArgs, *,
                    head: Optional[ClassifierHead] = None, head_planes: Optional[int] = None,
                    not_trunk: Sequence[str] = ()) -> None:
        """The end of a family's ``__init__`` once its trunk modules are registered: the ``head`` (by default
        ``create_classifier``'s plain form, pool → dropout → ``fc`` with ``args``' pool, dropout and classes, on
        ``head_planes`` features, ``num_features`` unless given), the model API (``init_model_api``) and the
        family's ``init_weights``. Call it in ``args.device_context()``."""
        if head is None:
            head = create_classifier(head_planes or num_features, args.num_classes, pool_layer=args.global_pool,
                                     dropout_prob=args.drop_rate or None)
        self.head = head
        self.init_model_api(num_classes=args.num_classes, in_chans=args.in_chans, drop_rate=args.drop_rate,
                            num_features=num_features, feature_info=feature_info, not_trunk=not_trunk)
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """The family's initialisation; PyTorch's defaults unless the family overrides it."""

    def finish_init(self, dtype: Optional[torch.dtype]) -> None:
        """Convert to ``dtype`` (timm passes ``dtype=``) once the weights are initialised."""
        if dtype is not None:
            self.to(dtype=dtype)

    # -- the trunk ----------------------------------------------------------------------------------
    @torch.jit.ignore
    def _steps(self, taps: Iterable[str] = ()) -> List[Step]:
        """The trunk as (path, module) steps: each child, split into its own children (and theirs, as deep as
        needed) where a feature or one of ``taps`` lies inside it (``stages`` → ``stages.0``, ``stages.1``, ...)."""
        paths = {f['module'] for f in self.feature_info}.union(taps)
        steps: List[Step] = []
        for name, child in self.named_children():
            if name not in self.not_trunk:
                steps.extend(_split(name, child, paths))
        return steps

    @torch.jit.ignore
    def _forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk step by step, each step in a gradient checkpoint."""
        for _, step in self._steps():
            x = checkpoint(step, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output (the input of the head)."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_steps(x)
        for name, child in self.named_children():
            if name not in self.not_trunk:
                x = child(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The head on the trunk's output (after the ``pre_logits`` module, where the model has one);
        ``pre_logits`` stops before the output layer."""
        for name, child in self.named_children():
            if name == 'pre_logits':
                x = child(x)
        return self.head(x, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # -- intermediates and pruning ------------------------------------------------------------------
    def _check_output_fmt(self, output_fmt: str) -> None:
        if output_fmt not in self.output_fmts:
            raise ValueError(f'output_fmt must be one of {self.output_fmts} for {type(self).__name__}, '
                             f'got {output_fmt!r}')

    @torch.jit.ignore
    def _forward_taps(self, x: torch.Tensor, indices: Indices, norm: bool, stop_early: bool
                      ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the trunk, keeping the features ``indices`` selects (``norm``: through the final norm)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        wanted = {self.feature_info[i]['module'] for i in take_indices}
        last = self.feature_info[max_index]['module']
        final_norm = getattr(self, self.final_norm) if self.final_norm else None
        steps = self._steps()
        taps: List[torch.Tensor] = []
        at_end = max_index == len(self.feature_info) - 1
        for i, (path, step) in enumerate(steps):
            x = checkpoint(step, x) if self.grad_checkpointing else step(x)
            if path in wanted:
                taps.append(final_norm(x) if norm and final_norm is not None else x)
            if stop_early and path == last:
                # as timm: the final norm ends the trunk even when stopped early, the final conv after the last feature
                for later, later_step in steps[i + 1:]:
                    if later == self.final_norm or (later == self.final_conv and at_end):
                        x = later_step(x)
                break
        return x, taps

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Indices = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The features ``indices`` selects (the last n for an int, all for None, negative from the end),
        as timm defines it: ``norm`` passes them through the final norm (where the model has one),
        ``stop_early`` stops after the last one, ``output_fmt`` is ``'NCHW'`` or ``'NHWC'``, and
        ``intermediates_only`` leaves out the trunk's output."""
        self._check_output_fmt(output_fmt)
        img_size = (x.shape[-2], x.shape[-1])
        x, taps = self._forward_taps(x, indices, norm, stop_early)
        taps = self._format_taps(taps, img_size, output_fmt)
        return taps if intermediates_only else (x, taps)

    @torch.jit.ignore
    def _format_taps(self, taps: List[torch.Tensor], img_size: Tuple[int, int], output_fmt: str
                     ) -> List[torch.Tensor]:
        """The trunk's features in ``output_fmt``: maps stay NCHW or become NHWC. A token model overrides this
        (its features are ``(N, L, C)``: ``'NLC'`` as they are, ``'NCHW'`` through ``tokens_to_map``)."""
        if output_fmt == 'NHWC':
            return [t.permute(0, 2, 3, 1) for t in taps]
        return taps

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Remove the trunk after the last feature ``indices`` selects (the final norm only with
        ``prune_norm``), and the head with ``prune_head`` or when the features it took change width;
        returns the kept indices.

        A removed head becomes a bare one (no pool, no hidden layer, no classes) sized for the new end of the
        trunk; ``reset_classifier`` puts a pool and classes back.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self.feature_info[max_index]['module']
        steps = [path for path, _ in self._steps()]
        prune_end = max_index < len(self.feature_info) - 1
        for path in steps[steps.index(last) + 1:]:
            if path == self.final_norm and not prune_norm:
                continue
            if path == self.final_conv and not (prune_end or prune_norm):
                continue
            self._remove_step(path)
        if prune_norm and self.final_norm:
            setattr(self, self.final_norm, nn.Identity())
        if prune_end or (prune_norm and self.final_conv):
            self.num_features = self.feature_info[max_index]['num_chs']
        pre_logits = self._modules.get('pre_logits')
        if pre_logits is not None and not isinstance(pre_logits, nn.Identity) and (prune_head or prune_end):
            # as timm's VGG: the head then takes the features
            pre_logits = self.pre_logits = nn.Identity().train(self.training)
        feeds_head = pre_logits is None or isinstance(pre_logits, nn.Identity)
        if prune_head or (feeds_head and self.num_features != self.head.in_features):
            self.head.reset(self.head.num_classes, inplanes=self.num_features, keep_hidden=False)
            self.reset_classifier(0, '')
        return take_indices

    def _remove_step(self, path: str) -> None:
        parent, _, child = path.rpartition('.')
        if not parent:
            setattr(self, path, nn.Identity().train(self.training))
            return
        container = getattr(self, parent)
        names = list(container._modules)
        if child in names:  # drop this child and every later one
            setattr(self, parent, container[:names.index(child)].train(container.training))

    # -- head ---------------------------------------------------------------------------------------
    @torch.jit.ignore
    def head_module_names(self) -> List[str]:
        """The children ``forward_head`` runs, in order: ``pre_logits`` where the model has one, then ``head``."""
        return [name for name in ('pre_logits', 'head') if name in self._modules]

    @torch.jit.ignore
    def trunk_module_names(self) -> List[str]:
        """The children ``forward_features`` runs, in order (every child outside ``not_trunk`` and the head's)."""
        head = set(self.head_module_names())
        return [name for name in self._modules if name not in self.not_trunk and name not in head]

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[Union[str, nn.Module]] = None) -> None:
        """A new output layer for ``num_classes`` (0: none, the model returns pre-logits features);
        ``global_pool=None`` keeps the pool. The new layers are on the model's device and in its dtype."""
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        self.head.reset(num_classes, global_pool, reference=next(self.parameters(), None))
        self.num_classes = num_classes
        self.head_hidden_size = self.head.hidden_size

    # -- training helpers ---------------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise learning-rate decay: the stem, then block by block."""
        blocks = self.block_pattern_coarse if coarse and self.block_pattern_coarse else self.block_pattern
        if isinstance(blocks, NumberedBlocks):
            blocks = blocks.patterns(self)
        return dict(stem=self.stem_pattern, blocks=blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set(self.no_decay)
