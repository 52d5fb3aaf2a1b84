"""Vision Transformer (ViT) built from ``timm_metalayers.layers``, as Metalhead.jl builds its ``vit``.

``PatchEmbedding`` → ``ClassTokens`` → ``ViPosEmbedding`` → dropout → ``depth`` encoder blocks → class token
or mean of the patch tokens → ``LayerNormV2`` → ``create_classifier`` head. Each encoder block is two residual
branches, ``x + StochasticDepth(LayerScale(prenorm(dim, body)(x)))``, with ``MultiHeadSelfAttention`` and then
``mlp_block`` as the body. The registered ``metalayers_vit_*`` models load timm's ViT weights from the Hub
through ``checkpoint_filter_fn``.
"""
import re
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models import register_model

from ..layers import (ClassTokens, LayerNormV2, LayerScale, MultiHeadSelfAttention, PatchEmbedding, StochasticDepth,
                      ViPosEmbedding, create_classifier, linear_scheduler, mlp_block, prenorm)
from ..layers._factory import (ActivationArg, NormArg, check_bool, check_positive_int, check_probability, create_norm,
                               resolve_norm_layer)
from ..state_dict import CheckpointMismatchError
from ._base import TimmModel, device_context, tokens_to_map
from ._helpers import build_family_model, remap_checkpoint, twin_pretrained_cfgs

from timm.models._input import update_model_args, update_model_input_size

__all__ = ['VisionTransformer', 'EncoderBlock', 'transformer_encoder', 'vit', 'checkpoint_filter_fn']

GLOBAL_POOLS = ('token', 'avg', 'max', 'avgmax', '')

