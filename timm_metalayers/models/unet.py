"""UNet as Metalhead.jl's ``unet(backbone, ...)``: an encoder from any registered model with ``features_only``
support and Metalhead's decoder (``pixel_shuffle_icnr`` upsampling, ``cat_channels`` skips, ``basic_conv_bn``
combine blocks, a ``basicblock`` final block), giving per-pixel logits at the input resolution.

Paper: `U-Net: Convolutional Networks for Biomedical Image Segmentation` - https://arxiv.org/abs/1505.04597

A segmentation model: built with ``create_unet``, not registered as a timm classifier.
"""
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from ..layers import basic_conv_bn, cat_channels, create_activation
from ..layers._factory import check_bool, check_positive_int
from .resnet import basicblock

__all__ = ['UNet', 'UNetBlock', 'create_unet', 'pixel_shuffle_icnr', 'unet_combine_layer', 'unet_middle_block',
           'unet_final_block']


def _icnr_(weight: torch.Tensor, scale: int) -> None:
    """ICNR initialisation: every group of ``scale**2`` output channels that ``PixelShuffle`` spreads over one
    output pixel block starts equal, so the upsampling starts free of checkerboard artefacts."""
    out_channels = weight.shape[0] // (scale * scale)
    base = torch.empty((out_channels,) + tuple(weight.shape[1:]), device=weight.device, dtype=weight.dtype)
    nn.init.kaiming_normal_(base)
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale * scale, dim=0))


def pixel_shuffle_icnr(inplanes: int, outplanes: int, *, r: int = 2) -> nn.Sequential:
    """Metalhead's ``pixel_shuffle_icnr``: a 1x1 ``basic_conv_bn`` to ``outplanes * r**2`` channels, then
    ``PixelShuffle(r)`` (``r`` times the resolution), the conv ICNR-initialised."""
    check_positive_int(r, 'r')
    conv = nn.Sequential(*basic_conv_bn(1, inplanes, outplanes * r * r))
    _icnr_(conv[0].weight, r)
    return nn.Sequential(conv, nn.PixelShuffle(r))


def unet_combine_layer(inplanes: int, outplanes: int) -> nn.Sequential:
    """Two 3x3 ``basic_conv_bn`` blocks, ``inplanes → outplanes → outplanes``."""
    return nn.Sequential(nn.Sequential(*basic_conv_bn(3, inplanes, outplanes, pad=1)),
                         nn.Sequential(*basic_conv_bn(3, outplanes, outplanes, pad=1)))


def unet_middle_block(inplanes: int) -> nn.Sequential:
    """At the bottom of the U: two 3x3 ``basic_conv_bn`` blocks, ``inplanes → 2 inplanes → inplanes``."""
    return nn.Sequential(nn.Sequential(*basic_conv_bn(3, inplanes, 2 * inplanes, pad=1)),
                         nn.Sequential(*basic_conv_bn(3, 2 * inplanes, inplanes, pad=1)))


def unet_final_block(inplanes: int, num_classes: int) -> nn.Sequential:
    """A ResNet ``basicblock`` then a 1x1 conv (with bias, no norm or activation: the logits)."""
    return nn.Sequential(basicblock(inplanes, inplanes), nn.Conv2d(inplanes, num_classes, kernel_size=1))


class UNetBlock(nn.Module):
    """One level of the decoder, Metalhead's ``unet_block`` around its child: ``up`` (``pixel_shuffle_icnr``,
    ``scale`` times the resolution) on the deeper output, concatenated (``cat_channels``) with the batch-normed
    skip, ReLU, then ``combine`` (``unet_combine_layer``)."""

    def __init__(self, skip_planes: int, deep_planes: int, outplanes: int, scale: int):
        super().__init__()
        self.up = pixel_shuffle_icnr(deep_planes, deep_planes, r=scale)
        self.skip_norm = nn.BatchNorm2d(skip_planes)
        self.act = create_activation('relu', inplace=True)
        self.combine = unet_combine_layer(skip_planes + deep_planes, outplanes)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.combine(self.act(cat_channels(self.up(deep), self.skip_norm(skip))))


