"""The machinery behind the Metalhead.jl constructors: each one is a ``Constructor`` made from a table that maps
the values of its arguments onto a registered ``metalayers_*`` model.

A call binds Metalhead's arguments (positional and keyword, Metalhead's defaults), normalises them (a Julia
symbol ``:large`` is the string ``"large"``), finds the table row they select and calls ``timm.create_model``
with that row's model, its fixed arguments and the caller's. A value no row has raises ``ValueError`` naming the
argument, the value and the values that have a registered model.
"""
import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
from timm.models import get_pretrained_cfg
from torch import nn

from ..layers._factory import check_bool, pair

__all__ = ['ANY', 'Arg', 'Constructor', 'Row']

ANY = object()  # a row value that takes any value of its argument (passed on to timm under ``Arg.timm_name``)
REQUIRED = inspect.Parameter.empty

# timm's names for Metalhead's common arguments: passing the timm name as well would say it twice
_METALHEAD_NAMES = {'pretrained': 'pretrain', 'in_chans': 'inchannels', 'num_classes': 'nclasses'}


@dataclass(frozen=True)
class Arg:
    """An argument of a Metalhead constructor that selects the model.

    ``kind`` says how a value is read: ``'int'``, ``'real'``, ``'bool'``, ``'symbol'`` (a string; a leading
    ``:`` and the letter case are ignored) or ``'dims'`` (an int or a pair of ints, as Julia's ``Dims{2}``).
    Where a row has ``ANY`` for it, a value other than the default goes to ``timm.create_model`` as
    ``timm_name``; ``weights_fixed`` says timm's weights only fit the default value there.
    """
    name: str
    default: Any = REQUIRED
    kind: str = 'int'
    positional: bool = False
    timm_name: Optional[str] = None
    weights_fixed: bool = False

    def read(self, constructor: str, value: Any) -> Any:
        """``value`` in the form the table uses, or a ``TypeError`` naming the argument."""
        where = f'{constructor}: {self.name}'
        if self.kind == 'symbol':
            if not isinstance(value, str) or not value.lstrip(':'):
                raise TypeError(f'{where} must be a string (a Julia symbol such as :large is "large"), got {value!r}')
            return value.lstrip(':')
        if self.kind == 'dims':
            return pair(value, where)
        if self.kind == 'bool':
            return check_bool(value, where)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f'{where} must be a number, got {value!r} of type {type(value).__name__}')
        if self.kind == 'int':
            if value != int(value):
                raise TypeError(f'{where} must be an integer, got {value!r}')
            return int(value)
        return float(value)

    def same(self, a: Any, b: Any) -> bool:
        if self.kind == 'symbol':
            return a.lower() == b.lower()
        if self.kind == 'real':
            return math.isclose(a, b, rel_tol=1e-9)
        return a == b


@dataclass(frozen=True)
class Row:
    """One configuration: the values of the constructor's ``Arg``s (``ANY`` where any value goes), the registered
    model without its ``metalayers_`` prefix, fixed ``timm.create_model`` arguments (Metalhead's built-in
    dropout and stochastic-depth rates) and, where timm has the weights Metalhead.jl itself loads, their tag."""
    values: Tuple[Any, ...]
    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    tag: Optional[str] = None


def _show(value: Any) -> str:
    return '"' + value + '"' if isinstance(value, str) else repr(value)


