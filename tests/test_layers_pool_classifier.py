"""AdaptiveMeanMaxPool, create_pool and create_classifier (both forms of the guide)."""
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import SelectAdaptivePool2d

from timm_metalayers.layers import AdaptiveMeanMaxPool, cat_channels, create_classifier, create_pool


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 8, 5, 6)


def names(seq):
    return [name for name, _ in seq.named_children()]


# ---------------------------------------------------------------------------------------------
# AdaptiveMeanMaxPool
# ---------------------------------------------------------------------------------------------

def test_mean_max_pool_default_is_sum(x):
    pool = AdaptiveMeanMaxPool()
    assert pool.output_size == (1, 1)
    ref = F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)
    assert torch.allclose(pool(x), ref)
    # the guide's sum, not timm's 0.5 * (avg + max)
    assert torch.allclose(pool(x), 2 * SelectAdaptivePool2d(pool_type='avgmax')(x))
    assert torch.allclose(pool(x), x.mean((2, 3), keepdim=True) + x.amax((2, 3), keepdim=True), atol=1e-6)


def test_mean_max_pool_output_size_first(x):
    for arg, size in [((2, 2), (2, 2)), (3, (3, 3)), ([2, 3], (2, 3))]:
        pool = AdaptiveMeanMaxPool(arg)
        assert pool.output_size == size
        ref = F.adaptive_avg_pool2d(x, size) + F.adaptive_max_pool2d(x, size)
        assert torch.allclose(pool(x), ref)
    pool = AdaptiveMeanMaxPool(operator.add, (2, 3))
    assert pool(x).shape == (2, 8, 2, 3)


def test_mean_max_pool_cat_and_custom(x):
    pool = AdaptiveMeanMaxPool(cat_channels)
    y = pool(x)
    assert y.shape == (2, 16, 1, 1) and pool.feat_mult() == 2
    assert torch.allclose(y, torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1))
    assert torch.allclose(y, SelectAdaptivePool2d(pool_type='catavgmax')(x))
    pool = AdaptiveMeanMaxPool(torch.maximum, (2, 2))
    ref = torch.maximum(F.adaptive_avg_pool2d(x, 2), F.adaptive_max_pool2d(x, 2))
    assert torch.allclose(pool(x), ref) and pool.feat_mult() == 1
    pool = AdaptiveMeanMaxPool(lambda a, b: b - a)
    assert torch.allclose(pool(x), F.adaptive_max_pool2d(x, 1) - F.adaptive_avg_pool2d(x, 1))
    assert torch.allclose(cat_channels(x, x), torch.cat([x, x], 1))


@pytest.mark.parametrize('args,exc,match', [
    (('add',), TypeError, r"connection must be a function of two tensors, got 'add'"),
    ((operator.add, 0), ValueError, r'output_size must be > 0, got 0'),
    (((1, 2, 3),), ValueError, r'output_size must be an int or a pair of ints, got \(1, 2, 3\)'),
])
def test_mean_max_pool_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        AdaptiveMeanMaxPool(*args)


# ---------------------------------------------------------------------------------------------
# create_pool: timm's global_pool names
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['avg', 'max', 'avgmax', 'catavgmax'])
def test_pool_names_equal_timm(name, x):
    ours = create_pool(name)
    ref = SelectAdaptivePool2d(pool_type=name, flatten=False)
    assert torch.equal(ours(x), ref(x))
    assert isinstance(ours, SelectAdaptivePool2d) and ours.pool_type == name
    assert ours.feat_mult() == ref.feat_mult() == (2 if name == 'catavgmax' else 1)


def test_pool_names_other(x):
    mm = create_pool('meanmax')
    assert isinstance(mm, AdaptiveMeanMaxPool) and torch.allclose(mm(x), AdaptiveMeanMaxPool()(x))
    assert create_pool('') is None and create_pool(None) is None
    assert create_pool(nn.Identity()) is None
    assert create_pool(SelectAdaptivePool2d(pool_type='')) is None
    module = nn.AdaptiveMaxPool2d(2)
    assert create_pool(module) is module