class EncoderBlock(nn.Module):
    """A transformer encoder block: attention and MLP as pre-norm residual branches.

    ``x = x + drop_path1(ls1(attn(x)))`` then ``x = x + drop_path2(ls2(mlp(x)))``, where ``attn`` is
    ``prenorm(dim, MultiHeadSelfAttention(...))`` and ``mlp`` is ``prenorm(dim, mlp_block(...))``;
    ``ls1``/``ls2`` are ``LayerScale`` (without parameters when ``init_values`` is None) and
    ``drop_path1``/``drop_path2`` are ``StochasticDepth(drop_path)``.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: Optional[float] = None, drop_path: float = 0.0, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, act_layer: ActivationArg = 'gelu', norm_layer: NormArg = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        norm_layer = norm_layer or partial(LayerNormV2, eps=1e-6, **dd)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f'mlp_ratio must be a number > 0, got {mlp_ratio!r}')
        attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                                      **dd)
        self.attn = prenorm(dim, attn, norm_layer=norm_layer)
        self.ls1 = LayerScale(dim, init_values, **dd)
        self.drop_path1 = StochasticDepth(drop_path)
        self.mlp = prenorm(dim, mlp_block(dim, int(dim * mlp_ratio), act_layer, proj_drop, **dd), norm_layer=norm_layer)
        self.ls2 = LayerScale(dim, init_values, **dd)
        self.drop_path2 = StochasticDepth(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(x)))
        x = x + self.drop_path2(self.ls2(self.mlp(x)))
        return x


def transformer_encoder(dim: int, depth: int, num_heads: int, *, drop_path_rate: float = 0.0,
                        **block_kwargs: Any) -> nn.Sequential:
    """``depth`` ``EncoderBlock``s; block ``i`` drops its branches with ``linear_scheduler(drop_path_rate,
    depth=depth)[i]``. ``block_kwargs`` go to every block (``mlp_ratio``, ``qkv_bias``, ``init_values``, ...)."""
    check_positive_int(depth, 'depth')
    rates = linear_scheduler(drop_path_rate, depth=depth)
    return nn.Sequential(*[EncoderBlock(dim, num_heads, drop_path=p, **block_kwargs) for p in rates])


def _check_global_pool(global_pool: object, class_token: bool) -> str:
    if not isinstance(global_pool, str) or global_pool not in GLOBAL_POOLS:
        raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}')
    if global_pool == 'token' and not class_token:
        raise ValueError("global_pool='token' needs the class token, got class_token=False")
    return global_pool


class VisionTransformer(TimmModel):
    """Vision Transformer with timm's model API (see the module docstring for the structure).

    Args:
        img_size: input image size (int or ``(H, W)``).
        patch_size: patch side (int or ``(h, w)``).
        in_chans: image channels.
        num_classes: classes of the head; 0 gives pooled features.
        global_pool: ``'token'`` (class token), ``'avg'`` / ``'max'`` / ``'avgmax'`` over the patch tokens,
            or ``''`` (no pooling: the head sees every token).
        embed_dim: token width.
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLPs relative to ``embed_dim``.
        qkv_bias: learn biases in the attention's ``qkv`` projection.
        init_values: ``LayerScale`` initial value on every branch; None leaves LayerScale off.
        class_token: prepend a class token.
        fc_norm: apply the final norm after pooling (True) or to every token before it (False); None chooses
            True for the pooling modes other than ``'token'``, as timm does. The weights are the same ``norm``.
        dynamic_img_size: accept images of any size (divisible by the patch size), resampling the position
            embedding on the fly.
        dynamic_img_pad: pad images to a multiple of the patch size.
        drop_rate: dropout in the head (``create_classifier(dropout_prob=...)``).
        pos_drop_rate: dropout after the position embedding.
        proj_drop_rate: dropout after the attention projection and in the MLPs.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, scheduled over the blocks by ``linear_scheduler``.
        act_layer: activation of the MLPs (default GELU).
        norm_layer: normalisation of the blocks and the final norm (default ``LayerNormV2`` with eps 1e-6).
        weight_init: ``''`` for timm's ViT initialisation, ``'skip'`` to keep the layers' own.
    """
    dynamic_img_size: torch.jit.Final[bool]
    norm_after_pool: torch.jit.Final[bool]
    output_fmts = ('NCHW', 'NLC')
    final_norm = 'norm'
    stem_pattern = r'^cls_token|^pos_embed|^patch_embed'
    block_pattern = [(r'^blocks\.(\d+)', None), (r'^norm', (99999,))]
    no_decay = ('pos_embed.weight', 'cls_token.token')

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            init_values: Optional[float] = None,
            class_token: bool = True,
            fc_norm: Optional[bool] = None,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            act_layer: ActivationArg = None,
            norm_layer: NormArg = None,
            weight_init: str = '',
            device=None,
            dtype=None,
    ):
        super().__init__()
        check_bool(class_token, 'class_token')
        self.global_pool = _check_global_pool(global_pool, class_token)
        if fc_norm is not None and not isinstance(fc_norm, bool):
            raise TypeError(f'fc_norm must be True, False or None, got {fc_norm!r}')
        if weight_init not in ('', 'skip'):
            raise ValueError(f"weight_init must be '' or 'skip', got {weight_init!r}")
        check_positive_int(num_classes, 'num_classes', allow_zero=True)
        check_positive_int(in_chans, 'in_chans')
        self.embed_dim = check_positive_int(embed_dim, 'embed_dim')
        drop_rate = check_probability(drop_rate, 'drop_rate', allow_none=False)
        self.num_prefix_tokens = 1 if class_token else 0
        self.has_class_token = class_token
        self.dynamic_img_size = bool(dynamic_img_size)
        self.norm_after_pool = global_pool not in ('token', '') if fc_norm is None else fc_norm

        dd = dict(device=device, dtype=dtype)
        norm_factory = resolve_norm_layer(norm_layer) or partial(LayerNormV2, eps=1e-6, **dd)
        with device_context(device):
            self.patch_embed = PatchEmbedding(img_size, patch_size, in_chans, embed_dim, dynamic_img_size=dynamic_img_size,
                                              dynamic_img_pad=dynamic_img_pad, **dd)
            num_patches = self.patch_embed.num_patches
            self.cls_token = ClassTokens(embed_dim, **dd) if class_token else nn.Identity()
            self.pos_embed = ViPosEmbedding(num_patches + self.num_prefix_tokens, embed_dim,
                                            num_prefix_tokens=self.num_prefix_tokens,
                                            grid_size=self.patch_embed.grid_size, **dd)
            self.pos_drop = nn.Dropout(check_probability(pos_drop_rate, 'pos_drop_rate', allow_none=False))
            self.blocks = transformer_encoder(
                embed_dim, depth, num_heads, drop_path_rate=drop_path_rate, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                init_values=init_values, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                act_layer='gelu' if act_layer is None else act_layer, norm_layer=norm_factory, **dd)
            self.norm = create_norm(norm_factory, embed_dim)
            self.head = create_classifier(embed_dim, num_classes, pool_layer=None, dropout_prob=drop_rate or None)
        reduction = self.patch_embed.feat_ratio()
        feature_info = [dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.init_model_api(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, num_features=embed_dim,
                            feature_info=feature_info)
        if weight_init != 'skip':
            self.init_weights()
        self.finish_init(dtype)  # layers built by user factories may not take a dtype

    @torch.jit.ignore
    def init_weights(self) -> None:
        """timm's ViT initialisation: truncated normal (std 0.02) for Linear weights and the position embedding,
        zero biases, a near-zero class token."""
        trunc_normal_(self.pos_embed.weight, std=0.02)
        if isinstance(self.cls_token, ClassTokens):
            nn.init.normal_(self.cls_token.token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head for ``num_classes`` (0: none); ``global_pool`` changes the pooling, None keeps it."""
        if global_pool is not None:
            self.global_pool = _check_global_pool(global_pool, self.has_class_token)
            update_model_args(self, fc_norm=self.norm_after_pool)
        super().reset_classifier(num_classes)

    @torch.jit.ignore
    def set_input_size(self, img_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Rebuild for another image size, resampling the learned position embedding."""
        if img_size is not None:
            self.patch_embed.set_input_size(img_size)
            self.pos_embed.set_grid_size(self.patch_embed.grid_size)
        update_model_input_size(self, self.patch_embed.img_size)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            grid = self.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))
            x = self.cls_token(self.patch_embed(x))
            x = self.pos_embed(x, [grid[0], grid[1]])
        else:
            x = self.pos_embed(self.cls_token(self.patch_embed(x)))
        return self.pos_drop(x)

    @torch.jit.ignore
    def _steps(self):
        steps = [('embed', self._embed)] + [(f'blocks.{i}', block) for i, block in enumerate(self.blocks)]
        return steps if self.norm_after_pool else steps + [('norm', self.norm)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(N, prefix + patches, embed_dim)`` after the blocks (and the final norm unless it
        follows the pooling)."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_steps(x)
        x = self.blocks(self._embed(x))
        if not self.norm_after_pool:
            x = self.norm(x)
        return x

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        """Pool tokens to ``(N, embed_dim)``: the class token, or the mean / max of the patch tokens."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == '':
            return x
        if pool_type == 'token':
            return x[:, 0]
        x = x[:, self.num_prefix_tokens:]
        if pool_type == 'avg':
            return x.mean(dim=1)
        if pool_type == 'max':
            return x.amax(dim=1)
        return 0.5 * (x.amax(dim=1) + x.mean(dim=1))

    @torch.jit.ignore
    def head_module_names(self) -> List[str]:
        """As ``TimmModel``'s, with the final norm first when it follows the pooling."""
        return (['norm'] if self.norm_after_pool else []) + super().head_module_names()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        if self.norm_after_pool:
            x = self.norm(x)
        return self.head(x, pre_logits)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The outputs of the blocks ``indices`` selects, as ``TimmModel.forward_intermediates``, with the
        patch tokens as a map (``'NCHW'``) or as tokens (``'NLC'``); ``return_prefix_tokens`` pairs each
        with its class token."""
        self._check_output_fmt(output_fmt)
        height, width = x.shape[-2], x.shape[-1]
        x, taps = self._forward_taps(x, indices, norm, stop_early)
        prefix_tokens = [y[:, 0:self.num_prefix_tokens] for y in taps]
        taps = [y[:, self.num_prefix_tokens:] for y in taps]
        if output_fmt == 'NCHW':
            grid = self.patch_embed.dynamic_feat_size((height, width))
            taps = [tokens_to_map(y, grid) for y in taps]
        if return_prefix_tokens and self.num_prefix_tokens:
            taps = list(zip(taps, prefix_tokens))
        return taps if intermediates_only else (x, taps)


# timm's ViT names → ours. Block keys: norm1/attn → attn.0/attn.1 (prenorm), norm2/mlp → mlp.0/mlp.1.
_BLOCK_PARTS = {'norm1': 'attn.0', 'attn': 'attn.1', 'ls1': 'ls1', 'norm2': 'mlp.0', 'mlp': 'mlp.1', 'ls2': 'ls2'}
_TOP_LEVEL = {'cls_token': 'cls_token.token', 'pos_embed': 'pos_embed.weight'}


def _timm_to_ours(key: str) -> Optional[str]:
    if key in _TOP_LEVEL:
        return _TOP_LEVEL[key]
    m = re.match(r'blocks\.(\d+)\.(norm1|attn|ls1|norm2|mlp|ls2)\.(.+)$', key)
    if m:
        return f'blocks.{m.group(1)}.{_BLOCK_PARTS[m.group(2)]}.{m.group(3)}'
    if key.startswith('head.'):
        return 'head.fc.' + key[len('head.'):]
    if key.startswith('fc_norm.'):  # timm's norm after pooling is our one final norm
        return 'norm.' + key[len('fc_norm.'):]
    if key.startswith('pre_logits.'):  # representation layer of old in21k checkpoints, unused (as in timm)
        return None
    return key  # patch_embed.proj.*, norm.*; anything else is reported as unmapped


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """Map a timm ViT checkpoint (or one in our naming) onto ``model``, strictly.

    Every key must map and every shape must match, except the position embedding, which is resampled
    (bicubic, antialiased, as timm does) when the model's patch grid differs from the checkpoint's.
    Raises ``CheckpointMismatchError`` naming the offending keys.
    """
    patch_weight = state_dict.get('patch_embed.proj.weight')

    def resample_pos_embed(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if key != 'pos_embed.weight' or value.dim() != 3 or value.shape[-1] != target.shape[-1]:
            return value  # reported as a shape mismatch
        prefix = model.num_prefix_tokens
        old_grid = _checkpoint_grid(model, patch_weight, value.shape[1] - prefix)
        if old_grid is None:
            raise CheckpointMismatchError(
                f'pos_embed: cannot tell the patch grid of a checkpoint with {value.shape[1] - prefix} patch '
                f'positions (not a square; pretrained_cfg input_size does not match either)')
        return resample_abs_pos_embed(value, new_size=list(model.patch_embed.grid_size), old_size=list(old_grid),
                                      num_prefix_tokens=prefix, interpolation='bicubic', antialias=True)

    return remap_checkpoint(state_dict, model, _timm_to_ours, reshape=resample_pos_embed)


def _checkpoint_grid(model: nn.Module, patch_weight: Optional[torch.Tensor], num_patches: int
                     ) -> Optional[Tuple[int, int]]:
    """The checkpoint's patch grid: from ``pretrained_cfg['input_size']`` if it accounts for every patch,
    else a square."""
    if num_patches < 1:
        return None
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    input_size = cfg.get('input_size')
    if input_size is not None:
        patch = tuple(patch_weight.shape[-2:]) if patch_weight is not None and patch_weight.dim() == 4 \
            else model.patch_embed.patch_size
        grid = (input_size[-2] // patch[0], input_size[-1] // patch[1])
        if grid[0] * grid[1] == num_patches:
            return grid
    side = int(round(num_patches ** 0.5))
    return (side, side) if side * side == num_patches else None


def vit(variant: str, pretrained: bool = False, arch: Optional[Dict[str, Any]] = None, **kwargs: Any
        ) -> VisionTransformer:
    """The family's builder: ``VisionTransformer`` with the architecture ``arch`` (``patch_size``,
    ``embed_dim``, ``depth``, ``num_heads``, ...) overridden by ``kwargs``, through timm's
    ``build_model_with_cfg`` (pretrained weights via ``checkpoint_filter_fn``, ``features_only`` via
    ``forward_intermediates``; ``out_indices`` defaults to the last 3 blocks)."""
    kwargs = {**(arch or {}), **kwargs}
    out_indices = kwargs.pop('out_indices', 3)
    return build_family_model(VisionTransformer, variant, pretrained, checkpoint_filter_fn,
                              feature_cfg=dict(out_indices=out_indices), **kwargs)


# timm's configs (input size, mean/std 0.5, crop, licence, ...) with our layer names; the weights are the
# model.safetensors of timm's Hub repositories.
default_cfgs = twin_pretrained_cfgs({
    'vit_tiny_patch16_224': ('augreg_in21k_ft_in1k',),
    'vit_small_patch16_224': ('augreg_in21k_ft_in1k',),
    'vit_base_patch16_224': ('augreg2_in21k_ft_in1k', 'augreg_in21k_ft_in1k'),
    'vit_base_patch32_224': ('augreg_in21k_ft_in1k',),
    'vit_large_patch16_224': ('augreg_in21k_ft_in1k',),
    'vit_base_patch16_384': ('augreg_in21k_ft_in1k',),
}, first_conv='patch_embed.proj', classifier='head.fc')


@register_model
def metalayers_vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 at 224x224 (timm's ``vit_tiny_patch16_224``)."""
    arch = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return vit('metalayers_vit_tiny_patch16_224', pretrained, arch, **kwargs)


@register_model
def metalayers_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 at 224x224 (timm's ``vit_small_patch16_224``)."""
    arch = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return vit('metalayers_vit_small_patch16_224', pretrained, arch, **kwargs)


@register_model
def metalayers_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 at 224x224 (timm's ``vit_base_patch16_224``)."""
    arch = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return vit('metalayers_vit_base_patch16_224', pretrained, arch, **kwargs)


@register_model
def metalayers_vit_base_patch32_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/32 at 224x224 (timm's ``vit_base_patch32_224``)."""
    arch = dict(patch_size=32, embed_dim=768, depth=12, num_heads=12)
    return vit('metalayers_vit_base_patch32_224', pretrained, arch, **kwargs)


@register_model
def metalayers_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-L/16 at 224x224 (timm's ``vit_large_patch16_224``)."""
    arch = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
    return vit('metalayers_vit_large_patch16_224', pretrained, arch, **kwargs)


@register_model
def metalayers_vit_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 at 384x384 (timm's ``vit_base_patch16_384``)."""
    arch = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return vit('metalayers_vit_base_patch16_384', pretrained, arch, **kwargs)