class Constructor:
    """A Metalhead.jl constructor in Python form (see the module docstring); call it as the Julia one."""

    def __init__(self, name: str, args: Sequence[Arg], rows: Sequence[Row], doc: str, note: str = ''):
        self.__name__ = self.__qualname__ = name
        self.args = tuple(args)
        self.rows = tuple(rows)
        self.note = note
        for row in self.rows:
            if len(row.values) != len(self.args):
                raise ValueError(f'{name}: row {row.values} needs a value for each of {[a.name for a in args]}')
        params = [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD if a.positional
                                    else inspect.Parameter.KEYWORD_ONLY, default=a.default) for a in self.args]
        params += [inspect.Parameter('pretrain', inspect.Parameter.KEYWORD_ONLY, default=False,
                                     annotation=Union[bool, str]),
                   inspect.Parameter('inchannels', inspect.Parameter.KEYWORD_ONLY, default=3, annotation=int),
                   inspect.Parameter('nclasses', inspect.Parameter.KEYWORD_ONLY, default=1000, annotation=int),
                   inspect.Parameter('kwargs', inspect.Parameter.VAR_KEYWORD)]
        self.__signature__ = inspect.Signature(params, return_annotation=nn.Module)
        self.__doc__ = doc + '\n\n' + _COMMON_DOC

    def __repr__(self) -> str:
        return f'<Metalhead constructor {self.__name__}{self.__signature__}>'

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        name, timm_kwargs = self.timm_call(*args, **kwargs)
        return timm.create_model(name, **timm_kwargs)

    def timm_call(self, *args: Any, **kwargs: Any) -> Tuple[str, Dict[str, Any]]:
        """The ``timm.create_model`` name and arguments that this call builds (checked, nothing built)."""
        try:
            bound = self.__signature__.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f'{self.__name__}: {e}') from None
        bound.apply_defaults()
        given = dict(bound.arguments)
        extra = given.pop('kwargs')
        pretrain, inchannels, nclasses = given.pop('pretrain'), given.pop('inchannels'), given.pop('nclasses')
        values = tuple(arg.read(self.__name__, given[arg.name]) for arg in self.args)
        row = self._row(values)
        timm_kwargs: Dict[str, Any] = dict(row.kwargs)
        fixed_by_weights = []
        for arg, want, value in zip(self.args, row.values, values):
            if want is ANY and not arg.same(value, arg.read(self.__name__, arg.default)):
                timm_kwargs[arg.timm_name] = value
                if arg.weights_fixed:
                    fixed_by_weights.append((f'{arg.name}={_show(value)}', f'{arg.name}={_show(arg.default)}'))
        self._check_extra(extra)
        timm_kwargs.update(in_chans=inchannels, num_classes=nclasses, **extra)
        name = 'metalayers_' + row.model
        if pretrain is False:
            return name, dict(pretrained=False, **timm_kwargs)
        if fixed_by_weights:
            shown, fits = fixed_by_weights[0]
            raise ValueError(f'{self.__name__}: pretrain={pretrain!r} with {shown}: timm\'s weights for {name} fit '
                             f'{fits} only; pass pretrain=False')
        return self._tagged(name, row, pretrain), dict(pretrained=True, **timm_kwargs)

    # -- the table ----------------------------------------------------------------------------------------------
    def _matches(self, row: Row, values: Tuple[Any, ...]) -> bool:
        return all(want is ANY or arg.same(want, value) for arg, want, value in zip(self.args, row.values, values))

    def _row(self, values: Tuple[Any, ...]) -> Row:
        """The row ``values`` select: the most specific one (fewest ``ANY``), or a ``ValueError``."""
        found = [row for row in self.rows if self._matches(row, values)]
        if found:
            return min(found, key=lambda row: sum(v is ANY for v in row.values))
        first = self.args[0]
        same_first = [row for row in self.rows if row.values[0] is ANY or first.same(row.values[0], values[0])]
        if not same_first:
            allowed = ', '.join(dict.fromkeys(_show(row.values[0]) for row in self.rows))
            raise ValueError(f'{self.__name__}: {first.name}={_show(values[0])} has no registered model here; '
                             f'allowed: {allowed}' + (f'. {self.note}' if self.note else ''))
        given = ', '.join(f'{a.name}={_show(v)}' for a, v in zip(self.args, values))
        options = '; '.join(self.describe(row, skip=1) for row in same_first)
        raise ValueError(f'{self.__name__}: no registered model for {given}; with {first.name}={_show(values[0])}: '
                         f'{options}' + (f'. {self.note}' if self.note else ''))

    def describe(self, row: Row, skip: int = 0) -> str:
        """A row as ``arg=value, ... (metalayers_name)``, leaving out its first ``skip`` arguments."""
        shown = ', '.join(f'{a.name}={"any" if v is ANY else _show(v)}'
                          for a, v in list(zip(self.args, row.values))[skip:])
        return f'{shown} (metalayers_{row.model})' if shown else f'metalayers_{row.model}'

    # -- the other arguments ------------------------------------------------------------------------------------
    def _check_extra(self, extra: Dict[str, Any]) -> None:
        """Refuse a timm argument that repeats one of Metalhead's (``num_classes`` for ``nclasses``, ...)."""
        said_twice = {**_METALHEAD_NAMES, **{a.timm_name: a.name for a in self.args if a.timm_name}}
        for key in extra:
            if key in said_twice:
                raise TypeError(f'{self.__name__}: pass {said_twice[key]}= (Metalhead\'s name), not {key}=')

    def _tagged(self, name: str, row: Row, pretrain: Union[bool, str]) -> str:
        """``name.tag`` of the weights ``pretrain`` asks for (True: those Metalhead.jl loads where timm has them,
        else timm's default), or a ``ValueError`` when timm has none."""
        tags = [n.split('.', 1)[1] for n in timm.list_pretrained(name)]
        if pretrain is True:
            cfg = get_pretrained_cfg(name)
            if not tags or cfg is None or not cfg.has_weights:
                raise ValueError(f'{self.__name__}: pretrain=True, but timm has no pretrained weights for '
                                 f'{self.describe(row)}; pass pretrain=False')
            return f'{name}.{row.tag}' if row.tag else name
        if not isinstance(pretrain, str):
            raise TypeError(f'{self.__name__}: pretrain must be True, False or a pretrained tag of {name}, '
                            f'got {pretrain!r}')
        if pretrain not in tags:
            raise ValueError(f'{self.__name__}: pretrain={pretrain!r} is not a pretrained tag of {name}; '
                             f'its tags: {", ".join(tags) or "none"}')
        return f'{name}.{pretrain}'


_COMMON_DOC = """Common arguments (Metalhead.jl's):
    pretrain: True loads timm's Hub weights for this model (the same torchvision weights Metalhead.jl loads,
        where timm has them; else timm's default tag); a string picks a tag (``"a1_in1k"``).
    inchannels: input channels (timm's ``in_chans``).
    nclasses: output classes (timm's ``num_classes``).
    kwargs: more ``timm.create_model`` arguments (``drop_path_rate``, ``global_pool``, ``features_only``, ...).

Returns the module ``timm.create_model`` builds; ``.timm_call(...)`` gives that call without building it."""


def rows(model_of: Dict[Any, Union[str, Tuple[str, Optional[str]]]], **kwargs: Any) -> List[Row]:
    """Rows from ``{values: model}`` or ``{values: (model, tag)}`` (a single value need not be a tuple), each with
    the same fixed ``timm.create_model`` arguments."""
    out = []
    for values, target in model_of.items():
        model, tag = (target, None) if isinstance(target, str) else target
        out.append(Row(values if isinstance(values, tuple) else (values,), model, dict(kwargs), tag))
    return out
