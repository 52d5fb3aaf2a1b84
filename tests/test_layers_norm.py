"""LayerNormV2, ChannelLayerNorm, prenorm, LayerScale and the registration with timm's norm factory."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import timm.layers
import timm.layers.create_norm as timm_create_norm
from timm.layers import LayerNorm2d, create_norm_layer, get_norm_layer

import timm_metalayers  # noqa: F401  (registers the norms)
from timm_metalayers.layers import ChannelLayerNorm, LayerNormV2, LayerScale, prenorm
from timm_metalayers.layers import _registry


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------------------
# LayerNormV2
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(8,), (4, 5), (2, 3, 4)])
@pytest.mark.parametrize('affine', [True, False])
def test_layernormv2_equals_f_layer_norm(size, affine):
    torch.manual_seed(0)
    ln = LayerNormV2(*size, affine=affine)
    assert ln.normalized_shape == size
    if affine:
        assert ln.weight.shape == size and ln.bias.shape == size
        _randomise(ln)
    else:
        assert ln.weight is None and ln.bias is None and not list(ln.parameters())
    x = torch.randn(3, 2, *size) * 5 + 2
    ref = F.layer_norm(x, size, ln.weight, ln.bias, 1e-5)
    assert torch.allclose(ln(x), ref, atol=1e-6)
    # and a torch LayerNorm with the same parameters (PyTorch semantics, so pretrained weights load)
    torch_ln = nn.LayerNorm(size, elementwise_affine=affine)
    torch_ln.load_state_dict(ln.state_dict())
    assert torch.allclose(ln(x), torch_ln(x), atol=1e-6)


def test_layernormv2_eps_inside_sqrt():
    # variance 1e-4 and eps 1 tell "eps inside the square root" from Flux's "eps outside"
    x = torch.tensor([[-0.01, 0.01]])
    y = LayerNormV2(2, eps=1.0, affine=False)(x)
    inside = x / torch.sqrt(torch.tensor(1e-4 + 1.0))
    assert torch.allclose(y, inside, atol=1e-7)
    outside = x / (torch.sqrt(torch.tensor(1e-4)) + 1.0)
    assert not torch.allclose(y, outside, atol=1e-5)


def test_layernormv2_activation_and_forms():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 8)
    ln = LayerNormV2(8, activation='gelu', eps=1e-6)
    _randomise(ln)
    assert torch.allclose(ln(x), F.gelu(F.layer_norm(x, (8,), ln.weight, ln.bias, 1e-6)), atol=1e-6)
    ln = LayerNormV2(8, activation=torch.relu)
    assert (ln(x) >= 0).all()
    assert LayerNormV2((4, 5)).normalized_shape == (4, 5)  # a tuple as the only argument
    assert set(dict(LayerNormV2(8).named_parameters())) == {'weight', 'bias'}
    y = LayerNormV2(8).bfloat16()(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), F.layer_norm(x, (8,)), atol=0.05)


@pytest.mark.parametrize('call,exc,match', [
    (lambda: LayerNormV2(), ValueError, r'LayerNormV2 needs at least one size'),
    (lambda: LayerNormV2(0), ValueError, r'size must be > 0, got 0'),
    (lambda: LayerNormV2(4, -1), ValueError, r'size must be > 0, got -1'),
    (lambda: LayerNormV2(2.5), TypeError, r'size must be an int, got 2\.5'),
    (lambda: LayerNormV2(8, activation='nosuch'), ValueError, r"activation='nosuch'"),
    (lambda: LayerNormV2(8)(torch.randn(2, 7)), ValueError, r'LayerNormV2\(size=\[8\]\).* shape \[2, 7\]'),
    (lambda: LayerNormV2(4, 5)(torch.randn(5)), ValueError, r'size=\[4, 5\].* shape \[5\]'),
])
def test_layernormv2_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# ChannelLayerNorm
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('channels_last', [False, True])
def test_channel_layer_norm_equals_timm_layernorm2d(channels_last):
    torch.manual_seed(2)
    ours = ChannelLayerNorm(16)
    timms = LayerNorm2d(16)
    assert ours.eps == timms.eps == 1e-6
    _randomise(ours)
    timms.load_state_dict(ours.state_dict())  # same parameter names: weight, bias
    x = torch.randn(2, 16, 5, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = ours(x)
    assert torch.allclose(y, timms(x), atol=1e-5)
    assert torch.allclose(y, timms(x.contiguous()), atol=1e-5)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_channel_layer_norm_formula():
    # independent reference: per pixel, across channels, eps inside the square root
    torch.manual_seed(3)
    cln = ChannelLayerNorm(6, eps=0.5)
    _randomise(cln)
    x = torch.randn(2, 6, 3, 4) * 0.3
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 0.5) * cln.weight.view(1, -1, 1, 1) + cln.bias.view(1, -1, 1, 1)
    assert torch.allclose(cln(x), ref, atol=1e-5)


def test_channel_layer_norm_activation_affine_bf16():
    torch.manual_seed(4)
    x = torch.randn(2, 8, 4, 4)
    cln = ChannelLayerNorm(8, 'relu')
    ref = F.relu(LayerNorm2d(8)(x))
    assert torch.allclose(cln(x), ref, atol=1e-5)
    plain = ChannelLayerNorm(8, affine=False)
    assert plain.weight is None and not list(plain.parameters())
    assert torch.allclose(plain(x), LayerNorm2d(8, affine=False)(x), atol=1e-5)
    y = ChannelLayerNorm(8).bfloat16()(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), LayerNorm2d(8)(x), atol=0.05)


@pytest.mark.parametrize('call,exc,match', [
    (lambda: ChannelLayerNorm(8)(torch.randn(2, 8, 5)), ValueError,
     r'ChannelLayerNorm expects x to be a 4-D NCHW tensor, got a 3-D tensor of shape \[2, 8, 5\]'),
    (lambda: ChannelLayerNorm(8)(torch.randn(1, 2, 8, 5, 5)), ValueError, r'got a 5-D tensor'),
    (lambda: ChannelLayerNorm(8)(torch.randn(2, 5, 3, 3)), ValueError,
     r'ChannelLayerNorm\(planes=8\) got x with 5 channels'),
    (lambda: ChannelLayerNorm(0), ValueError, r'planes must be > 0, got 0'),
    (lambda: ChannelLayerNorm(8, 'nosuch'), ValueError, r"activation='nosuch'"),
])
def test_channel_layer_norm_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# registration with timm
# ---------------------------------------------------------------------------------------------

def test_registered_with_timm_norm_factory():
    assert get_norm_layer('channellayernorm') is ChannelLayerNorm
    assert get_norm_layer('layernormv2') is LayerNormV2
    assert get_norm_layer('channel_layer_norm') is ChannelLayerNorm
    layer = create_norm_layer('channellayernorm', 12, eps=1e-5)
    assert isinstance(layer, ChannelLayerNorm) and layer.planes == 12 and layer.eps == 1e-5
    assert isinstance(create_norm_layer('layernormv2', 12), LayerNormV2)


def test_no_timm_name_replaced():
    norm_map = timm_create_norm._NORM_MAP
    ours = {'channellayernorm', 'layernormv2'}
    for name, cls in norm_map.items():
        if name not in ours:
            assert not cls.__module__.startswith('timm_metalayers'), name
    assert norm_map['layernorm'] is timm.layers.LayerNorm
    assert norm_map['layernorm2d'] is timm.layers.LayerNorm2d
    assert norm_map['batchnorm2d'] is nn.BatchNorm2d
    assert norm_map['groupnorm'] is timm.layers.GroupNorm


def test_registration_keeps_an_existing_name(monkeypatch):
    sentinel = type('TimmOwn', (nn.Module,), {})
    norm_map = dict(timm_create_norm._NORM_MAP)
    norm_map['layernormv2'] = sentinel
    monkeypatch.setattr(timm_create_norm, '_NORM_MAP', norm_map)
    monkeypatch.setattr(_registry, '_done', False)
    _registry.register_with_timm()
    assert norm_map['layernormv2'] is sentinel
    assert norm_map['channellayernorm'] is ChannelLayerNorm


def test_registration_without_registry_warns_once(monkeypatch):
    monkeypatch.delattr(timm_create_norm, '_NORM_MAP')
    monkeypatch.setattr(_registry, '_done', False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        _registry.register_with_timm()
        _registry.register_with_timm()
    relevant = [w for w in caught if 'norm-layer registry' in str(w.message)]
    assert len(relevant) == 1 and issubclass(relevant[0].category, RuntimeWarning)


# ---------------------------------------------------------------------------------------------
# prenorm
# ---------------------------------------------------------------------------------------------

def test_prenorm():
    torch.manual_seed(5)
    block = nn.Linear(8, 3)
    seq = prenorm(8, block)
    assert isinstance(seq, nn.Sequential) and len(seq) == 2
    assert type(seq[0]) is nn.LayerNorm and seq[0].normalized_shape == (8,) and seq[1] is block
    x = torch.randn(2, 4, 8)
    assert torch.allclose(seq(x), block(F.layer_norm(x, (8,))), atol=1e-6)
    seq = prenorm(8, block, norm_layer=LayerNormV2)
    assert isinstance(seq[0], LayerNormV2)
    seq = prenorm(8, nn.Identity(), norm_layer=lambda p: nn.LayerNorm(p, eps=1e-6))
    assert seq[0].eps == 1e-6
    assert isinstance(prenorm(6, nn.Identity(), norm_layer='channellayernorm')[0], ChannelLayerNorm)


@pytest.mark.parametrize('call,exc,match', [
    (lambda: prenorm(0, nn.Identity()), ValueError, r'planes must be > 0, got 0'),
    (lambda: prenorm(8, 'block'), TypeError, r"block must be an nn.Module, got 'block'"),
    (lambda: prenorm(8, nn.Identity(), norm_layer=None), ValueError, r'prenorm needs a norm layer, got '
                                                                      r'norm_layer=None'),
    (lambda: prenorm(8, nn.Identity(), norm_layer='nosuch'), ValueError, r"norm_layer='nosuch'"),
])
def test_prenorm_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# LayerScale
# ---------------------------------------------------------------------------------------------

def test_layer_scale_tokens():
    ls = LayerScale(6, 1e-5)
    assert isinstance(ls.gamma, nn.Parameter) and ls.gamma.shape == (6,)
    assert torch.equal(ls.gamma.detach(), torch.full((6,), 1e-5))
    assert list(dict(ls.named_parameters())) == ['gamma']
    with torch.no_grad():
        ls.gamma.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6)
    assert torch.allclose(ls(x), x * torch.arange(1.0, 7.0))
    ls(x).sum().backward()
    assert torch.allclose(ls.gamma.grad, x.sum((0, 1)))


def test_layer_scale_channels_first():
    ls = LayerScale(4, 0.5, dim=1)
    with torch.no_grad():
        ls.gamma.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(ls(x), x * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1))
    # the same module with dim=-1 would scale the last axis: it is a different operation
    assert not torch.allclose(ls(x), x * 0.5)
    ls = LayerScale(4, 0.5, dim=1).bfloat16()
    assert ls.gamma.dtype == torch.bfloat16
    y = ls(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), x * 0.5, atol=0.02)


@pytest.mark.parametrize('init_value', [0, 0.0, -1e-5, -3, None])
def test_layer_scale_nonpositive_is_identity(init_value):
    ls = LayerScale(8, init_value)
    assert not list(ls.parameters()) and ls.gamma is None
    x = torch.randn(2, 3, 8)
    assert ls(x) is x
    assert ls(torch.randn(5)).shape == (5,)  # an identity takes anything


@pytest.mark.parametrize('call,exc,match', [
    (lambda: LayerScale(8, 1e-5)(torch.randn(2, 3, 7)), ValueError,
     r'LayerScale\(planes=8, dim=-1\) got an input of shape \[2, 3, 7\]'),
    (lambda: LayerScale(8, 1e-5, dim=1)(torch.randn(2, 7, 8)), ValueError, r'planes=8, dim=1.*\[2, 7, 8\]'),
    (lambda: LayerScale(8, 1e-5, dim=3)(torch.randn(2, 8)), ValueError, r'planes=8, dim=3'),
    (lambda: LayerScale(0, 1e-5), ValueError, r'planes must be > 0, got 0'),
    (lambda: LayerScale(8, '1e-5'), TypeError, r"init_value must be a number, got '1e-5'"),
    (lambda: LayerScale(8, 1e-5, dim=1.0), TypeError, r'dim must be an int, got 1\.0'),
])
def test_layer_scale_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- the guide's LayerNormV2(size..., λ); bad values at build

@pytest.mark.parametrize('args,kwargs,shape,act', [
    ((8, 'gelu'), {}, [8], F.gelu),
    ((7, 7, nn.ReLU), {}, [7, 7], F.relu),
    (((7, 7), 'relu'), {}, [7, 7], F.relu),
    ((8, None), {}, [8], None),
    ((8,), dict(activation='gelu'), [8], F.gelu),
    ((8,), {}, [8], None),
])
def test_layernormv2_activation_positional_after_sizes(args, kwargs, shape, act):
    ln = LayerNormV2(*args, **kwargs)
    assert list(ln.normalized_shape) == shape and isinstance(ln.act, nn.Identity) == (act is None)
    x = torch.randn(2, 3, *shape)
    expected = F.layer_norm(x, shape, ln.weight, ln.bias, 1e-5)
    torch.testing.assert_close(ln(x), expected if act is None else act(expected))


def test_layernormv2_positional_function_activation():
    x = torch.randn(2, 8)
    torch.testing.assert_close(LayerNormV2(8, torch.tanh)(x), torch.tanh(F.layer_norm(x, [8])))


@pytest.mark.parametrize('call,exc,match', [
    (lambda: LayerNormV2(8, 'gelu', activation='relu'), TypeError, r"activation twice: 'gelu' .* activation='relu'"),
    (lambda: LayerNormV2(8, eps=0.0), ValueError, r'eps must be > 0 .* got 0\.0'),
    (lambda: LayerNormV2(8, eps=-1e-5), ValueError, r'eps must be > 0 .* got -1e-05'),
    (lambda: LayerNormV2(8, eps=float('nan')), ValueError, r'eps must be a finite number, got nan'),
    (lambda: LayerNormV2(8, eps='1e-5'), TypeError, r"eps must be a number, got '1e-5'"),
    (lambda: LayerNormV2(8, affine='no'), TypeError, r"affine must be True or False, got 'no'"),
    (lambda: LayerNormV2(8, affine=1), TypeError, r'affine must be True or False, got 1'),
    (lambda: LayerNormV2(8, affine=None), TypeError, r'affine must be True or False, got None'),
    (lambda: ChannelLayerNorm(8, eps=0), ValueError, r'eps must be > 0'),
    (lambda: ChannelLayerNorm(8, eps=float('nan')), ValueError, r'eps must be a finite number, got nan'),
    (lambda: ChannelLayerNorm(8, affine='no'), TypeError, r"affine must be True or False, got 'no'"),
    (lambda: ChannelLayerNorm(8, affine=None), TypeError, r'affine must be True or False, got None'),
    (lambda: LayerScale(8, float('nan')), ValueError, r'init_value must be a finite number, got nan'),
    (lambda: LayerScale(8, float('inf')), ValueError, r'init_value must be a finite number, got inf'),
])
def test_bad_norm_values_rejected_at_build(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