@pytest.mark.parametrize('pool,exc,match', [
    ('nosuch', ValueError, r"pool_layer='nosuch' is not a pool name"),
    ('AVG', ValueError, r"pool_layer='AVG'"),
    (3, TypeError, r'pool_layer must be an nn.Module, a pool name .* got 3'),
])
def test_pool_errors(pool, exc, match):
    with pytest.raises(exc, match=match):
        create_pool(pool)
    with pytest.raises(exc, match=match):
        create_classifier(8, 10, pool_layer=pool)


# ---------------------------------------------------------------------------------------------
# create_classifier: plain form
# ---------------------------------------------------------------------------------------------

def test_plain_classifier_structure_and_numbers(x):
    head = create_classifier(8, 10)
    assert names(head) == ['global_pool', 'flatten', 'fc']
    assert isinstance(head.fc, nn.Linear) and (head.fc.in_features, head.fc.out_features) == (8, 10)
    ref = F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), head.fc.weight, head.fc.bias)
    assert torch.allclose(head(x), ref, atol=1e-6)
    head = create_classifier(8, 10, 'sigmoid', dropout_prob=0.3)
    # dropout comes right after the pooling (and the flatten), before the classifier
    assert names(head) == ['global_pool', 'flatten', 'drop', 'fc', 'act']
    assert isinstance(head.drop, nn.Dropout) and head.drop.p == 0.3
    head.eval()
    ref = torch.sigmoid(F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), head.fc.weight, head.fc.bias))
    assert torch.allclose(head(x), ref, atol=1e-6)


