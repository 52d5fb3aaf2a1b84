"""Every layer under torch.compile(fullgraph=True) and torch.jit.script, train and eval, float32 and bfloat16.

Compilation is slow on small CI machines, so all layers go into one module that is compiled once
per dtype: float32 with the default inductor backend, bfloat16 with ``aot_eager`` (traces the same
full graph through AOTAutograd, without inductor's C++ code generation).
"""
import pytest
import torch
import torch._dynamo
import torch._inductor.config
from torch import nn

from timm.layers import create_feature_extractor

from timm_metalayers.layers import (AdaptiveMeanMaxPool, ChannelLayerNorm, DropBlock, LayerNormV2, LayerScale,
                                    SpatialGatingUnit, StochasticDepth, actadd, addact, cat_channels, conv_norm,
                                    create_classifier, dropblock, effective_squeeze_excite, flatten_chains,
                                    fused_mbconv, gated_mlp_block, inputscale, prenorm, squeeze_excite, swapdims)


class AllLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_norm(3, 4, 8, pad=1))
        self.pre = nn.Sequential(*conv_norm(3, 8, 8, 'gelu', revnorm=True, pad='same'))
        self.cln = ChannelLayerNorm(8, 'relu')
        self.drop_block = DropBlock(0.2, 3)
        self.drop_block_big = DropBlock(0.3, 20)  # block larger than the map
        self.scale_nchw = LayerScale(8, 0.5, dim=1)
        self.se = squeeze_excite(8, 2)
        self.drop_path = StochasticDepth(0.3)
        self.drop_path_batch = StochasticDepth(0.3, 'batch')
        self.tokens = prenorm(8, nn.Linear(8, 8), norm_layer=LayerNormV2)
        self.ln = LayerNormV2(8, activation='gelu')
        self.scale_tokens = LayerScale(8, 1e-1)
        self.scale_off = LayerScale(8, 0.0)
        self.pool = AdaptiveMeanMaxPool()
        self.pool_cat = AdaptiveMeanMaxPool(cat_channels, (2, 2))
        self.head = create_classifier(8, 5, dropout_prob=0.2)
        self.head_catavgmax = create_classifier(8, 6, 5, ('hard_swish', None), pool_layer='catavgmax',
                                                dropout_prob=0.2)
        self.head_conv = create_classifier(8, 5, use_conv=True, pool_layer=None)

    def forward(self, x):
        x = self.stem(x)
        x = self.pre(x)
        x = x + self.drop_path(self.scale_nchw(self.se(self.drop_block(self.cln(x)))))
        x = self.drop_block_big(self.drop_path_batch(x))
        t = x.flatten(2).transpose(1, 2)
        t = t + self.scale_tokens(self.tokens(self.ln(t)))
        t = self.scale_off(t)
        x = t.transpose(1, 2).reshape(x.shape)
        logits = self.head(x) + self.head_catavgmax(x)
        conv_logits = self.head_conv(x).mean((2, 3))
        return logits + conv_logits + self.pool(x).flatten(1).mean(1, keepdim=True) + \
            self.pool_cat(x).mean((1, 2, 3)).unsqueeze(1)


def _run(module, x, seed):
    torch.manual_seed(seed)
    return module(x)


@pytest.mark.parametrize('dtype,backend', [(torch.float32, 'inductor'), (torch.bfloat16, 'aot_eager')])
def test_compile_fullgraph_train_and_eval(dtype, backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = AllLayers().to(dtype)
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=False)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)

    model.eval()
    y = compiled(x)
    assert y.dtype == dtype and y.shape == (2, 5)
    assert torch.allclose(y.float(), model(x).float(), **tol)

    model.train()
    # fall back to eager's RNG so the compiled graph draws exactly the masks eager draws
    with torch._inductor.config.patch(fallback_random=True):
        y = _run(compiled, x, 1)
        ref = _run(model, x, 1)
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    assert torch.allclose(y.float(), ref.float(), **tol)
    assert not torch.equal(_run(model, x, 2), ref)  # train mode really is random


