"""Metalhead.jl's model API in Python, for porting Julia code.

``ResNet(50, pretrain=True, nclasses=10)``, ``MobileNetv3("large", width_mult=1.0)``, ``ViT("base", imsize=256)``:
each constructor takes Metalhead's arguments (a Julia symbol ``:large`` is the string ``"large"``) and returns
what ``timm.create_model`` returns for the registered ``metalayers_*`` model of that configuration (the README's
"Porting from Metalhead.jl" table lists them). ``pretrain=True`` loads timm's Hub weights for it. A configuration
with no registered model raises ``ValueError`` naming the argument, the value and the values that have one.
``backbone(model)`` and ``classifier(model)`` split a model as Metalhead does.
"""
from .constructors import *  # noqa: F401,F403
from .constructors import __all__ as _constructors
from .parts import Backbone, Classifier, UNet, backbone, classifier
from ._spec import Constructor

__all__ = list(_constructors) + ['UNet', 'backbone', 'classifier', 'Backbone', 'Classifier', 'Constructor']
