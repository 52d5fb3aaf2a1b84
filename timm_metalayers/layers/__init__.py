"""Metalhead.jl's Layers module for PyTorch: building blocks that compose timm-style models."""
from ._factory import ActivationFn, create_activation, create_norm, resolve_norm_layer
from .classifier import ClassifierHead, HeadResetError, create_classifier
from .conv import basic_conv_bn, conv_norm
from .drop import DropBlock, StochasticDepth, dropblock, linear_scheduler
from .norm import ChannelLayerNorm, LayerNormV2, prenorm
from .pool import AdaptiveMeanMaxPool, cat_channels, create_pool
from .scale import LayerScale
from .squeeze_excite import SqueezeExcite, squeeze_excite
from ._registry import register_with_timm

register_with_timm()

__all__ = [
    'conv_norm', 'basic_conv_bn',
    'LayerScale', 'LayerNormV2', 'ChannelLayerNorm', 'prenorm',
    'DropBlock', 'dropblock', 'StochasticDepth', 'linear_scheduler',
    'AdaptiveMeanMaxPool', 'cat_channels', 'create_pool', 'create_classifier', 'ClassifierHead', 'HeadResetError',
    'SqueezeExcite', 'squeeze_excite',
    'ActivationFn', 'create_activation', 'create_norm', 'resolve_norm_layer',
]

from .mbconv import MBConv, dwsep_conv_norm, mbconv
__all__ += ['dwsep_conv_norm', 'mbconv', 'MBConv']
from .attention import MultiHeadSelfAttention
from .embedding import ClassTokens, PatchEmbedding, ViPosEmbedding
from .mlp import mlp_block

__all__ += ['MultiHeadSelfAttention', 'PatchEmbedding', 'ClassTokens', 'ViPosEmbedding', 'mlp_block']
