"""The MLP mixers (MLP-Mixer, ResMLP, gMLP) built from ``timm_metalayers.layers`` by one builder, as
Metalhead.jl's ``mlpmixer(block, imsize; ...)`` builds all three with a block function per model.

``PatchEmbedding`` (tokens ``(N, L, C)``) → ``depth`` blocks from the model's block function → final norm →
``create_classifier(..., tokens=True)`` (mean over the tokens, then fc). Block functions:

- ``mixer_block``: ``SkipConnection`` over norm → ``swapdims`` → ``mlp_block`` across the tokens → ``swapdims``,
  then ``SkipConnection`` over norm → ``mlp_block`` across the channels;
- ``resmlp_block``: the same with an ``Affine`` "norm", one Linear across the tokens and a ``LayerScale`` on
  each branch;
- ``spatial_gating_block``: ``SkipConnection`` over norm → ``gated_mlp_block`` with a ``SpatialGatingUnit``.

The token mixing is sized for ``img_size // patch_size`` squared tokens: other input sizes are refused with an
error naming the size needed. The registered models load timm's ``mlp_mixer`` weights through
``checkpoint_filter_fn``.
"""
import re
from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from timm.models import register_model

from ..layers import (Affine, LayerNormV2, LayerScale, PatchEmbedding, SkipConnection, SpatialGatingUnit,
                      create_classifier, gated_mlp_block, linear_scheduler, mlp_block, swapdims)
from ..layers._factory import (ActivationArg, NormArg, check_positive_int, check_probability, create_norm, pair,
                               resolve_norm_layer)
from ..layers.pool import create_pool
from ._base import TimmModel, device_context, tokens_to_map
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs

__all__ = ['MlpMixer', 'mlpmixer', 'mixer_block', 'resmlp_block', 'spatial_gating_block', 'checkpoint_filter_fn']

BlockFn = Callable[..., nn.Module]
_LN = partial(LayerNormV2, eps=1e-6)


def _token_mixing(norm: nn.Module, mixer: nn.Module, scale: Optional[nn.Module] = None) -> nn.Sequential:
    """norm → tokens as features (``swapdims``) → ``mixer`` → back (→ ``scale``), as one named branch."""
    layers = [('norm', norm), ('to_tokens', swapdims((0, 2, 1))), ('mlp', mixer), ('to_channels', swapdims((0, 2, 1)))]
    if scale is not None:
        layers.append(('ls', scale))
    return nn.Sequential(OrderedDict(layers))


def mixer_block(planes: int, npatches: int, drop_path: Optional[float] = 0.0, *,
                mlp_ratio: Union[float, Tuple[float, float]] = (0.5, 4.0), act_layer: ActivationArg = 'gelu',
                norm_layer: NormArg = None, proj_drop: float = 0.0) -> nn.Sequential:
    """MLP-Mixer's block: token mixing (an ``mlp_block`` across the ``npatches`` tokens, hidden width
    ``mlp_ratio[0] * planes``) then channel mixing (hidden width ``mlp_ratio[1] * planes``), each a
    ``SkipConnection`` with a pre-norm (``LayerNormV2``, eps 1e-6, by default)."""
    tokens_ratio, channels_ratio = mlp_ratio if isinstance(mlp_ratio, (tuple, list)) else (mlp_ratio, mlp_ratio)
    norm = resolve_norm_layer(norm_layer) or _LN
    token_mlp = mlp_block(npatches, int(tokens_ratio * planes), activation=act_layer, dropout_prob=proj_drop)
    channel_mlp = mlp_block(planes, int(channels_ratio * planes), activation=act_layer, dropout_prob=proj_drop)
    return nn.Sequential(OrderedDict(
        token_mix=SkipConnection(_token_mixing(create_norm(norm, planes), token_mlp), drop_path),
        channel_mix=SkipConnection(nn.Sequential(OrderedDict(norm=create_norm(norm, planes), mlp=channel_mlp)),
                                   drop_path)))


