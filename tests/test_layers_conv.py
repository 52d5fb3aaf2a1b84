"""conv_norm and basic_conv_bn: layer order, bias rule, activation and norm forms, padding, errors."""
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import timm.layers
from timm_metalayers.layers import ActivationFn, ChannelLayerNorm, basic_conv_bn, conv_norm


def kinds(layers):
    return [type(m) for m in layers]


# ---------------------------------------------------------------------------------------------
# order of the returned list, for every flag combination
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('revnorm,preact,with_norm,with_act',
                         list(itertools.product([False, True], repeat=4)))
def test_conv_norm_order_every_combination(revnorm, preact, with_norm, with_act):
    norm_layer = nn.BatchNorm2d if with_norm else None
    activation = 'relu' if with_act else None
    kwargs = dict(norm_layer=norm_layer, revnorm=revnorm, preact=preact)
    if revnorm and preact:
        with pytest.raises(ValueError, match=r'preact=True and revnorm=True'):
            conv_norm((3, 3), 4, 6, activation, **kwargs)
        return
    if (revnorm or preact) and not with_norm:
        with pytest.raises(ValueError, match=r'norm_layer=None'):
            conv_norm((3, 3), 4, 6, activation, **kwargs)
        return
    layers = conv_norm((3, 3), 4, 6, activation, **kwargs)
    if not with_norm:
        expected = [nn.Conv2d, nn.ReLU]
    elif revnorm:
        expected = [nn.BatchNorm2d, nn.Conv2d, nn.ReLU]
    elif preact:
        expected = [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    else:
        expected = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    if not with_act:
        expected = [k for k in expected if k is not nn.ReLU]
    assert kinds(layers) == expected
    conv = next(m for m in layers if isinstance(m, nn.Conv2d))
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 6, (3, 3))
    assert (conv.bias is None) == with_norm  # bias only without a norm layer
    for m in layers:
        if isinstance(m, nn.BatchNorm2d):
            # the norm normalises the tensor it sees: inplanes before the conv, outplanes after
            assert m.num_features == (4 if revnorm else 6)
    # it splats into nn.Sequential and runs
    y = nn.Sequential(*layers)(torch.randn(2, 4, 7, 7))
    assert y.shape == (2, 6, 5, 5)


