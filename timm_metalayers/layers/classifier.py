"""``create_classifier``: the classifier head of a model, in the guide's two forms."""

from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union, overload

import torch
from torch import nn

from ._factory import (ActivationArg, NormArg, check_bool, check_positive_int, check_probability, create_activation,
                       create_norm, resolve_norm_layer)
from .pool import create_pool, pool_feat_mult

PoolArg = Union[str, nn.Module, None]
HiddenArg = Union[int, Tuple[int, ...], None]
_DEFAULT_POOL = 'avg'


def _hidden_widths(hidden_planes: HiddenArg) -> Tuple[int, ...]:
    """The hidden layers' widths: none, one (an int) or several (a tuple)."""
    if hidden_planes is None:
        return ()
    return tuple(hidden_planes) if isinstance(hidden_planes, (tuple, list)) else (hidden_planes,)


def _hidden_name(i: int) -> str:
    """``hidden``, ``hidden1``, ``hidden2``, ...: the first keeps the one-hidden-layer name."""
    return 'hidden' if i == 0 else f'hidden{i}'


def _projection(inplanes: int, outplanes: int, use_conv: bool) -> nn.Module:
    if outplanes == 0:
        return nn.Identity()
    if use_conv:
        return nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=True)
    return nn.Linear(inplanes, outplanes)


def _build(inplanes: int, hidden_planes: HiddenArg, nclasses: int, activations: Tuple, use_conv: Tuple,
           pool_layer: PoolArg, dropout_prob: Optional[float], norm_layer: NormArg = None,
           tokens: bool = False, pool_last: bool = False) -> 'ClassifierHead':
    check_positive_int(inplanes, 'inplanes')
    check_positive_int(nclasses, 'nclasses', allow_zero=True)
    dropout_prob = check_probability(dropout_prob, 'dropout_prob')
    check_bool(tokens, 'tokens')
    if tokens and any(use_conv):
        raise ValueError(f'use_conv={use_conv if len(use_conv) > 1 else use_conv[0]} needs a map; tokens=True heads '
                         'use Linear layers')
    norm_factory = resolve_norm_layer(norm_layer)
    pool = create_pool(pool_layer, tokens=tokens)
    first_conv = use_conv[0]
    if pool_last:
        return _build_pool_last(inplanes, nclasses, activations[-1], pool, pool_layer, dropout_prob)
    if pool is not None and first_conv:
        raise ValueError(f'use_conv={use_conv[0] if len(use_conv) == 1 else tuple(use_conv)} needs pool_layer=None: '
                         f'a 1x1 conv classifier works on the unpooled map, got pool_layer={pool_layer!r}')
    if len(use_conv) == 2 and use_conv[1] and not use_conv[0]:
        raise ValueError(f'use_conv={tuple(use_conv)}: a 1x1 conv output layer cannot follow a Linear hidden '
                         'layer (there is no spatial map left); use (True, True) or (True, False)')
    act_names = ('activation',) if hidden_planes is None else ('activations[0]', 'activations[1]')
    acts = [create_activation(a, inplace=(i == 0 and hidden_planes is not None), argname=n)
            for i, (a, n) in enumerate(zip(activations, act_names))]
    widths = _hidden_widths(hidden_planes)

    layers = OrderedDict()
    features = inplanes
    # Is the tensor an NCHW map? After a pool it is; without one, a conv first layer means the input is a
    # map and a Linear first layer means the input is already (N, features).
    spatial = (pool is not None or first_conv) and not tokens
    if pool is not None:
        layers['global_pool'] = pool
        features *= 1 if tokens else pool_feat_mult(pool)
    if norm_factory is not None:
        layers['norm'] = create_norm(norm_factory, features)

    def add_projection(name: str, outplanes: int, conv: bool) -> None:
        nonlocal features, spatial
        if not conv and spatial:
            layers['flatten'] = nn.Flatten(1)
            spatial = False
        layers[name] = _projection(features, outplanes, conv)
        if outplanes:
            features = outplanes

    if hidden_planes is None:
        if pool is not None and not first_conv and spatial:
            layers['flatten'] = nn.Flatten(1)
            spatial = False
        if dropout_prob:
            layers['drop'] = nn.Dropout(dropout_prob)
    else:
        for i, width in enumerate(widths):  # each hidden layer: projection → activation → dropout
            name, suffix = _hidden_name(i), '' if i == 0 else str(i)
            add_projection(name, width, use_conv[0])
            if acts[0] is not None:
                layers[f'{name}_act'] = acts[0] if i == 0 else create_activation(activations[0], inplace=True)
            if dropout_prob:
                layers[f'drop{suffix}'] = nn.Dropout(dropout_prob)
    pre_logits_width = features
    add_projection('fc', nclasses, use_conv[-1])
    if acts[-1] is not None and nclasses:
        layers['act'] = acts[-1]
    spec = _HeadSpec(inplanes, hidden_planes, nclasses, tuple(activations), tuple(use_conv), pool_layer,
                     dropout_prob, norm_layer, tokens)
    return ClassifierHead(layers, spec, pre_logits_width)


