"""``create_classifier``: the classifier head of a model, in the guide's two forms."""

from collections import OrderedDict
from typing import Optional, Sequence, Tuple, Union, overload

from torch import nn

from ._factory import ActivationArg, check_bool, check_positive_int, check_probability, create_activation
from .pool import create_pool, pool_feat_mult

PoolArg = Union[str, nn.Module, None]
_DEFAULT_POOL = 'avg'


def _projection(inplanes: int, outplanes: int, use_conv: bool) -> nn.Module:
    if outplanes == 0:
        return nn.Identity()
    if use_conv:
        return nn.Conv2d(inplanes, outplanes, kernel_size=1, bias=True)
    return nn.Linear(inplanes, outplanes)


def _build(inplanes: int, hidden_planes: Optional[int], nclasses: int, activations: Tuple, use_conv: Tuple,
           pool_layer: PoolArg, dropout_prob: Optional[float]) -> nn.Sequential:
    check_positive_int(inplanes, 'inplanes')
    check_positive_int(nclasses, 'nclasses', allow_zero=True)
    dropout_prob = check_probability(dropout_prob, 'dropout_prob')
    pool = create_pool(pool_layer)
    first_conv = use_conv[0]
    if pool is not None and first_conv:
        raise ValueError(f'use_conv={use_conv[0] if len(use_conv) == 1 else tuple(use_conv)} needs pool_layer=None: '
                         f'a 1x1 conv classifier works on the unpooled map, got pool_layer={pool_layer!r}')
    if len(use_conv) == 2 and use_conv[1] and not use_conv[0]:
        raise ValueError(f'use_conv={tuple(use_conv)}: a 1x1 conv output layer cannot follow a Linear hidden '
                         'layer (there is no spatial map left); use (True, True) or (True, False)')
    act_names = ('activation',) if hidden_planes is None else ('activations[0]', 'activations[1]')
    acts = [create_activation(a, inplace=(i == 0 and hidden_planes is not None), argname=n)
            for i, (a, n) in enumerate(zip(activations, act_names))]

    layers = OrderedDict()
    features = inplanes
    # Is the tensor an NCHW map? After a pool it is; without one, a conv first layer means the input is a
    # map and a Linear first layer means the input is already (N, features).
    spatial = pool is not None or first_conv
    if pool is not None:
        layers['global_pool'] = pool
        features *= pool_feat_mult(pool)

    def add_projection(name: str, outplanes: int, conv: bool) -> None:
        nonlocal features, spatial
        if not conv and spatial:
            layers['flatten'] = nn.Flatten(1)
            spatial = False
        layers[name] = _projection(features, outplanes, conv)
        if outplanes:
            features = outplanes

    if hidden_planes is None:
        if pool is not None and not first_conv:
            layers['flatten'] = nn.Flatten(1)
            spatial = False
        if dropout_prob:
            layers['drop'] = nn.Dropout(dropout_prob)
    else:
        add_projection('hidden', hidden_planes, use_conv[0])
        if acts[0] is not None:
            layers['hidden_act'] = acts[0]
        if dropout_prob:
            layers['drop'] = nn.Dropout(dropout_prob)
    add_projection('fc', nclasses, use_conv[-1])
    if acts[-1] is not None and nclasses:
        layers['act'] = acts[-1]
    return nn.Sequential(layers)


@overload
def create_classifier(inplanes: int, nclasses: int, activation: ActivationArg = None, *,
                      use_conv: bool = False, pool_layer: PoolArg = _DEFAULT_POOL,
                      dropout_prob: Optional[float] = None) -> nn.Sequential: ...


@overload
def create_classifier(inplanes: int, hidden_planes: int, nclasses: int,
                      activations: Tuple[ActivationArg, ActivationArg] = ('relu', None), *,
                      use_conv: Tuple[bool, bool] = (False, False), pool_layer: PoolArg = _DEFAULT_POOL,
                      dropout_prob: Optional[float] = None) -> nn.Sequential: ...


def create_classifier(inplanes: int, *args, **kwargs) -> nn.Sequential:
    """Create a classifier head: pool → flatten → [hidden layer + activation] → dropout → output layer.

    Plain form ``create_classifier(inplanes, nclasses, activation=None, *, use_conv=False,
    pool_layer=avg, dropout_prob=None)``; hidden form ``create_classifier(inplanes, hidden_planes,
    nclasses, activations=("relu", None), *, use_conv=(False, False), pool_layer=avg, dropout_prob=None)``,
    chosen by an int third argument (or ``hidden_planes=`` / ``activations=`` as keywords).

    Args:
        inplanes: number of input feature maps.
        hidden_planes: width of the extra hidden layer (hidden form only).
        nclasses: number of output classes; 0 leaves out the last layer (the head returns features).
        activation / activations: activation after the last layer; in the hidden form a pair for the
            hidden and the last layer.
        use_conv: use a 1x1 convolution instead of a Linear layer (a pair in the hidden form).
        pool_layer: pooling module, a timm ``global_pool`` name (``"avg"``, ``"max"``, ``"avgmax"``,
            ``"catavgmax"``, ``"meanmax"``) or ``""``/None for no pooling.
        dropout_prob: dropout right after the pool (plain form) or after the hidden layer (hidden form);
            None for none.

    A first layer with ``use_conv`` needs ``pool_layer=None`` (it works on the map); otherwise a ``ValueError``.

    Returns:
        An ``nn.Sequential`` with named entries ``global_pool``, ``flatten``, ``hidden``, ``hidden_act``,
        ``drop``, ``fc``, ``act`` (those that apply), so weight names never depend on dropout or pooling.
    """
    hidden_form = ('hidden_planes' in kwargs or 'activations' in kwargs
                   or (len(args) >= 2 and isinstance(args[1], int) and not isinstance(args[1], bool))
                   or (len(args) == 1 and 'nclasses' in kwargs))
    if hidden_form:
        return _create_hidden_classifier(inplanes, *args, **kwargs)
    return _create_plain_classifier(inplanes, *args, **kwargs)


def _create_plain_classifier(inplanes: int, nclasses: int, activation: ActivationArg = None, *,
                             use_conv: bool = False, pool_layer: PoolArg = _DEFAULT_POOL,
                             dropout_prob: Optional[float] = None) -> nn.Sequential:
    check_bool(use_conv, 'use_conv')
    return _build(inplanes, None, nclasses, (activation,), (use_conv,), pool_layer, dropout_prob)


def _create_hidden_classifier(inplanes: int, hidden_planes: int, nclasses: int,
                              activations: Sequence[ActivationArg] = ('relu', None), *,
                              use_conv: Sequence[bool] = (False, False), pool_layer: PoolArg = _DEFAULT_POOL,
                              dropout_prob: Optional[float] = None) -> nn.Sequential:
    check_positive_int(hidden_planes, 'hidden_planes')
    if not isinstance(activations, (tuple, list)) or len(activations) != 2:
        raise ValueError(f'activations must be a pair (hidden, output), got {activations!r}')
    if not isinstance(use_conv, (tuple, list)) or len(use_conv) != 2:
        raise ValueError(f'use_conv must be a pair of bools (hidden, output), got {use_conv!r}')
    for i, flag in enumerate(use_conv):
        check_bool(flag, f'use_conv[{i}]')
    return _build(inplanes, hidden_planes, nclasses, tuple(activations), tuple(use_conv), pool_layer, dropout_prob)


__all__ = ['create_classifier']
