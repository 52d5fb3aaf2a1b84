"""Transformer layers: PatchEmbedding, ClassTokens, ViPosEmbedding, MultiHeadSelfAttention, mlp_block."""
import pytest
import torch
from torch import nn
from timm.layers import Attention, Mlp, PatchEmbed, resample_abs_pos_embed

from timm_metalayers.layers import (ClassTokens, LayerNormV2, LayerScale, MultiHeadSelfAttention, PatchEmbedding,
                                    ViPosEmbedding, mlp_block, prenorm)


# ---------------------------------------------------------------- PatchEmbedding

def test_patch_embedding_matches_timm_patch_embed():
    torch.manual_seed(0)
    ours = PatchEmbedding(32, 8, 3, 24)
    ref = PatchEmbed(32, 8, 3, 24)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    out = ours(x)
    assert out.shape == (2, 16, 24)
    torch.testing.assert_close(out, ref(x))
    assert ours.grid_size == (4, 4) and ours.num_patches == 16 and ours.feat_ratio() == 8


def test_patch_embedding_map_output_and_norm():
    emb = PatchEmbedding((32, 48), (8, 16), 1, 6, flatten=False, norm_layer=LayerNormV2)
    assert emb.grid_size == (4, 3)
    out = emb(torch.randn(2, 1, 32, 48))
    assert out.shape == (2, 6, 4, 3)
    # the norm normalises each token across its channels
    torch.testing.assert_close(out.mean(1), torch.zeros(2, 4, 3), atol=1e-5, rtol=0)


def test_patch_embedding_dynamic_sizes_and_padding():
    emb = PatchEmbedding(32, 8, 3, 4, dynamic_img_size=True)
    assert emb(torch.randn(1, 3, 16, 40)).shape == (1, 10, 4)
    with pytest.raises(ValueError, match='divisible by patch_size'):
        emb(torch.randn(1, 3, 17, 40))
    padded = PatchEmbedding(32, 8, 3, 4, dynamic_img_size=True, dynamic_img_pad=True)
    assert padded(torch.randn(1, 3, 17, 40)).shape == (1, 3 * 5, 4)
    assert padded.dynamic_feat_size((17, 40)) == (3, 5)
    emb.set_input_size(64)
    assert emb.img_size == (64, 64) and emb.grid_size == (8, 8)


def test_patch_embedding_errors():
    emb = PatchEmbedding(32, 8, 3, 4)
    with pytest.raises(ValueError, match=r'img_size=\(32, 32\).*\(16, 32\).*dynamic_img_size'):
        emb(torch.randn(1, 3, 16, 32))
    with pytest.raises(ValueError, match='in_chans=3'):
        emb(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='in_chans=3'):
        emb(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='smaller than patch_size'):
        PatchEmbedding(4, 8, 3, 4)
    with pytest.raises(TypeError, match='patch_size'):
        PatchEmbedding(32, 2.5, 3, 4)
    with pytest.raises(ValueError, match='embed_dim'):
        PatchEmbedding(32, 8, 3, 0)
    with pytest.raises(TypeError, match='flatten'):
        PatchEmbedding(32, 8, 3, 4, flatten='yes')
    with pytest.raises(ValueError, match='norm_layer'):
        PatchEmbedding(32, 8, 3, 4, norm_layer='no_such_norm')


# ---------------------------------------------------------------- ClassTokens / ViPosEmbedding

def test_class_tokens_prepends_one_learned_token():
    ct = ClassTokens(4)
    with torch.no_grad():
        ct.token.fill_(3.0)
    x = torch.randn(2, 5, 4)
    out = ct(x)
    assert out.shape == (2, 6, 4)
    assert torch.equal(out[:, 0], torch.full((2, 4), 3.0)) and torch.equal(out[:, 1:], x)
    out.sum().backward()
    assert ct.token.grad is not None
    with pytest.raises(ValueError, match=r'ClassTokens\(dim=4\)'):
        ct(torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match='dim'):
        ClassTokens(4.0)


def test_vi_pos_embedding_adds_and_resamples_like_timm():
    pe = ViPosEmbedding(1 + 9, 4)
    assert pe.grid_size == (3, 3) and pe.weight.shape == (1, 10, 4)
    x = torch.randn(2, 10, 4)
    torch.testing.assert_close(pe(x), x + pe.weight)
    # another grid: the patch part is resampled (bicubic, antialiased), the class token kept
    expected = resample_abs_pos_embed(pe.weight, new_size=[4, 5], old_size=[3, 3], num_prefix_tokens=1)
    torch.testing.assert_close(pe.resample((4, 5)), expected)
    y = torch.randn(2, 21, 4)
    torch.testing.assert_close(pe(y, [4, 5]), y + expected)
    assert torch.equal(pe.resample((3, 3)), pe.weight)


def test_vi_pos_embedding_set_grid_size_keeps_frozen():
    pe = ViPosEmbedding(16, 2, num_prefix_tokens=0, grid_size=(2, 8))
    pe.requires_grad_(False)
    before = pe.resample((4, 4))
    pe.set_grid_size((4, 4))
    assert pe.grid_size == (4, 4) and not pe.weight.requires_grad
    torch.testing.assert_close(pe.weight, before)


def test_vi_pos_embedding_errors():
    with pytest.raises(ValueError, match='not a square grid'):
        ViPosEmbedding(11, 4)
    with pytest.raises(ValueError, match=r'grid_size=\(2, 3\) has 6 patches'):
        ViPosEmbedding(11, 4, grid_size=(2, 3))
    with pytest.raises(ValueError, match='num_prefix_tokens'):
        ViPosEmbedding(10, 4, num_prefix_tokens=-1)
    pe = ViPosEmbedding(10, 4)
    with pytest.raises(ValueError, match=r'expects tokens \(N, 10, 4\).*grid_size'):
        pe(torch.randn(1, 12, 4))