def _build_pool_last(inplanes: int, nclasses: int, activation, pool: Optional[nn.Module], pool_layer: PoolArg,
                     dropout_prob: Optional[float]) -> 'ClassifierHead':
    """The classifier on the map, pooled last: dropout → 1x1 conv → activation → pool → flatten (SqueezeNet's).

    Without classes it is dropout → pool → flatten, so ``pre_logits`` gives the pooled features."""
    layers = OrderedDict()
    if dropout_prob:
        layers['drop'] = nn.Dropout(dropout_prob)
    features = inplanes
    if nclasses:
        layers['fc'] = _projection(inplanes, nclasses, use_conv=True)
        act = create_activation(activation, inplace=True)
        if act is not None:
            layers['act'] = act
    if pool is not None:
        layers['global_pool'] = pool
        layers['flatten'] = nn.Flatten(1)
        features *= pool_feat_mult(pool)
    spec = _HeadSpec(inplanes, None, nclasses, (activation,), (True,), pool_layer, dropout_prob)
    spec.pool_last = True
    return ClassifierHead(layers, spec, features)


class HeadResetError(AssertionError, ValueError):
    """``reset`` asked for a pool whose pooled width does not fit the head's trained hidden layer.

    An ``AssertionError`` (what timm's models raise for this) and a ``ValueError``.
    """


class _HeadSpec:
    """The arguments a head was built from, so that it can rebuild itself."""

    def __init__(self, inplanes: int, hidden_planes: HiddenArg, nclasses: int, activations: Tuple,
                 use_conv: Tuple, pool_layer: PoolArg, dropout_prob: Optional[float], norm_layer: NormArg = None,
                 tokens: bool = False):
        self.inplanes, self.hidden_planes, self.nclasses = inplanes, hidden_planes, nclasses
        self.activations, self.use_conv = activations, use_conv
        self.pool_layer, self.dropout_prob = pool_layer, dropout_prob
        self.norm_layer, self.tokens = norm_layer, tokens
        self.conv_when_unpooled = False
        self.pool_last = False

    def replace(self, **changes) -> '_HeadSpec':
        spec = _HeadSpec(self.inplanes, self.hidden_planes, self.nclasses, self.activations, self.use_conv,
                         self.pool_layer, self.dropout_prob, self.norm_layer, self.tokens)
        spec.conv_when_unpooled = self.conv_when_unpooled
        spec.pool_last = self.pool_last
        for name, value in changes.items():
            setattr(spec, name, value)
        return spec

    def build(self) -> 'ClassifierHead':
        use_conv = self.use_conv
        if self.conv_when_unpooled:
            unpooled = create_pool(self.pool_layer, argname='global_pool', tokens=self.tokens) is None
            use_conv = (unpooled,) * len(use_conv)
        activations = self.activations
        if self.hidden_planes is None:  # a plain head, or a hidden one whose hidden layer was dropped
            activations, use_conv = activations[-1:], use_conv[-1:]
        head = _build(self.inplanes, self.hidden_planes, self.nclasses, activations, use_conv, self.pool_layer,
                      self.dropout_prob, self.norm_layer, self.tokens, pool_last=self.pool_last)
        head.spec.conv_when_unpooled = self.conv_when_unpooled
        return head


