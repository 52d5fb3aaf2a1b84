"""Metalhead.jl's Layers module for PyTorch: building blocks that compose timm-style models."""
from ._factory import ActivationFn, create_activation, create_norm, resolve_norm_layer
from .classifier import ClassifierHead, HeadResetError, create_classifier
from .chains import flatten_chains
from .connections import ActAdd, AddAct, SkipConnection, actadd, addact
from .conv import basic_conv_bn, conv_norm
from .drop import DropBlock, StochasticDepth, dropblock, linear_scheduler
from .norm import ChannelLayerNorm, LayerNormV2, prenorm
from .pool import AdaptiveMeanMaxPool, TokenPool, cat_channels, create_pool
from .scale import Affine, InputScale, LayerScale, inputscale
from .spatial_gating import SpatialGatingUnit
from .squeeze_excite import EffectiveSqueezeExcite, SqueezeExcite, effective_squeeze_excite, squeeze_excite
from .swapdims import SwapDims, swapdims
from ._registry import register_with_timm

register_with_timm()

__all__ = [
    'conv_norm', 'basic_conv_bn',
    'LayerScale', 'Affine', 'LayerNormV2', 'ChannelLayerNorm', 'prenorm',
    'DropBlock', 'dropblock', 'StochasticDepth', 'linear_scheduler',
    'AdaptiveMeanMaxPool', 'TokenPool', 'cat_channels', 'create_pool', 'create_classifier', 'ClassifierHead', 'HeadResetError',
    'SqueezeExcite', 'squeeze_excite', 'EffectiveSqueezeExcite', 'effective_squeeze_excite',
    'inputscale', 'InputScale', 'addact', 'actadd', 'AddAct', 'ActAdd', 'SkipConnection', 'flatten_chains', 'swapdims', 'SwapDims',
    'ActivationFn', 'create_activation', 'create_norm', 'resolve_norm_layer',
]

from .mbconv import FusedMBConv, MBConv, dwsep_conv_norm, fused_mbconv, mbconv
__all__ += ['dwsep_conv_norm', 'mbconv', 'MBConv', 'fused_mbconv', 'FusedMBConv']
from .attention import MultiHeadSelfAttention
from .embedding import ClassTokens, PatchEmbedding, ViPosEmbedding
from .mlp import gated_mlp_block, mlp_block

__all__ += ['MultiHeadSelfAttention', 'PatchEmbedding', 'ClassTokens', 'ViPosEmbedding', 'mlp_block',
            'gated_mlp_block', 'SpatialGatingUnit']