class UNet(nn.Module):
    """Encoder (a timm ``features_only`` model) → ``middle`` → ``decoder`` (one ``UNetBlock`` per skip, the
    deepest first; the input itself is the last skip) → ``final``: logits ``(N, num_classes, H, W)``.

    ``H`` and ``W`` must be multiples of ``reduction`` (the encoder's deepest output stride)."""

    def __init__(self, encoder: nn.Module, num_classes: int, in_chans: int, head_planes: Optional[int] = None):
        super().__init__()
        channels: List[int] = list(encoder.feature_info.channels())
        reductions: List[int] = list(encoder.feature_info.reduction())
        levels = [(in_chans, 1)] + list(zip(channels, reductions))
        for (_, shallow), (_, deep) in zip(levels, levels[1:]):
            if deep <= shallow or deep % shallow:
                raise ValueError(f'the encoder\'s feature reductions {reductions} must grow by whole factors '
                                 '(pick out_indices with distinct output strides)')
        self.encoder = encoder
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.reductions = reductions
        self.reduction = reductions[-1]
        self.middle = unet_middle_block(channels[-1])
        blocks = []
        deep_planes = channels[-1]
        for i in range(len(levels) - 2, -1, -1):  # deepest skip first; the input is the shallowest skip
            skip_planes, shallow = levels[i]
            outplanes = skip_planes if i > 0 else (head_planes or channels[0])
            blocks.append(UNetBlock(skip_planes, deep_planes, outplanes, levels[i + 1][1] // shallow))
            deep_planes = outplanes
        self.decoder = nn.ModuleList(blocks)
        self.final = unet_final_block(deep_planes, num_classes)

    def _check_size(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> None:
        height, width = x.shape[-2:]
        if height % self.reduction or width % self.reduction:
            raise ValueError(f'UNet input size {height}x{width} must be divisible by the encoder\'s reduction '
                             f'{self.reduction}')
        for feature, reduction in zip(features, self.reductions):
            if feature.shape[-2] * reduction != height or feature.shape[-1] * reduction != width:
                raise ValueError(f'the encoder gives a {feature.shape[-2]}x{feature.shape[-1]} map at reduction '
                                 f'{reduction} for a {height}x{width} input: its padding does not keep exact '
                                 f'output strides, so it cannot be a UNet encoder')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.reduction or x.shape[-1] % self.reduction:
            self._check_size(x, [])
        features = self.encoder(x)
        self._check_size(x, features)
        skips = [x] + list(features[:-1])
        out = self.middle(features[-1])
        for block, skip in zip(self.decoder, reversed(skips)):
            out = block(out, skip)
        return self.final(out)


def create_unet(backbone: str = 'metalayers_resnet18', num_classes: int = 3, pretrained_backbone: bool = False,
                *, head_planes: Optional[int] = None, **backbone_kwargs: Any) -> UNet:
    """Build a UNet on ``backbone`` (Metalhead.jl's ``unet``).

    Args:
        backbone: a registered timm model with ``features_only`` support (``metalayers_resnet18``,
            ``metalayers_mobilenetv3_small_050``, ``metalayers_googlenet``, ... or any of timm's own).
        num_classes: output channels (per-pixel classes).
        pretrained_backbone: load the backbone's pretrained weights, as ``timm.create_model`` does
            (``pretrained_cfg_overlay=dict(file=...)`` in ``backbone_kwargs`` names a local file).
        head_planes: width of the decoder's last level (default: the encoder's first feature width; Metalhead
            narrows it to the input channels).
        backbone_kwargs: passed on to ``timm.create_model`` (``in_chans``, ``out_indices``, ``norm_layer``,
            ``pretrained_cfg_overlay``, ...).
    """
    import timm
    import timm_metalayers  # noqa: F401  (registers the models)
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(f'backbone must be a registered model name, got {backbone!r}')
    if backbone.split('.')[0] not in timm.list_models() and not backbone.startswith('hf-hub:'):
        raise ValueError(f'backbone={backbone!r} is not a registered timm model')
    check_positive_int(num_classes, 'num_classes')
    check_bool(pretrained_backbone, 'pretrained_backbone')
    if head_planes is not None:
        check_positive_int(head_planes, 'head_planes')
    for name in ('features_only', 'num_classes'):
        if name in backbone_kwargs:
            raise TypeError(f'create_unet sets {name} of the backbone itself; do not pass {name}=')
    encoder = timm.create_model(backbone, pretrained=pretrained_backbone, features_only=True, **backbone_kwargs)
    return UNet(encoder, num_classes, backbone_kwargs.get('in_chans', 3), head_planes)