class ClassifierHead(nn.Sequential):
    """What ``create_classifier`` returns: its layers in order (``global_pool``, ``norm``, ``flatten``, ``hidden``,
    ``hidden_act``, ``drop``, ``fc``, ``act``, those that apply), and what a model asks of its head.

    ``head(x, pre_logits=True)`` stops before the output layer (the features a linear probe sees);
    ``hidden_size`` is their width; ``reset(num_classes, pool_layer)`` rebuilds the head in place for
    another number of classes or pool, keeping a trained hidden layer, on the head's device and dtype.
    """
    __jit_unused_properties__ = ['in_features', 'num_classes']

    def __init__(self, layers: 'OrderedDict[str, nn.Module]', spec: _HeadSpec, hidden_size: int):
        super().__init__(layers)
        self.spec = spec
        self.hidden_size = hidden_size

    @property
    def in_features(self) -> int:
        """Channels the head takes."""
        return self.spec.inplanes

    @property
    def num_classes(self) -> int:
        return self.spec.nclasses

    def convs_when_unpooled(self) -> 'ClassifierHead':
        """From now on ``reset`` builds 1x1 convs instead of Linear layers whenever there is no pool, so
        an unpooled head maps the feature map to a map (as MobileNetV3's head does). Returns the head."""
        self.spec.conv_when_unpooled = True
        return self

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        for name, layer in self.named_children():
            if not pre_logits or (name != 'fc' and name != 'act'):
                x = layer(x)
        return x

    def reset(self, num_classes: int, pool_layer: PoolArg = None, *, inplanes: Optional[int] = None,
              keep_hidden: bool = True, reference: Optional[torch.Tensor] = None) -> None:
        """Rebuild for ``num_classes`` (0: no output layer) in place.

        ``pool_layer=None`` keeps the current pool (``''`` removes it); ``inplanes`` changes the input width
        (a pruned trunk), which drops the hidden layer and the norm, as does ``keep_hidden=False`` (timm's
        ``reset_other``); a kept norm keeps its weights. A kept hidden layer
        keeps its weights and ``requires_grad`` (as a Linear or a 1x1 conv, as the new pool needs); a pool
        that changes the pooled width it takes raises ``HeadResetError``. New layers match the head's
        parameters' device and dtype (else ``reference``'s) and its train/eval mode.
        """
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        changes = dict(nclasses=num_classes)
        if pool_layer is not None:
            changes['pool_layer'] = pool_layer
        if inplanes is not None and inplanes != self.spec.inplanes:
            changes['inplanes'] = inplanes
            keep_hidden = False
        if not keep_hidden:
            changes.update(hidden_planes=None, norm_layer=None)
        reference = next(self.parameters(), reference)
        if reference is not None:
            with torch.device(reference.device):
                new = self.spec.replace(**changes).build()
            new.to(dtype=reference.dtype)
        else:
            new = self.spec.replace(**changes).build()
        for i in range(len(_hidden_widths(self.spec.hidden_planes))):
            name = _hidden_name(i)
            if name in self._modules and name in new._modules:
                new._modules[name] = _carry_hidden(self._modules[name], new._modules[name])
        if 'norm' in self._modules and 'norm' in new._modules:
            new.norm = _carry_norm(self.norm, new.norm)
        new.train(self.training)
        self._modules.clear()
        self._modules.update(new._modules)
        self.spec, self.hidden_size = new.spec, new.hidden_size