def test_conv_norm_default_is_conv_bn_relu_numerically():
    torch.manual_seed(0)
    seq = nn.Sequential(*conv_norm((3, 3), 32, 64))
    conv, bn, act = seq
    assert isinstance(bn, nn.BatchNorm2d) and bn.eps == 1e-5 and isinstance(act, nn.ReLU)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    seq.eval()
    x = torch.randn(2, 32, 8, 8)
    ref = F.relu(F.batch_norm(F.conv2d(x, conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                              eps=1e-5))
    assert torch.allclose(seq(x), ref, atol=1e-5)


def test_guide_chain_example():
    # Chain(Dense(3, 32), conv_norm((3, 3), 32, 64)..., Dense(64, 10)) in PyTorch terms
    model = nn.Sequential(nn.Conv2d(3, 32, 1), *conv_norm((3, 3), 32, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    assert model(torch.randn(2, 3, 9, 9)).shape == (2, 10)


@pytest.mark.parametrize('bias,norm,expect_bias', [
    (None, nn.BatchNorm2d, False), (None, None, True),
    (True, nn.BatchNorm2d, True), (False, None, False), (False, nn.BatchNorm2d, False), (True, None, True),
])
def test_conv_norm_bias_rule(bias, norm, expect_bias):
    conv = conv_norm(3, 4, 4, norm_layer=norm, bias=bias)[0]
    assert (conv.bias is not None) == expect_bias


def test_conv_norm_bias_rule_with_revnorm():
    layers = conv_norm(3, 4, 4, revnorm=True)
    assert layers[1].bias is None
    assert conv_norm(3, 4, 4, revnorm=True, bias=True)[1].bias is not None


# ---------------------------------------------------------------------------------------------
# init (the guide's `init`) and the True/False flags
# ---------------------------------------------------------------------------------------------

def test_conv_norm_init_in_place_and_returned():
    conv = conv_norm(3, 4, 8, init=nn.init.zeros_)[0]
    assert torch.equal(conv.weight, torch.zeros(8, 4, 3, 3))
    conv = conv_norm((3, 5), 4, 8, init=lambda w: torch.full_like(w, 0.5))[0]  # Flux's init returns an array
    assert torch.equal(conv.weight, torch.full((8, 4, 3, 5), 0.5)) and conv.weight.requires_grad
    torch.manual_seed(0)
    a = conv_norm(3, 16, 32, init=functools.partial(nn.init.kaiming_normal_, mode='fan_out'))[0].weight
    std = (2.0 / (32 * 9)) ** 0.5
    assert abs(a.std().item() - std) < 0.1 * std  # kaiming fan_out, 4608 draws: a 10% band is ~7 sigma
    torch.manual_seed(0)
    default = conv_norm(3, 16, 32)[0].weight  # PyTorch's default: uniform in +-1/sqrt(fan_in)
    bound = 1 / (16 * 9) ** 0.5
    assert default.abs().max() <= bound and abs(default.std().item() - bound / 3 ** 0.5) < 0.1 * bound / 3 ** 0.5


@pytest.mark.parametrize('init,exc,match', [
    ('kaiming', TypeError, r"init must be a callable .* got 'kaiming'"),
    (lambda w: torch.zeros(3), ValueError, r'init must fill the weight in place or return a tensor of its shape '
                                           r'\(8, 4, 3, 3\), got \(3,\)'),
    (lambda w: 0.5, ValueError, r'got float'),
])
def test_conv_norm_bad_init(init, exc, match):
    with pytest.raises(exc, match=match):
        conv_norm(3, 4, 8, init=init)


@pytest.mark.parametrize('flag', ['revnorm', 'preact'])
@pytest.mark.parametrize('value', ['no', 1, None, 0.0])
def test_conv_norm_flags_must_be_bool(flag, value):
    with pytest.raises(TypeError, match=f'{flag} must be True or False, got {value!r}'):
        conv_norm(3, 4, 8, **{flag: value})


def test_conv_norm_bad_bias():
    with pytest.raises(TypeError, match=r"bias must be True, False or None, got 'yes'"):
        conv_norm(3, 4, 4, bias='yes')


# ---------------------------------------------------------------------------------------------
# activation forms
# ---------------------------------------------------------------------------------------------

def _act(layers):
    return layers[-1]


def test_activation_by_timm_name():
    x = torch.randn(2, 4, 5, 5)
    for name, ref in [('relu', F.relu), ('gelu', F.gelu), ('hard_swish', F.hardswish), ('silu', F.silu),
                      ('sigmoid', torch.sigmoid), ('tanh', torch.tanh)]:
        seq = nn.Sequential(*conv_norm(3, 4, 4, name, norm_layer=None)).eval()
        assert len(seq) == 2
        conv = seq[0]
        assert torch.allclose(seq(x), ref(conv(x)), atol=1e-6), name


def test_activation_class_instance_callable_none():
    x = torch.randn(2, 4, 5, 5)
    act = _act(conv_norm(3, 4, 4, nn.SiLU))
    assert isinstance(act, nn.SiLU)
    inst = nn.LeakyReLU(0.3)
    assert _act(conv_norm(3, 4, 4, inst)) is inst
    # a plain function on tensors is wrapped in a module
    layers = conv_norm(3, 4, 4, torch.tanh, norm_layer=None)
    assert isinstance(layers[1], ActivationFn)
    seq = nn.Sequential(*layers)
    assert torch.allclose(seq(x), torch.tanh(layers[0](x)))
    layers = conv_norm(3, 4, 4, lambda t: t * 3.0, norm_layer=None)
    assert torch.allclose(nn.Sequential(*layers)(x), 3.0 * layers[0](x))
    # None (and nn.Identity) leave the activation out
    assert kinds(conv_norm(3, 4, 4, None)) == [nn.Conv2d, nn.BatchNorm2d]
    assert kinds(conv_norm(3, 4, 4, nn.Identity)) == [nn.Conv2d, nn.BatchNorm2d]


def test_guide_sigmoid_variant():
    layers = conv_norm((3, 3), 32, 64, nn.Sigmoid)
    assert kinds(layers) == [nn.Conv2d, nn.BatchNorm2d, nn.Sigmoid]
    layers = conv_norm((3, 3), 32, 64, torch.sigmoid)
    y = nn.Sequential(*layers)(torch.randn(2, 32, 5, 5))
    assert ((y > 0) & (y < 1)).all()


@pytest.mark.parametrize('activation,exc,match', [
    ('nosuchact', ValueError, r"activation='nosuchact' is not an activation name"),
    (42, TypeError, r'activation must be .* got 42'),
    (int, TypeError, r"activation=<class 'int'> is a class but not an nn.Module"),
])
def test_bad_activation(activation, exc, match):
    with pytest.raises(exc, match=match):
        conv_norm(3, 4, 4, activation)


# ---------------------------------------------------------------------------------------------
# norm forms
# ---------------------------------------------------------------------------------------------

def test_norm_forms():
    # a class
    assert isinstance(conv_norm(3, 4, 8, norm_layer=nn.InstanceNorm2d)[1], nn.InstanceNorm2d)
    # the guide's `planes -> GroupNorm(planes, 4)`
    gn = conv_norm((3, 3), 32, 64, norm_layer=lambda planes: nn.GroupNorm(4, planes))[1]
    assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels) == (4, 64)
    # the TensorFlow-epsilon variant
    bn = conv_norm((3, 3), 32, 64, norm_layer=lambda planes: nn.BatchNorm2d(planes, eps=1e-3))[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.eps == 1e-3 and bn.num_features == 64
    bn = conv_norm(3, 4, 8, norm_layer=functools.partial(nn.BatchNorm2d, momentum=0.01))[1]
    assert bn.momentum == 0.01
    # names timm's norm factory knows, including this package's registered ones
    assert type(conv_norm(3, 4, 8, norm_layer='batchnorm2d')[1]) is nn.BatchNorm2d
    assert type(conv_norm(3, 4, 8, norm_layer='layernorm2d')[1]) is timm.layers.LayerNorm2d
    assert type(conv_norm(3, 4, 64, norm_layer='groupnorm')[1]) is timm.layers.GroupNorm
    cln = conv_norm(3, 4, 8, norm_layer='channellayernorm')[1]
    assert type(cln) is ChannelLayerNorm and cln.planes == 8
    # None, '' and nn.Identity mean no normalisation (and a biased conv)
    for none in (None, '', nn.Identity):
        layers = conv_norm(3, 4, 8, norm_layer=none)
        assert kinds(layers) == [nn.Conv2d, nn.ReLU] and layers[0].bias is not None


def test_norm_form_runs_numerically():
    torch.manual_seed(1)
    layers = conv_norm(3, 4, 8, None, norm_layer=lambda planes: nn.GroupNorm(4, planes), pad=1)
    x = torch.randn(2, 4, 6, 6)
    ref = F.group_norm(layers[0](x), 4, layers[1].weight, layers[1].bias)
    assert torch.allclose(nn.Sequential(*layers)(x), ref, atol=1e-6)


@pytest.mark.parametrize('norm,exc,match', [
    ('nosuchnorm', ValueError, r"norm_layer='nosuchnorm' is not a normalisation name"),
    (nn.BatchNorm2d(4), TypeError, r'norm_layer must build a layer .* module instance'),
    (int, TypeError, r"norm_layer=<class 'int'> is a class but not an nn.Module"),
    (3, TypeError, r'norm_layer must be .* got 3'),
    (lambda planes: 'oops', TypeError, r"norm_layer returned 'oops' for 4 planes"),
])
def test_bad_norm(norm, exc, match):
    with pytest.raises(exc, match=match):
        conv_norm(3, 4, 4, norm_layer=norm)


# ---------------------------------------------------------------------------------------------
# geometry: kernel, stride, pad, dilation, groups
# ---------------------------------------------------------------------------------------------

def test_conv_arguments_passed_through():
    conv = conv_norm((3, 5), 8, 16, stride=2, pad=(1, 2), dilation=1, groups=4)[0]
    assert conv.kernel_size == (3, 5) and conv.stride == (2, 2) and conv.padding == (1, 2)
    assert conv.groups == 4
    conv = conv_norm(3, 8, 16, dilation=2, pad=2)[0]
    assert conv.kernel_size == (3, 3) and conv.dilation == (2, 2) and conv.padding == (2, 2)


@pytest.mark.parametrize('kernel,stride,dilation,expect_hw', [
    ((3, 3), 1, 1, (9, 10)), ((5, 5), 1, 2, (9, 10)), ((2, 2), 1, 1, (9, 10)), ((4, 3), 1, 1, (9, 10)),
    ((3, 3), 2, 1, (5, 5)), ((7, 7), 3, 1, (3, 4)), ((2, 2), 2, 1, (5, 5)), ((4, 4), 2, 2, (5, 5)),
])
def test_pad_same(kernel, stride, dilation, expect_hw):
    seq = nn.Sequential(*conv_norm(kernel, 2, 3, pad='same', stride=stride, dilation=dilation))
    assert seq(torch.randn(1, 2, 9, 10)).shape[2:] == expect_hw


@pytest.mark.parametrize('stride,dilation', [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize('kernel', [1, 2, 3, 4, 5, 6, 7, (3, 5), (2, 3)])
def test_pad_same_equals_timm_tf_same(kernel, stride, dilation):
    """pad="same" is TensorFlow's SAME: equal to timm's create_conv2d(padding='same') on odd and even sizes."""
    torch.manual_seed(0)
    ref = timm.layers.create_conv2d(3, 4, kernel, stride=stride, dilation=dilation, padding='same', bias=True)
    ours = conv_norm(kernel, 3, 4, None, norm_layer=None, pad='same', stride=stride, dilation=dilation)[0]
    ours.load_state_dict(ref.state_dict())
    for h, w in [(15, 15), (16, 16), (15, 16), (17, 12)]:
        x = torch.randn(2, 3, h, w)
        assert torch.equal(ours(x), ref(x)), (h, w)


def test_pad_same_is_static_only_when_exact():
    """Symmetric static padding where TF's SAME is symmetric for every input (stride 1, odd extent), else the
    asymmetric padding is computed per input; at stride 2 it differs from the symmetric one."""
    static = conv_norm(3, 4, 4, pad='same', dilation=2)[0]
    assert type(static) is nn.Conv2d and static.padding == (2, 2)
    dynamic = conv_norm(3, 4, 4, None, norm_layer=None, pad='same', stride=2)[0]
    symmetric = conv_norm(3, 4, 4, None, norm_layer=None, pad='symmetric', stride=2)[0]
    assert isinstance(dynamic, timm.layers.Conv2dSame) and symmetric.padding == (1, 1)
    symmetric.load_state_dict(dynamic.state_dict())
    x = torch.randn(1, 4, 16, 16)  # TF pads 0 on top / left and 1 at the bottom / right here
    assert dynamic(x).shape == symmetric(x).shape == (1, 4, 8, 8)
    assert not torch.allclose(dynamic(x), symmetric(x))
    torch.testing.assert_close(dynamic(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), dynamic.weight, dynamic.bias, 2))
    assert list(dynamic.state_dict()) == ['weight', 'bias']  # same keys as nn.Conv2d


@pytest.mark.parametrize('kernel,dilation,padding', [(3, 1, (1, 1)), (5, 2, (4, 4)), ((1, 7), 1, (0, 3)),
                                                     (2, 2, (1, 1))])
def test_pad_symmetric(kernel, dilation, padding):
    conv = conv_norm(kernel, 4, 4, pad='symmetric', stride=2, dilation=dilation)[0]
    assert type(conv) is nn.Conv2d and conv.padding == padding


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(pad='valid'), ValueError, r"pad must be .* got 'valid'"),
    (dict(pad='symmetric', kernel_size=(3, 2)), ValueError, r'pad="symmetric" needs an odd kernel extent .* '
                                                            r'kernel_size=\(3, 2\), dilation=1; use pad="same"'),
    (dict(pad=-1), ValueError, r'pad must be >= 0, got -1'),
    (dict(pad=(1, -1)), ValueError, r'pad must be .* got \(1, -1\)'),
    (dict(pad=(1, 2, 3)), ValueError, r'pad must be .* got \(1, 2, 3\)'),
    (dict(kernel_size=0), ValueError, r'kernel_size must be > 0, got 0'),
    (dict(kernel_size=(3, 3, 3)), ValueError, r'kernel_size must be an int or a pair of ints, got \(3, 3, 3\)'),
    (dict(kernel_size=2.5), TypeError, r'kernel_size must be an int, got 2\.5'),
    (dict(inplanes=0), ValueError, r'inplanes must be > 0, got 0'),
    (dict(outplanes=-2), ValueError, r'outplanes must be > 0, got -2'),
    (dict(stride=0), ValueError, r'stride must be > 0, got 0'),
    (dict(dilation=0), ValueError, r'dilation must be > 0, got 0'),
    (dict(groups=3), ValueError, r'groups=3 must divide inplanes=4 and outplanes=8'),
])
def test_conv_norm_bad_geometry(kwargs, exc, match):
    args = dict(kernel_size=3, inplanes=4, outplanes=8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        conv_norm(**args)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), kh=st.integers(1, 5), kw=st.integers(1, 5),
       stride=st.integers(1, 3), pad=st.integers(0, 3), dilation=st.integers(1, 2), same=st.booleans(),
       norm=st.sampled_from([None, 'batchnorm2d', 'revnorm']))
