"""Argument checks shared by the Hub modules: each names the argument and what it got."""
import os
from pathlib import Path
from typing import Union

from torch import nn

PathLike = Union[str, 'os.PathLike[str]']


def check_module(model: object, argname: str = 'model') -> nn.Module:
    """``model`` itself, or a ``TypeError`` when it is not a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f'{argname} must be a torch.nn.Module, got {type(model).__name__}')
    return model


def check_path(path: object, argname: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or a ``TypeError`` when it is not a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'{argname} must be a str or os.PathLike, got {type(path).__name__}')
    return Path(path)