def _carry_hidden(old: nn.Module, new: nn.Module) -> nn.Module:
    """The trained hidden layer in a rebuilt head, as a Linear or a 1x1 conv as the new head needs."""
    old_in, new_in = old.weight.shape[1], new.weight.shape[1]
    if old_in != new_in or old.weight.shape[0] != new.weight.shape[0]:
        raise HeadResetError(f'the head\'s hidden layer takes {old_in} pooled features, the new pool gives '
                             f'{new_in}: the pool can not change the pooled width of a built model')
    if type(old) is type(new):
        return old
    new.weight = nn.Parameter(old.weight.detach().reshape(new.weight.shape), requires_grad=old.weight.requires_grad)
    if old.bias is not None:
        new.bias = nn.Parameter(old.bias.detach(), requires_grad=old.bias.requires_grad)
    return new


def _carry_norm(old: nn.Module, new: nn.Module) -> nn.Module:
    """The trained norm in a rebuilt head; a pool that changes the width it normalises is an error."""
    old_shapes = [p.shape for p in old.parameters()]
    if old_shapes != [p.shape for p in new.parameters()]:
        raise HeadResetError(f'the head\'s norm has parameters of shapes {[list(s) for s in old_shapes]}; the new '
                             'pool gives another width: the pool can not change the pooled width of a built model')
    return old


@overload
def create_classifier(inplanes: int, nclasses: int, activation: ActivationArg = None, *,
                      use_conv: bool = False, pool_layer: PoolArg = _DEFAULT_POOL,
                      dropout_prob: Optional[float] = None, norm_layer: NormArg = None,
                      tokens: bool = False, pool_last: bool = False) -> 'ClassifierHead': ...


@overload
def create_classifier(inplanes: int, hidden_planes: Union[int, Tuple[int, ...]], nclasses: int,
                      activations: Tuple[ActivationArg, ActivationArg] = ('relu', None), *,
                      use_conv: Tuple[bool, bool] = (False, False), pool_layer: PoolArg = _DEFAULT_POOL,
                      dropout_prob: Optional[float] = None, norm_layer: NormArg = None,
                      tokens: bool = False) -> 'ClassifierHead': ...


def create_classifier(inplanes: int, *args, **kwargs) -> 'ClassifierHead':
    """Create a classifier head: pool → flatten → [hidden layer + activation] → dropout → output layer.

    Plain form ``create_classifier(inplanes, nclasses, activation=None, *, use_conv=False,
    pool_layer=avg, dropout_prob=None, pool_last=False)``; hidden form ``create_classifier(inplanes,
    hidden_planes, nclasses, activations=("relu", None), *, use_conv=(False, False), pool_layer=avg,
    dropout_prob=None)``, chosen by an int third argument or a tuple second one (or ``hidden_planes=`` /
    ``activations=`` as keywords; ``create_classifier(960, 10, hidden_planes=1280)`` is the hidden form with
    10 classes).

    ``hidden_planes`` may be a tuple of widths: several hidden layers (``hidden``, ``hidden1``, ...), each
    followed by its activation (``hidden_act``, ``hidden1_act``, ...) and dropout (``drop``, ``drop1``, ...),
    as AlexNet's and VGG's two 4096-wide layers. ``pool_last=True`` (plain form, ``use_conv=True``) runs the
    1x1 conv classifier on the map and pools after it: dropout → ``fc`` → activation → pool → flatten, as
    SqueezeNet's head.

    Args:
        inplanes: number of input feature maps.
        hidden_planes: width of the extra hidden layer, or a tuple of widths (hidden form only).
        nclasses: number of output classes; 0 leaves out the last layer (the head returns features).
        activation / activations: activation after the last layer; in the hidden form a pair for the
            hidden and the last layer.
        use_conv: use a 1x1 convolution instead of a Linear layer (a pair in the hidden form).
        pool_layer: pooling module, a timm ``global_pool`` name (``"avg"``, ``"max"``, ``"avgmax"``,
            ``"catavgmax"``, ``"meanmax"``) or ``""``/None for no pooling.
        dropout_prob: dropout right after the pool (plain form) or after the hidden layer (hidden form);
            None for none.
        norm_layer: a normalisation right after the pool (ConvNeXt's head: pool → norm → fc), a class,
            ``planes -> module`` callable or timm name; None for none. Without a pool it normalises the map.
        tokens: the head takes tokens ``(N, L, C)`` (the MLP mixers): pool names give a ``TokenPool`` over the
            tokens; without a pool the layers apply to every token.

    A first layer with ``use_conv`` needs ``pool_layer=None`` (it works on the map); otherwise a ``ValueError``.

    Returns:
        A ``ClassifierHead`` (an ``nn.Sequential`` that also answers ``pre_logits`` and ``reset``) with named entries ``global_pool``, ``norm``, ``flatten``, ``hidden``, ``hidden_act``,
        ``drop``, ``fc``, ``act`` (those that apply), so weight names never depend on dropout or pooling.
    """
    hidden_form = ('hidden_planes' in kwargs or 'activations' in kwargs
                   or (len(args) >= 2 and isinstance(args[1], int) and not isinstance(args[1], bool))
                   or (len(args) >= 1 and isinstance(args[0], (tuple, list)))
                   or (len(args) == 1 and 'nclasses' in kwargs))
    if hidden_form:
        if 'hidden_planes' in kwargs:  # create_classifier(960, 10, hidden_planes=1280): positionals after inplanes
            return _create_hidden_classifier(inplanes, kwargs.pop('hidden_planes'), *args, **kwargs)  # start at nclasses
        return _create_hidden_classifier(inplanes, *args, **kwargs)
    return _create_plain_classifier(inplanes, *args, **kwargs)