# ---------------------------------------------------------------- MultiHeadSelfAttention

def test_attention_matches_timm_attention_and_manual_softmax():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 4, qkv_bias=True).eval()
    ref = Attention(16, num_heads=4, qkv_bias=True).eval()
    ref.load_state_dict(attn.state_dict())
    x = torch.randn(2, 7, 16)
    out = attn(x)
    torch.testing.assert_close(out, ref(x), atol=1e-6, rtol=1e-5)
    # by hand
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    manual = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=1e-5)


def test_attention_mask_and_dropout():
    attn = MultiHeadSelfAttention(8, 2, attn_drop=0.5).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    causal = attn(x, attn_mask=mask)
    # the first token sees only itself, so it does not change with the others
    x2 = x.clone()
    x2[:, 1:] += 1.0
    torch.testing.assert_close(attn(x2, attn_mask=mask)[:, 0], causal[:, 0])
    assert torch.equal(attn(x), attn(x))  # eval: no dropout
    attn.train()
    torch.manual_seed(0)
    assert not torch.equal(attn(x), attn(x))


def test_attention_errors():
    with pytest.raises(ValueError, match='dim=10 and num_heads=4'):
        MultiHeadSelfAttention(10, 4)
    with pytest.raises(TypeError, match='num_heads'):
        MultiHeadSelfAttention(8, 2.0)
    with pytest.raises(TypeError, match='qkv_bias'):
        MultiHeadSelfAttention(8, 2, qkv_bias=1)
    with pytest.raises(ValueError, match='attn_drop'):
        MultiHeadSelfAttention(8, 2, attn_drop=1.5)
    attn = MultiHeadSelfAttention(8, 2)
    with pytest.raises(ValueError, match=r'dim=8.*\[2, 3, 6\]'):
        attn(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match=r'dim=8'):
        attn(torch.randn(3, 8))


def test_attention_scripts():
    attn = MultiHeadSelfAttention(8, 2).eval()
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(torch.jit.script(attn)(x), attn(x))


# ---------------------------------------------------------------- mlp_block

def test_mlp_block_matches_timm_mlp():
    torch.manual_seed(0)
    mlp = mlp_block(8, 32, 'gelu', 0.1).eval()
    assert list(dict(mlp.named_children())) == ['fc1', 'act', 'drop1', 'fc2', 'drop2']
    ref = Mlp(8, 32, drop=0.1).eval()
    ref.load_state_dict(mlp.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(mlp(x), ref(x))
    assert mlp_block(8, 32, out_dim=4, act_layer=nn.ReLU)(x).shape == (2, 3, 4)
    assert mlp_block(8, 32, None).act.__class__ is nn.Identity


def test_mlp_block_errors():
    with pytest.raises(ValueError, match='hidden_planes must be > 0, got 0'):
        mlp_block(8, 0)
    with pytest.raises(ValueError, match='hidden_dim must be > 0, got 0'):
        mlp_block(dim=8, hidden_dim=0)
    with pytest.raises(ValueError, match='dropout_prob must be in'):
        mlp_block(8, 16, dropout_prob=1.5)
    with pytest.raises(TypeError, match="mlp_block got inplanes=8 and dim=8: they are the same argument"):
        mlp_block(8, 16, dim=8)
    with pytest.raises(TypeError, match="mlp_block got act_layer twice: 'gelu' .* and 'relu'"):
        mlp_block(8, 16, 'gelu', act_layer='relu')
    with pytest.raises(TypeError, match="mlp_block needs hidden_planes .or timm's hidden_dim."):
        mlp_block(8)
    with pytest.raises(ValueError, match='drop'):
        mlp_block(8, 16, drop=2.0)
    with pytest.raises(ValueError, match='act_layer'):
        mlp_block(8, 16, 'no_such_act')
    with pytest.raises(TypeError, match='bias'):
        mlp_block(8, 16, bias=None)


# ---------------------------------------------------------------- a block by hand

def test_hand_built_encoder_block_matches_timm_block():
    """The README's composition: prenorm(attention) and prenorm(mlp) residual branches with LayerScale."""
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    dim = 16
    attn = prenorm(dim, MultiHeadSelfAttention(dim, 4, qkv_bias=True), norm_layer=lambda d: LayerNormV2(d, eps=1e-6))
    mlp = prenorm(dim, mlp_block(dim, 4 * dim), norm_layer=lambda d: LayerNormV2(d, eps=1e-6))
    ls1, ls2 = LayerScale(dim, 0.1), LayerScale(dim, 0.1)
    ref = Block(dim, 4, qkv_bias=True, init_values=0.1).eval()
    ref.load_state_dict({
        'norm1.weight': attn[0].weight, 'norm1.bias': attn[0].bias, **{f'attn.{k}': v for k, v in attn[1].state_dict().items()},
        'ls1.gamma': ls1.gamma, 'norm2.weight': mlp[0].weight, 'norm2.bias': mlp[0].bias,
        **{f'mlp.{k}': v for k, v in mlp[1].state_dict().items()}, 'ls2.gamma': ls2.gamma})
    x = torch.randn(2, 5, dim)
    x1 = x + ls1(attn(x))
    out = x1 + ls2(mlp(x1))
    torch.testing.assert_close(out, ref(x), atol=1e-6, rtol=1e-5)
