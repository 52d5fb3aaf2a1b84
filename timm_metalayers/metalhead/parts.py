"""Metalhead.jl's ``backbone(model)`` and ``classifier(model)``, and its ``UNet`` constructor.

In Metalhead a model is ``Chain(backbone, classifier)``. Here ``backbone(model)`` and ``classifier(model)`` are
modules made of the model's own children (the same parameters, not copies) that compose:
``classifier(model)(backbone(model)(x)) == model(x)``; they run the model's ``forward_features`` and
``forward_head``, so they work for every model built on the shared ``TimmModel`` machinery.
"""
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..layers._factory import check_bool, check_positive_int, pair
from ..models._base import TimmModel

__all__ = ['Backbone', 'Classifier', 'backbone', 'classifier', 'UNet']


def _timm_model(model: Any, what: str) -> TimmModel:
    if isinstance(model, _Part):
        model = model.model
    if not isinstance(model, TimmModel):
        raise TypeError(f'{what}(model) takes a model of this package (what the Metalhead constructors and '
                        f'timm.create_model("metalayers_...") return), got {type(model).__name__}')
    return model


class _Part(nn.Module):
    """Some children of ``model`` (shared, registered here under their names) and a forward that is one of the
    model's methods. The model itself is kept outside ``_modules``, so the part's parameters are its own."""

    def __init__(self, model: TimmModel, names: Sequence[str]):
        super().__init__()
        for name in names:
            self.add_module(name, model._modules[name])
        object.__setattr__(self, 'model', model)


class Backbone(_Part):
    """The trunk of a model: ``backbone(x)`` is ``model.forward_features(x)``, the unpooled features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class Classifier(_Part):
    """The head of a model: ``classifier(features)`` is ``model.forward_head(features)``, the logits."""

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)


def backbone(model: nn.Module) -> Backbone:
    """Metalhead's ``backbone(model)``: the feature extractor, made of ``model``'s trunk modules."""
    model = _timm_model(model, 'backbone')
    return Backbone(model, model.trunk_module_names())


def classifier(model: nn.Module) -> Classifier:
    """Metalhead's ``classifier(model)``: the head (pool, dense layers), made of ``model``'s head modules."""
    model = _timm_model(model, 'classifier')
    return Classifier(model, model.head_module_names())


def UNet(imsize: Union[int, Tuple[int, int]] = (256, 256), inchannels: int = 3, outplanes: int = 3,
         encoder_backbone: Optional[Union[str, nn.Module]] = None, *, pretrain: bool = False,
         **kwargs: Any) -> nn.Module:
    """Metalhead's ``UNet(imsize, inchannels, outplanes, encoder_backbone; pretrain)``: ``create_unet`` on an
    encoder.

    ``encoder_backbone`` is a registered model name, or a model (or its ``backbone(model)``) built here, whose
    weights the encoder starts from; None is Metalhead's default, DenseNet-121. ``imsize`` must be divisible by
    the encoder's reduction (the UNet then takes any such size). ``kwargs`` go to ``create_unet``.
    """
    from ..models.unet import create_unet
    if check_bool(pretrain, 'UNet: pretrain'):
        raise ValueError('UNet: pretrain=True, but there are no pretrained UNet weights (Metalhead.jl has none '
                         'either); start the encoder from a pretrained model instead: '
                         'UNet(..., encoder_backbone=backbone(ResNet(18, pretrain=True)))')
    check_positive_int(inchannels, 'UNet: inchannels')
    check_positive_int(outplanes, 'UNet: outplanes')
    size = pair(imsize, 'UNet: imsize')
    source = None if encoder_backbone is None or isinstance(encoder_backbone, str) else \
        _timm_model(encoder_backbone, 'UNet encoder_backbone')
    name = encoder_backbone if isinstance(encoder_backbone, str) else \
        'metalayers_densenet121' if source is None else source.pretrained_cfg['architecture']
    unet = create_unet(name, num_classes=outplanes, in_chans=inchannels, **kwargs)
    if size[0] % unet.reduction or size[1] % unet.reduction:
        raise ValueError(f'UNet: imsize={size} must be divisible by the reduction of the {name} encoder '
                         f'({unet.reduction})')
    if source is not None:
        _copy_encoder_weights(source, unet.encoder.model, name)
    return unet


def _copy_encoder_weights(source: nn.Module, encoder: nn.Module, name: str) -> None:
    """``source``'s weights into ``encoder`` (the same architecture, maybe without its head), every key checked."""
    have = source.state_dict()
    want = encoder.state_dict()
    wrong = [k for k, v in want.items() if k not in have or have[k].shape != v.shape]
    if wrong:
        raise ValueError(f'UNet: encoder_backbone is not the {name} that create_unet builds (built with other '
                         f'arguments?): {len(wrong)} encoder weights differ, first {wrong[:3]}; pass a model built '
                         f'with its defaults or the name {name!r}')
    encoder.load_state_dict({k: have[k] for k in want})