def test_conv_norm_shape_property(h, w, kh, kw, stride, pad, dilation, same, norm):
    def out(n, k, p):
        return (n + 2 * p - dilation * (k - 1) - 1) // stride + 1

    if same:
        expect = ((h + stride - 1) // stride, (w + stride - 1) // stride)
    else:
        expect = (out(h, kh, pad), out(w, kw, pad))
        if min(expect) < 1:
            return
    kwargs = dict(revnorm=True, norm_layer=nn.BatchNorm2d) if norm == 'revnorm' else dict(norm_layer=norm)
    seq = nn.Sequential(*conv_norm((kh, kw), 2, 4, pad='same' if same else pad, stride=stride,
                                   dilation=dilation, **kwargs)).eval()
    ref = timm.layers.create_conv2d(2, 4, (kh, kw), stride=stride, padding='same' if same else pad,
                                    dilation=dilation)
    x = torch.randn(1, 2, h, w)
    assert seq(x).shape == (1, 4, *expect) == ref(x).shape


# ---------------------------------------------------------------------------------------------
# basic_conv_bn
# ---------------------------------------------------------------------------------------------

def test_basic_conv_bn():
    layers = basic_conv_bn((3, 3), 32, 64)
    assert kinds(layers) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert layers[0].bias is None and layers[1].eps == 1e-3 and layers[1].num_features == 64
    layers = basic_conv_bn((1, 7), 8, 16, nn.Sigmoid, stride=2, pad=(0, 3))
    assert kinds(layers) == [nn.Conv2d, nn.BatchNorm2d, nn.Sigmoid]
    assert layers[0].stride == (2, 2) and layers[0].padding == (0, 3)
    layers = basic_conv_bn(3, 8, 16, batchnorm=False)
    assert kinds(layers) == [nn.Conv2d, nn.ReLU] and layers[0].bias is not None
    assert kinds(basic_conv_bn(3, 8, 16, None)) == [nn.Conv2d, nn.BatchNorm2d]
    assert basic_conv_bn(3, 8, 16, bias=True)[0].bias is not None


def test_basic_conv_bn_matches_conv_norm_with_tf_eps():
    torch.manual_seed(2)
    a = nn.Sequential(*basic_conv_bn(3, 4, 8, pad=1)).eval()
    b = nn.Sequential(*conv_norm(3, 4, 8, pad=1, norm_layer=lambda p: nn.BatchNorm2d(p, eps=1e-3))).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(a(x), b(x))


def test_basic_conv_bn_passes_init_and_checks_batchnorm():
    conv = basic_conv_bn(3, 4, 8, init=nn.init.ones_)[0]
    assert torch.equal(conv.weight, torch.ones(8, 4, 3, 3))
    with pytest.raises(TypeError, match=r"batchnorm must be True or False, got 'no'"):
        basic_conv_bn(3, 4, 8, batchnorm='no')


def test_basic_conv_bn_rejects_norm_layer():
    with pytest.raises(TypeError, match=r'norm_layer=<class .*GroupNorm'):
        basic_conv_bn(3, 4, 8, norm_layer=nn.GroupNorm)