def resmlp_block(planes: int, npatches: int, drop_path: Optional[float] = 0.0, *, mlp_ratio: float = 4.0,
                 init_values: float = 1e-4, act_layer: ActivationArg = 'gelu', norm_layer: NormArg = None,
                 proj_drop: float = 0.0) -> nn.Sequential:
    """ResMLP's block: an ``Affine`` "norm", one Linear across the tokens and a ``LayerScale(init_values)``,
    then ``Affine`` → channel ``mlp_block`` → ``LayerScale``, each a ``SkipConnection``."""
    norm = resolve_norm_layer(norm_layer) or Affine
    channel_mlp = mlp_block(planes, int(mlp_ratio * planes), activation=act_layer, dropout_prob=proj_drop)
    return nn.Sequential(OrderedDict(
        token_mix=SkipConnection(_token_mixing(create_norm(norm, planes), nn.Linear(npatches, npatches),
                                               LayerScale(planes, init_values)), drop_path),
        channel_mix=SkipConnection(nn.Sequential(OrderedDict(
            norm=create_norm(norm, planes), mlp=channel_mlp, ls=LayerScale(planes, init_values))), drop_path)))


def spatial_gating_block(planes: int, npatches: int, drop_path: Optional[float] = 0.0, *, mlp_ratio: float = 6.0,
                         act_layer: ActivationArg = 'gelu', norm_layer: NormArg = None,
                         proj_drop: float = 0.0) -> nn.Sequential:
    """gMLP's block: ``SkipConnection`` over norm → ``gated_mlp_block`` whose gate is a ``SpatialGatingUnit``
    across the ``npatches`` tokens."""
    norm = resolve_norm_layer(norm_layer) or _LN
    gated = gated_mlp_block(lambda width: SpatialGatingUnit(width, npatches), planes, int(mlp_ratio * planes),
                            activation=act_layer, dropout_prob=proj_drop)
    return nn.Sequential(OrderedDict(
        channel_mix=SkipConnection(nn.Sequential(OrderedDict(norm=create_norm(norm, planes), mlp=gated)),
                                   drop_path)))


class MlpMixer(TimmModel):
    """An MLP mixer with timm's model API (see the module docstring); the block function makes it MLP-Mixer,
    ResMLP or gMLP.

    Args:
        block: ``block(planes, npatches, drop_path, **block_kwargs) -> nn.Module`` (``mixer_block``,
            ``resmlp_block``, ``spatial_gating_block`` or your own).
        img_size: the input size (int or ``(H, W)``), divisible by ``patch_size``; it fixes the token count.
        patch_size: patch side.
        embed_dim: token width (Metalhead's ``embedplanes``).
        depth: number of blocks (timm's ``num_blocks``).
        in_chans, num_classes, drop_rate: timm's; ``drop_rate`` is the head's dropout.
        global_pool: ``'avg'`` (mean over the tokens), ``'max'``, ``'avgmax'`` or ``''`` (the head on every token).
        drop_path_rate: stochastic depth, scheduled over the blocks by ``linear_scheduler``.
        proj_drop_rate: dropout inside the MLPs.
        norm_layer: the blocks' norm and the final norm (the block function's default when None; the final
            norm is then ``LayerNormV2`` with eps 1e-6, or ``Affine`` for ``resmlp_block``).
        act_layer: activation of the MLPs (GELU).
        stem_norm: normalise the patch tokens.
        block_kwargs: more arguments for ``block`` (``mlp_ratio``, ``init_values``, ...).
    """
    output_fmts = ('NCHW', 'NLC')
    final_norm = 'norm'
    stem_pattern = r'^stem'
    block_pattern = [(r'^blocks\.(\d+)', None), (r'^norm', (99999,))]

    def __init__(self, block: BlockFn = mixer_block, img_size: Union[int, Tuple[int, int]] = 224, *,
                 patch_size: int = 16, embed_dim: int = 512, depth: int = 8, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = 'avg', drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, proj_drop_rate: float = 0.0, norm_layer: NormArg = None,
                 act_layer: ActivationArg = 'gelu', stem_norm: bool = False,
                 block_kwargs: Optional[Dict[str, Any]] = None, device=None, dtype=None):
        super().__init__()
        if not callable(block):
            raise TypeError(f'block must be a block function (planes, npatches, drop_path, ...) -> nn.Module, '
                            f'got {block!r}')
        img = pair(img_size, 'img_size')
        patch = pair(patch_size, 'patch_size')
        if img[0] % patch[0] or img[1] % patch[1]:
            raise ValueError(f'img_size={img_size!r} must be divisible by patch_size={patch_size!r}')
        check_positive_int(embed_dim, 'embed_dim')
        check_positive_int(depth, 'depth')
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        drop_rate = check_probability(drop_rate, 'drop_rate', allow_none=False)
        proj_drop_rate = check_probability(proj_drop_rate, 'proj_drop_rate', allow_none=False)
        create_pool(global_pool, argname='global_pool', tokens=True)  # an error naming global_pool
        final_norm = resolve_norm_layer(norm_layer) or (Affine if block is resmlp_block else _LN)
        with device_context(device):
            self.stem = PatchEmbedding(img, patch, in_chans, embed_dim, norm_layer=final_norm if stem_norm else None,
                                       fixed_size_reason=f'{block.__name__} mixes a fixed number of tokens')
            npatches = self.stem.num_patches
            self.blocks = nn.Sequential(*[
                block(embed_dim, npatches, p, act_layer=act_layer, norm_layer=norm_layer, proj_drop=proj_drop_rate,
                      **(block_kwargs or {}))
                for p in linear_scheduler(drop_path_rate, depth=depth)])
            self.norm = create_norm(final_norm, embed_dim)
            self.head = create_classifier(embed_dim, num_classes, pool_layer=global_pool,
                                          dropout_prob=drop_rate or None, tokens=True)
        feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=self.stem.feat_ratio())
                        for i in range(depth)]
        self.init_model_api(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, num_features=embed_dim,
                            feature_info=feature_info)
        self.init_weights()
        self.finish_init(dtype)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """timm's mixer initialisation in short: Xavier-uniform Linear weights, zero biases, a zero classifier;
        the spatial gating units start as their own ``init_weights`` says."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, SpatialGatingUnit):
                m.init_weights()
        fc = self.get_classifier()
        if isinstance(fc, nn.Linear):
            nn.init.zeros_(fc.weight)

    @torch.jit.ignore
    def _format_taps(self, taps: List[torch.Tensor], img_size: Tuple[int, int], output_fmt: str
                     ) -> List[torch.Tensor]:
        if output_fmt == 'NLC':
            return taps
        grid = self.stem.dynamic_feat_size(img_size)
        return [tokens_to_map(t, grid) for t in taps]


def mlpmixer(block: BlockFn, img_size: Union[int, Tuple[int, int]] = 224, **kwargs: Any) -> MlpMixer:
    """Metalhead's ``mlpmixer(block, imsize; patch_size, embedplanes, depth, ...)``: an MLP mixer made of
    ``block``s; ``kwargs`` are ``MlpMixer``'s."""
    return MlpMixer(block, img_size, **kwargs)