def test_compile_dropblock_functional_and_zero_prob():
    torch._dynamo.reset()

    def f(x):
        return (dropblock(x, 0.3, 4, 1.0, True) + dropblock(x, 1.0, 3, 1.0, True) + dropblock(x, 0.3, 3, 1.0, False)
                + dropblock(x, 0.3, 3, couple_channels=True))

    x = torch.ones(2, 3, 9, 9)
    compiled = torch.compile(f, fullgraph=True, backend='aot_eager')
    y = compiled(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert ((y == 1.0) | (y > 1.0)).all()  # last term is x itself; first is 0 or x / keep


SCRIPTABLE = {
    'DropBlock': lambda: DropBlock(0.2, 3),
    'DropBlock_even_big': lambda: DropBlock(0.3, 20),
    'DropBlock_coupled': lambda: DropBlock(0.2, 3, couple_channels=True),
    'DropBlock_generator': lambda: DropBlock(0.2, 4, generator=torch.Generator().manual_seed(0)),
    'StochasticDepth_row': lambda: StochasticDepth(0.3),
    'StochasticDepth_batch': lambda: StochasticDepth(0.3, 'batch'),
    'ChannelLayerNorm': lambda: ChannelLayerNorm(8, 'gelu'),
    'LayerScale_nchw': lambda: LayerScale(8, 0.5, dim=1),
    'LayerScale_off': lambda: LayerScale(8, None),
    'AdaptiveMeanMaxPool': lambda: AdaptiveMeanMaxPool(),
    'AdaptiveMeanMaxPool_cat': lambda: AdaptiveMeanMaxPool(cat_channels, (2, 2)),
    'conv_norm': lambda: nn.Sequential(*conv_norm(3, 8, 8, 'hard_swish', pad=1)),
    'conv_norm_preact': lambda: nn.Sequential(*conv_norm(3, 8, 8, preact=True, norm_layer='channellayernorm')),
    'classifier': lambda: create_classifier(8, 5, 'sigmoid', dropout_prob=0.2),
    'classifier_hidden': lambda: create_classifier(8, 6, 5, dropout_prob=0.2, pool_layer='catavgmax'),
    'classifier_avgmax': lambda: create_classifier(8, 5, pool_layer='avgmax'),
    'classifier_meanmax': lambda: create_classifier(8, 5, pool_layer='meanmax'),
    'classifier_conv': lambda: create_classifier(8, 5, use_conv=True, pool_layer=None),
    'squeeze_excite': lambda: squeeze_excite(8, 2),
    'effective_squeeze_excite': lambda: effective_squeeze_excite(8, gate_activation='hard_sigmoid'),
    'fused_mbconv': lambda: fused_mbconv(3, 8, 16, 8, 'silu', reduction=4, drop_path_prob=0.3, pad='same'),
    'fused_mbconv_single': lambda: fused_mbconv(3, 8, 8, 8, 'silu', stride=2, pad='same'),
    'conv_norm_same_stride2': lambda: nn.Sequential(*conv_norm(4, 8, 8, stride=2, pad='same')),
    'inputscale': lambda: inputscale(0.2, activation='relu'),
    'swapdims': lambda: nn.Sequential(swapdims((0, 2, 3, 1)), nn.LayerNorm(8), swapdims((0, 3, 1, 2))),
    # on (2, 8, 6, 6): the last dim is the features, the one before the 6 "tokens"
    'gated_mlp_block': lambda: gated_mlp_block(lambda p: SpatialGatingUnit(p, 6), 6, 8, dropout_prob=0.2),
}


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('name', list(SCRIPTABLE))
def test_jit_script(name, dtype):
    torch.manual_seed(0)
    eager = SCRIPTABLE[name]().to(dtype)
    scripted = torch.jit.script(SCRIPTABLE[name]().to(dtype))
    scripted.load_state_dict(eager.state_dict())
    x = torch.randn(2, 8, 6, 6, dtype=dtype)
    for mode in ('eval', 'train'):
        getattr(eager, mode)()
        getattr(scripted, mode)()
        if name == 'DropBlock_generator':
            eager.generator.manual_seed(3)
            scripted.generator.manual_seed(3)
        y, ref = _run(scripted, x, 5), _run(eager, x, 5)
        assert y.dtype == dtype
        assert torch.equal(y, ref), mode


def test_jit_script_layernormv2():
    for dtype in (torch.float32, torch.bfloat16):
        eager = LayerNormV2(4, 8, activation='relu').to(dtype)
        scripted = torch.jit.script(eager)
        x = torch.randn(3, 4, 8, dtype=dtype)
        assert torch.equal(scripted(x), eager(x))
        with pytest.raises(torch.jit.Error, match='LayerNormV2'):
            scripted(torch.randn(3, 8, 4, dtype=dtype))


class NewLayers(nn.Module):
    """The layers Metalhead's API reference adds to the guide's, in one graph."""

    def __init__(self):
        super().__init__()
        self.fused = fused_mbconv(3, 4, 16, 4, 'silu', reduction=4, drop_path_prob=0.3, pad='same')
        self.fused_down = fused_mbconv(3, 4, 4, 8, 'silu', stride=2, pad='same')
        self.ese = effective_squeeze_excite(8)
        self.scale = inputscale(0.5, activation='relu')
        self.flat = nn.Sequential(*flatten_chains(nn.Sequential(nn.Sequential(*conv_norm(3, 8, 8, pad='same')),
                                                                nn.Identity())))
        self.join = addact('relu')
        self.join_act = actadd('gelu')
        self.to_tokens = swapdims((0, 2, 1))
        self.mlp = gated_mlp_block(lambda p: SpatialGatingUnit(p, 16), 8, 16, dropout_prob=0.2)

    def forward(self, x):
        x = self.fused_down(self.fused(x))
        x = self.join(self.ese(x), self.scale(x))
        x = self.join_act(self.flat(x), x)
        t = self.to_tokens(x.flatten(2))  # (N, 16 tokens, 8 features)
        return self.mlp(t).mean((1, 2))


def test_compile_new_layers_fullgraph_train_and_eval():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = NewLayers()
    x = torch.randn(2, 4, 7, 8)  # odd and even sides: TF "same" pads asymmetrically at stride 2
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager', dynamic=False)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))
    model.train()
    torch.testing.assert_close(_run(compiled, x, 1), _run(model, x, 1))
    assert not torch.equal(_run(model, x, 2), _run(model, x, 1))  # dropout and stochastic depth are live


def test_fx_feature_extraction_through_new_layers():
    """timm's fx feature extractor traces through the new layers (SwapDims is a registered leaf)."""
    model = NewLayers().eval()
    x = torch.randn(2, 4, 7, 8)
    extractor = create_feature_extractor(model, return_nodes={'ese': 'ese', 'mlp': 'out'})
    out = extractor(x)
    assert out['ese'].shape == (2, 8, 4, 4) and out['out'].shape == (2, 16, 8)