def _create_plain_classifier(inplanes: int, nclasses: int, activation: ActivationArg = None, *,
                             use_conv: bool = False, pool_layer: PoolArg = _DEFAULT_POOL,
                             dropout_prob: Optional[float] = None, norm_layer: NormArg = None,
                             tokens: bool = False, pool_last: bool = False) -> 'ClassifierHead':
    check_bool(use_conv, 'use_conv')
    check_bool(pool_last, 'pool_last')
    if pool_last and not use_conv:
        raise ValueError('pool_last=True needs use_conv=True: the 1x1 conv classifier runs on the map, '
                         'the pool comes after it')
    if pool_last and (norm_layer is not None or tokens):
        raise ValueError('pool_last=True goes with neither norm_layer nor tokens=True')
    return _build(inplanes, None, nclasses, (activation,), (use_conv,), pool_layer, dropout_prob, norm_layer, tokens,
                  pool_last)


def _create_hidden_classifier(inplanes: int, hidden_planes: Union[int, Sequence[int]], nclasses: int,
                              activations: Sequence[ActivationArg] = ('relu', None), *,
                              use_conv: Sequence[bool] = (False, False), pool_layer: PoolArg = _DEFAULT_POOL,
                              dropout_prob: Optional[float] = None, norm_layer: NormArg = None,
                              tokens: bool = False) -> 'ClassifierHead':
    if isinstance(hidden_planes, (tuple, list)):
        if not hidden_planes:
            raise ValueError('hidden_planes must be a width or a non-empty tuple of widths, got ()')
        for i, width in enumerate(hidden_planes):
            check_positive_int(width, f'hidden_planes[{i}]')
        hidden_planes = tuple(hidden_planes)
    else:
        check_positive_int(hidden_planes, 'hidden_planes')
    if not isinstance(activations, (tuple, list)) or len(activations) != 2:
        raise ValueError(f'activations must be a pair (hidden, output), got {activations!r}')
    if not isinstance(use_conv, (tuple, list)) or len(use_conv) != 2:
        raise ValueError(f'use_conv must be a pair of bools (hidden, output), got {use_conv!r}')
    for i, flag in enumerate(use_conv):
        check_bool(flag, f'use_conv[{i}]')
    return _build(inplanes, hidden_planes, nclasses, tuple(activations), tuple(use_conv), pool_layer, dropout_prob,
                  norm_layer, tokens)


__all__ = ['create_classifier', 'ClassifierHead', 'HeadResetError']