_BLOCK_PARTS = [
    # MLP-Mixer
    (r'norm1\.', 'token_mix.branch.norm.'), (r'mlp_tokens\.', 'token_mix.branch.mlp.'),
    (r'norm2\.', 'channel_mix.branch.norm.'), (r'mlp_channels\.', 'channel_mix.branch.mlp.'),
    # ResMLP
    (r'linear_tokens\.', 'token_mix.branch.mlp.'), (r'ls1$', 'token_mix.branch.ls.gamma'),
    (r'ls2$', 'channel_mix.branch.ls.gamma'),
    # gMLP
    (r'norm\.', 'channel_mix.branch.norm.'),
]


def _timm_to_ours(key: str) -> Optional[str]:
    m = re.match(r'^blocks\.(\d+)\.(.+)$', key)
    if m:
        for pattern, ours in _BLOCK_PARTS:
            if re.match(pattern, m.group(2)):
                return f'blocks.{m.group(1)}.{re.sub("^" + pattern, ours, m.group(2))}'
        return key
    return re.sub(r'^head\.', 'head.fc.', key)


def _affine_shape(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """timm's ``Affine`` keeps ``alpha``/``beta`` as ``(1, 1, C)``; ours are ``(C,)``."""
    if key.endswith(('.alpha', '.beta')) and value.numel() == target.numel():
        return value.reshape(target.shape)
    return value


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MlpMixer) -> Dict[str, torch.Tensor]:
    """Map a timm MLP-Mixer / ResMLP / gMLP checkpoint (or one in our naming) onto ``model``, strictly."""
    return remap_checkpoint(state_dict, model, _timm_to_ours, reshape=_affine_shape)


_TIMM_NAMES = {'num_blocks': 'depth'}


def _create(variant: str, pretrained: bool, block: BlockFn, arch: Dict[str, Any], /, **kwargs: Any) -> MlpMixer:
    kwargs = {**arch, **kwargs}
    for timm_name, ours in _TIMM_NAMES.items():
        if timm_name in kwargs:
            kwargs[ours] = kwargs.pop(timm_name)
    block_kwargs = {k: kwargs.pop(k) for k in ('mlp_ratio', 'init_values') if k in kwargs}
    return build_family_model(MlpMixer, variant, pretrained, checkpoint_filter_fn,
                              feature_cfg=dict(out_indices=kwargs.pop('out_indices', 3)),
                              block=block, block_kwargs=block_kwargs, **kwargs)


