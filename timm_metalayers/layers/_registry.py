"""Make this package's layers known to timm's layer factories (names, fx leaf modules)."""

import warnings

_done = False


def register_with_timm() -> None:
    """Add ``channellayernorm`` / ``layernormv2`` to timm's norm factory and mark shape-checking layers
    as fx leaf modules. Never replaces a name timm already has; warns once if timm lacks the registry."""
    global _done
    if _done:
        return
    _done = True
    from .drop import DropBlock, StochasticDepth
    from .norm import ChannelLayerNorm, LayerNormV2
    from .pool import TokenPool
    from .scale import Affine, LayerScale
    from .swapdims import SwapDims

    try:
        from timm.layers import create_norm
        norm_map = create_norm._NORM_MAP
    except (ImportError, AttributeError):
        warnings.warn('this timm version has no norm-layer registry (timm.layers.create_norm._NORM_MAP); '
                      'get_norm_layer("channellayernorm") / ("layernormv2") will not find this package\'s layers',
                      RuntimeWarning, stacklevel=2)
    else:
        norm_map.setdefault('channellayernorm', ChannelLayerNorm)
        norm_map.setdefault('layernormv2', LayerNormV2)
        if hasattr(create_norm, '_NORM_TYPES'):
            create_norm._NORM_TYPES.update({ChannelLayerNorm, LayerNormV2})

    from timm.layers import register_notrace_module
    for module in (DropBlock, StochasticDepth, ChannelLayerNorm, LayerNormV2, LayerScale, SwapDims, Affine, TokenPool):
        register_notrace_module(module)
