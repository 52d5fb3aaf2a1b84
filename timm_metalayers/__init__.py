"""timm-metalayers: Metalhead.jl's layer toolkit for PyTorch, and timm models built from it.

``import timm_metalayers`` registers every ``metalayers_*`` model with timm and this package's
normalisation layers with timm's norm factory; ``timm_metalayers.metalhead`` has Metalhead.jl's
constructors (``ResNet(50, pretrain=True)``, ``backbone(model)``, ...) for porting Julia code.
"""
from . import layers
from . import models
from . import hub
from . import metalhead
from ._timm_tests import pytest_collection_modifyitems, pytest_configure  # noqa: F401  (hooks for `pytest -p timm_metalayers`)

__version__ = '0.1.0'