def test_dropout_placement_statistics():
    # dropout acts on the pooled features: with p=0.5, about half the pooled features reach fc as zeros
    torch.manual_seed(1)
    head = create_classifier(256, 1, dropout_prob=0.5, pool_layer='avg').train()
    seen = []
    head.fc.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    head(torch.ones(64, 256, 2, 2))
    feats = seen[0]
    assert feats.shape == (64, 256)
    assert (feats == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert set(feats.unique().tolist()) <= {0.0, 2.0}


def test_no_dropout_for_none_or_zero():
    assert 'drop' not in names(create_classifier(8, 10, dropout_prob=None))
    assert 'drop' not in names(create_classifier(8, 10, dropout_prob=0.0))


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax', 'catavgmax', 'meanmax'])
def test_classifier_pool_names(pool, x):
    head = create_classifier(8, 5, pool_layer=pool)
    ref_pool = AdaptiveMeanMaxPool() if pool == 'meanmax' else SelectAdaptivePool2d(pool_type=pool, flatten=True)
    expected_in = 16 if pool == 'catavgmax' else 8  # catavgmax doubles the features automatically
    assert head.fc.in_features == expected_in
    ref = head.fc(ref_pool(x).flatten(1))
    assert torch.allclose(head(x), ref, atol=1e-6)


def test_classifier_pool_modules(x):
    head = create_classifier(8, 5, pool_layer=nn.AdaptiveAvgPool2d((2, 2)))
    assert head.fc.in_features == 32
    assert head(x).shape == (2, 5)
    head = create_classifier(8, 5, pool_layer=AdaptiveMeanMaxPool(cat_channels))
    assert head.fc.in_features == 16 and head(x).shape == (2, 5)
    head = create_classifier(8, 5, pool_layer=AdaptiveMeanMaxPool((2, 2)))
    assert head.fc.in_features == 32 and head(x).shape == (2, 5)


def test_classifier_without_pool(x):
    for pool in (None, ''):
        head = create_classifier(8, 5, pool_layer=pool, dropout_prob=0.1)
        assert names(head) == ['drop', 'fc']
        feats = torch.randn(3, 8)
        assert head.eval()(feats).shape == (3, 5)


def test_plain_classifier_use_conv(x):
    with pytest.raises(ValueError, match=r"use_conv=True needs pool_layer=None.*got pool_layer='avg'"):
        create_classifier(8, 5, use_conv=True)
    with pytest.raises(ValueError, match=r'use_conv=True needs pool_layer=None.*AdaptiveAvgPool2d'):
        create_classifier(8, 5, use_conv=True, pool_layer=nn.AdaptiveAvgPool2d(1))
    head = create_classifier(8, 5, use_conv=True, pool_layer=None)
    assert names(head) == ['fc']
    assert isinstance(head.fc, nn.Conv2d) and head.fc.kernel_size == (1, 1)
    y = head(x)
    assert y.shape == (2, 5, 5, 6)
    assert torch.allclose(y, F.conv2d(x, head.fc.weight, head.fc.bias), atol=1e-6)


def test_plain_classifier_nclasses_zero(x):
    head = create_classifier(8, 0, 'sigmoid')
    assert names(head) == ['global_pool', 'flatten', 'fc'] and isinstance(head.fc, nn.Identity)
    assert torch.allclose(head(x), F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_state_dict_keys_do_not_depend_on_pool_or_dropout():
    keys = {tuple(create_classifier(8, 5, pool_layer=pool, dropout_prob=drop).state_dict())
            for pool in ('avg', 'max', 'avgmax', 'catavgmax', 'meanmax', '') for drop in (None, 0.2)}
    assert keys == {('fc.weight', 'fc.bias')}
    keys = {tuple(create_classifier(8, 6, 5, pool_layer=pool, dropout_prob=drop).state_dict())
            for pool in ('avg', '') for drop in (None, 0.2)}
    assert keys == {('hidden.weight', 'hidden.bias', 'fc.weight', 'fc.bias')}


# ---------------------------------------------------------------------------------------------
# create_classifier: hidden form
# ---------------------------------------------------------------------------------------------

def test_hidden_classifier_structure_and_numbers(x):
    head = create_classifier(8, 12, 5)
    assert names(head) == ['global_pool', 'flatten', 'hidden', 'hidden_act', 'fc']
    assert (head.hidden.in_features, head.hidden.out_features) == (8, 12)
    assert (head.fc.in_features, head.fc.out_features) == (12, 5)
    assert isinstance(head.hidden_act, nn.ReLU)
    ref = head.fc(F.relu(head.hidden(F.adaptive_avg_pool2d(x, 1).flatten(1))))
    assert torch.allclose(head(x), ref, atol=1e-6)
    head = create_classifier(8, 12, 5, ('hard_swish', 'sigmoid'), dropout_prob=0.2)
    # dropout after the hidden layer (and its activation), before the output layer
    assert names(head) == ['global_pool', 'flatten', 'hidden', 'hidden_act', 'drop', 'fc', 'act']
    head.eval()
    ref = torch.sigmoid(head.fc(F.hardswish(head.hidden(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
    assert torch.allclose(head(x), ref, atol=1e-6)
    head = create_classifier(8, 12, 5, (None, None))
    assert names(head) == ['global_pool', 'flatten', 'hidden', 'fc']


def test_hidden_form_selection():
    for head in (create_classifier(8, 12, 5), create_classifier(8, hidden_planes=12, nclasses=5),
                 create_classifier(8, 12, nclasses=5), create_classifier(8, 12, 5, activations=('relu', None))):
        assert names(head)[2:4] == ['hidden', 'hidden_act'] and head.fc.out_features == 5
    # a non-int third argument is the plain form's activation
    assert names(create_classifier(8, 5, 'relu')) == ['global_pool', 'flatten', 'fc', 'act']
    assert names(create_classifier(8, nclasses=5)) == ['global_pool', 'flatten', 'fc']


def test_hidden_classifier_catavgmax_and_dropout_statistics():
    head = create_classifier(8, 12, 5, pool_layer='catavgmax')
    assert head.hidden.in_features == 16
    torch.manual_seed(2)
    head = create_classifier(4, 512, 1, (None, None), dropout_prob=0.25).train()
    seen = []
    head.fc.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    head(torch.randn(32, 4, 3, 3))
    assert seen[0].shape == (32, 512)
    assert (seen[0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_hidden_classifier_use_conv():
    torch.manual_seed(3)
    pooled = torch.randn(2, 8, 1, 1)
    head = create_classifier(8, 12, 5, use_conv=(True, True), pool_layer=None)
    assert names(head) == ['hidden', 'hidden_act', 'fc']
    assert isinstance(head.hidden, nn.Conv2d) and isinstance(head.fc, nn.Conv2d)
    assert head(pooled).shape == (2, 5, 1, 1)
    # a conv hidden layer then a Linear: flattened in between (timm's MobileNetV3 conv_head layout)
    head = create_classifier(8, 12, 5, use_conv=(True, False), pool_layer=None, dropout_prob=0.2)
    assert names(head) == ['hidden', 'hidden_act', 'drop', 'flatten', 'fc']
    head.eval()
    ref = head.fc(F.relu(head.hidden(pooled)).flatten(1))
    assert torch.allclose(head(pooled), ref, atol=1e-6)
    with pytest.raises(ValueError, match=r"use_conv=\(True, False\) needs pool_layer=None.*'avg'"):
        create_classifier(8, 12, 5, use_conv=(True, False))
    with pytest.raises(ValueError, match=r'use_conv=\(False, True\): a 1x1 conv output layer cannot follow'):
        create_classifier(8, 12, 5, use_conv=(False, True))


def test_hidden_classifier_without_pool_and_nclasses_zero():
    head = create_classifier(8, 12, 5, pool_layer=None)
    assert names(head) == ['hidden', 'hidden_act', 'fc']
    assert head(torch.randn(3, 8)).shape == (3, 5)
    head = create_classifier(8, 12, 0)
    assert isinstance(head.fc, nn.Identity) and head(torch.randn(2, 8, 3, 3)).shape == (2, 12)


@pytest.mark.parametrize('args,kwargs,exc,match', [
    ((0, 10), {}, ValueError, r'inplanes must be > 0, got 0'),
    ((8, -1), {}, ValueError, r'nclasses must be >= 0, got -1'),
    ((8, 10), dict(dropout_prob=1.5), ValueError, r'dropout_prob must be in \[0, 1\], got 1\.5'),
    ((8, 10), dict(dropout_prob=-0.1), ValueError, r'dropout_prob.*-0\.1'),
    ((8, 10, 'nosuch'), {}, ValueError, r"activation='nosuch' is not an activation name"),
    ((8, 10), dict(use_conv='yes'), TypeError, r"use_conv must be True or False, got 'yes'"),
    ((8, 0, 10), {}, ValueError, r'hidden_planes must be > 0, got 0'),
    ((8, 12, 10, ('relu',)), {}, ValueError, r"activations must be a pair \(hidden, output\), got \('relu',\)"),
    ((8, 12, 10, ('nosuch', None)), {}, ValueError, r"activations\[0\]='nosuch'"),
    ((8, 12, 10, ('relu', 'nosuch')), {}, ValueError, r"activations\[1\]='nosuch'"),
    ((8, 12, 10), dict(use_conv=True), ValueError, r'use_conv must be a pair of bools .* got True'),
    ((8, 12, 10), dict(use_conv=(True, 1)), TypeError, r'use_conv\[1\] must be True or False, got 1'),
])
def test_classifier_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        create_classifier(*args, **kwargs)


def test_guide_examples():
    x = torch.randn(2, 64, 4, 4)
    assert create_classifier(64, 10)(x).shape == (2, 10)
    assert create_classifier(64, 10, pool_layer=AdaptiveMeanMaxPool(), dropout_prob=0.2)(x).shape == (2, 10)
    # MobileNetV3-style expanded classifier
    head = create_classifier(64, 1280, 10, ('hard_swish', None), dropout_prob=0.2)
    assert head(x).shape == (2, 10)


@pytest.mark.parametrize('call', [
    lambda: create_classifier(960, 10, hidden_planes=1280),
    lambda: create_classifier(960, 10, ('relu', None), hidden_planes=1280),
    lambda: create_classifier(960, hidden_planes=1280, nclasses=10),
    lambda: create_classifier(960, 1280, 10),
])
def test_hidden_planes_keyword_with_positional_nclasses(call):
    head = call()
    assert list(head._modules) == ['global_pool', 'flatten', 'hidden', 'hidden_act', 'fc']
    assert head.hidden.in_features == 960 and head.hidden.out_features == 1280 and head.fc.out_features == 10
    assert head(torch.randn(2, 960, 7, 7)).shape == (2, 10)


# ---------------------------------------------------------------- a norm after the pool; token heads

def test_classifier_norm_after_pool_and_reset_keeps_it():
    from timm_metalayers.layers import ChannelLayerNorm, HeadResetError
    head = create_classifier(8, 3, norm_layer=lambda c: ChannelLayerNorm(c, eps=1e-6))
    assert list(head._modules) == ['global_pool', 'norm', 'flatten', 'fc']
    x = torch.randn(2, 8, 5, 5)
    pooled = x.mean((2, 3), keepdim=True)
    expected = torch.nn.functional.layer_norm(pooled.flatten(1), (8,), eps=1e-6)
    torch.testing.assert_close(head(x, pre_logits=True), expected)
    norm = head.norm
    head.reset(4)
    assert head.norm is norm and head(x).shape == (2, 4)
    with pytest.raises(HeadResetError, match='norm'):
        head.reset(4, 'catavgmax')
    head.reset(4, keep_hidden=False)  # timm's reset_other: the norm goes
    assert 'norm' not in head._modules


def test_token_head_pools_tokens():
    from timm_metalayers.layers import TokenPool
    tokens = torch.randn(2, 6, 8)
    head = create_classifier(8, 3, tokens=True, pool_layer='avg')
    assert isinstance(head.global_pool, TokenPool) and 'flatten' not in head._modules
    torch.testing.assert_close(head(tokens, pre_logits=True), tokens.mean(1))
    assert create_classifier(8, 3, tokens=True, pool_layer='max')(tokens, pre_logits=True).equal(tokens.amax(1))
    assert create_classifier(8, 3, tokens=True, pool_layer='')(tokens).shape == (2, 6, 3)
    with pytest.raises(ValueError, match='cannot pool tokens'):
        create_classifier(8, 3, tokens=True, pool_layer='catavgmax')
    with pytest.raises(ValueError, match='tokens'):
        create_classifier(8, 3, tokens=True, pool_layer=None, use_conv=True)
    with pytest.raises(ValueError, match='TokenPool expects tokens'):
        TokenPool('avg')(torch.randn(2, 8, 3, 3))


def test_skip_connection_affine_and_fixed_size_patch_embedding():
    from timm_metalayers.layers import Affine, PatchEmbedding, SkipConnection
    skip = SkipConnection(nn.Linear(4, 4), drop_path=0.5).eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(skip(x), x + skip.branch(x))
    assert list(dict(SkipConnection(nn.Linear(4, 4)).named_children())) == ['branch', 'drop_path']
    with pytest.raises(TypeError, match='branch'):
        SkipConnection(lambda t: t)
    affine = Affine(4)
    with torch.no_grad():
        affine.alpha.fill_(2.0)
        affine.beta.fill_(1.0)
    torch.testing.assert_close(affine(x), 2 * x + 1)
    embed = PatchEmbedding(32, 8, 3, 4, fixed_size_reason='the mixing is sized for 16 tokens')
    with pytest.raises(ValueError, match=r'needs images of size \(32, 32\) \(the mixing.*img_size=\(16, 16\)'):
        embed(torch.randn(1, 3, 16, 16))