default_cfgs = twin_pretrained_cfgs({
    'mixer_s16_224': (),
    'mixer_b16_224': ('goog_in21k_ft_in1k', 'goog_in21k', 'miil_in21k', 'miil_in21k_ft_in1k'),
    'mixer_l16_224': ('goog_in21k_ft_in1k', 'goog_in21k'),
    'resmlp_12_224': ('fb_in1k', 'fb_distilled_in1k', 'fb_dino'),
    'resmlp_24_224': ('fb_in1k', 'fb_distilled_in1k', 'fb_dino'),
    'resmlp_36_224': ('fb_in1k', 'fb_distilled_in1k'),
    'resmlp_big_24_224': ('fb_in1k', 'fb_distilled_in1k', 'fb_in22k_ft_in1k'),
    'gmlp_ti16_224': (),
    'gmlp_s16_224': ('ra3_in1k',),
    'gmlp_b16_224': (),
}, first_conv='stem.proj', classifier='head.fc')


@register_model
def metalayers_mixer_s16_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """Mixer-S/16 (timm's ``mixer_s16_224``; timm has no weights for it)."""
    return _create('metalayers_mixer_s16_224', pretrained, mixer_block,
                   dict(patch_size=16, depth=8, embed_dim=512), **kwargs)


@register_model
def metalayers_mixer_b16_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """Mixer-B/16 (timm's ``mixer_b16_224``)."""
    return _create('metalayers_mixer_b16_224', pretrained, mixer_block,
                   dict(patch_size=16, depth=12, embed_dim=768), **kwargs)


@register_model
def metalayers_mixer_l16_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """Mixer-L/16 (timm's ``mixer_l16_224``)."""
    return _create('metalayers_mixer_l16_224', pretrained, mixer_block,
                   dict(patch_size=16, depth=24, embed_dim=1024), **kwargs)


@register_model
def metalayers_resmlp_12_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """ResMLP-12 (timm's ``resmlp_12_224``)."""
    return _create('metalayers_resmlp_12_224', pretrained, resmlp_block,
                   dict(patch_size=16, depth=12, embed_dim=384, mlp_ratio=4, init_values=1e-4), **kwargs)


@register_model
def metalayers_resmlp_24_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """ResMLP-24 (timm's ``resmlp_24_224``)."""
    return _create('metalayers_resmlp_24_224', pretrained, resmlp_block,
                   dict(patch_size=16, depth=24, embed_dim=384, mlp_ratio=4, init_values=1e-5), **kwargs)


@register_model
def metalayers_resmlp_36_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """ResMLP-36 (timm's ``resmlp_36_224``)."""
    return _create('metalayers_resmlp_36_224', pretrained, resmlp_block,
                   dict(patch_size=16, depth=36, embed_dim=384, mlp_ratio=4, init_values=1e-6), **kwargs)


@register_model
def metalayers_resmlp_big_24_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """ResMLP-B-24, 8x8 patches (timm's ``resmlp_big_24_224``)."""
    return _create('metalayers_resmlp_big_24_224', pretrained, resmlp_block,
                   dict(patch_size=8, depth=24, embed_dim=768, mlp_ratio=4, init_values=1e-6), **kwargs)


@register_model
def metalayers_gmlp_ti16_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """gMLP-Ti/16 (timm's ``gmlp_ti16_224``; timm has no weights for it)."""
    return _create('metalayers_gmlp_ti16_224', pretrained, spatial_gating_block,
                   dict(patch_size=16, depth=30, embed_dim=128, mlp_ratio=6), **kwargs)


@register_model
def metalayers_gmlp_s16_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """gMLP-S/16 (timm's ``gmlp_s16_224``)."""
    return _create('metalayers_gmlp_s16_224', pretrained, spatial_gating_block,
                   dict(patch_size=16, depth=30, embed_dim=256, mlp_ratio=6), **kwargs)


@register_model
def metalayers_gmlp_b16_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """gMLP-B/16 (timm's ``gmlp_b16_224``; timm has no weights for it)."""
    return _create('metalayers_gmlp_b16_224', pretrained, spatial_gating_block,
                   dict(patch_size=16, depth=30, embed_dim=512, mlp_ratio=6), **kwargs)
