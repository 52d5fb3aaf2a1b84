"""ConvNeXt family: parity with timm's ConvNeXt through the checkpoint filter, argument wiring, the head's norm."""
from functools import partial

import pytest
import timm
import torch
from torch import nn
from timm.models.convnext import ConvNeXt as TimmConvNeXt

import timm_metalayers  # noqa: F401  (registers the models)
from timm_metalayers.layers import ChannelLayerNorm, LayerNormV2, StochasticDepth, linear_scheduler
from timm_metalayers.models.convnext import ConvNeXt, checkpoint_filter_fn, convnext
from twin_checks import assert_adapts_in_chans_and_head, assert_filter_rejects
from twins import (assert_full_mapping, assert_same_outputs, load_through_filter, max_diff,  # noqa: F401
                   one_thread, ours_pretrained, save_timm_checkpoint, timm_checkpoint)

ARCHS = ['convnext_tiny', 'convnext_small', 'convnext_base', 'convnext_large', 'convnext_xlarge']
SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48))  # timm's names for a small custom ConvNeXt
SMALL_OURS = dict(depths=(1, 1, 2, 1), planes=(16, 24, 32, 48))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """timm's ConvNeXt-T with random weights, saved as safetensors."""
    return timm_checkpoint('convnext_tiny', tmp_path_factory.mktemp('convnext') / 'tiny.safetensors')


@pytest.mark.parametrize('arch', ARCHS)
def test_every_timm_key_maps_at_full_size(arch):
    assert_full_mapping(arch, checkpoint_filter_fn)


def test_parity_tiny_through_pretrained_file(tiny):
    ref, path = tiny
    ours = ours_pretrained('convnext_tiny', path)
    x = torch.randn(2, 3, 64, 64)
    assert_same_outputs(ours, ref, x)


def test_parity_custom_build_with_head_hidden_size():
    """``convnext(depths, planes; ...)`` with a hidden head layer and 5x5 kernels equals timm's ConvNeXt."""
    ref = TimmConvNeXt(**SMALL, kernel_sizes=5, head_hidden_size=40, num_classes=11, ls_init_value=0.5)
    ours = convnext((1, 1, 2, 1), (16, 24, 32, 48), kernel_size=5, head_hidden_size=40, num_classes=11,
                    ls_init_value=0.5)
    save_timm_checkpoint(ref, '/dev/null')
    load_through_filter(ours, ref)
    assert ours.head_hidden_size == 40 == ref.head_hidden_size
    x = torch.randn(2, 3, 48, 48)
    assert_same_outputs(ours, ref, x)


def test_pretrained_in_chans_and_num_classes(tiny):
    _, path = tiny
    assert_adapts_in_chans_and_head('convnext_tiny', path)


def test_filter_names_broken_keys(tiny):
    ref, _ = tiny
    assert_filter_rejects(checkpoint_filter_fn, convnext((3, 3, 9, 3), (96, 192, 384, 768)), ref.state_dict(),
                          missing=['stages.2.blocks.4.mlp.fc1.weight'], extra=['stages.1.blocks.0.bogus.weight'],
                          wrong={'head.norm.weight': (5,)},
                          names=['stages.2.blocks.4.branch.mlp.fc1.weight', 'stages.1.blocks.0.bogus.weight',
                                 'head.norm.weight'])


def test_forward_intermediates_match_timm(tiny):
    ref, path = tiny
    ours = ours_pretrained('convnext_tiny', path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = ours.forward_intermediates(x, indices=[0, 2, 3], norm=True)
        ref_final, ref_inter = ref.forward_intermediates(x, indices=[0, 2, 3], norm=True)
    assert [t.shape[1] for t in inter] == [96, 384, 768]
    assert max(max_diff(a, b) for a, b in zip(inter, ref_inter)) <= 1e-4
    assert max_diff(final, ref_final) <= 1e-4
    assert [f['module'] for f in ours.feature_info] == [f'stages.{i}' for i in range(4)]
    assert [f['reduction'] for f in ours.feature_info] == [4, 8, 16, 32]


def test_features_only():
    model = timm.create_model('metalayers_convnext_tiny', features_only=True, out_indices=(1, 3), **SMALL_OURS)
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in feats] == [(1, 24, 8, 8), (1, 48, 2, 2)]


# ---------------------------------------------------------------- the head: pool → norm → fc

def test_head_is_pool_norm_fc_and_reset_keeps_the_norm():
    model = convnext(**SMALL_OURS, num_classes=5).eval()
    assert list(model.head._modules) == ['global_pool', 'norm', 'flatten', 'fc']
    assert isinstance(model.head.norm, ChannelLayerNorm)
    norm = model.head.norm
    model.reset_classifier(3)
    assert model.head.norm is norm and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(4, '')  # timm: no pool → the norm on the map and a 1x1 conv classifier
    assert model.head.norm is norm and isinstance(model.head.fc, nn.Conv2d)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 2, 2)


def test_prune_removes_the_head_norm_as_timm_does():
    ours, ref = convnext(**SMALL_OURS), TimmConvNeXt(**SMALL)
    load_through_filter(ours, save_timm_checkpoint(ref, '/dev/null')[0])
    assert ours.prune_intermediate_layers([1]) == ref.prune_intermediate_layers([1])
    assert 'norm' not in ours.head._modules and ours.num_features == ref.num_features == 24
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= 1e-4


# ---------------------------------------------------------------- argument wiring

def test_drop_path_rate_schedule():
    model = convnext(**SMALL_OURS, drop_path_rate=0.2)
    rates = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert rates == linear_scheduler(0.2, depth=5)


def test_keys_independent_of_regularisers_and_pool():
    plain = convnext(**SMALL_OURS).state_dict()
    other = convnext(**SMALL_OURS, drop_rate=0.3, drop_path_rate=0.2, global_pool='max').state_dict()
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in other.items()}


def test_drop_rate_is_head_dropout():
    model = convnext(**SMALL_OURS, drop_rate=0.25)
    assert model.head.drop.p == 0.25


def test_act_layer_reaches_every_mlp():
    model = convnext(**SMALL_OURS, act_layer='relu')
    acts = [block.branch.mlp.act for stage in model.stages for block in stage.blocks]
    assert len(acts) == 5 and all(isinstance(a, nn.ReLU) for a in acts)


def test_norm_layer_reaches_every_norm_with_equal_keys_and_numbers():
    """A custom NCHW norm_layer goes everywhere (the block norm then before the permute); with
    ChannelLayerNorm it is the same computation as the default channels-last LayerNorm, same keys."""
    default = convnext(**SMALL_OURS).eval()
    custom = convnext(**SMALL_OURS, norm_layer=partial(ChannelLayerNorm, eps=1e-6)).eval()
    assert list(custom.state_dict()) == list(default.state_dict())
    custom.load_state_dict(default.state_dict())
    assert all(isinstance(block.branch.norm, ChannelLayerNorm) for stage in custom.stages for block in stage.blocks)
    assert all(isinstance(block.branch.norm, LayerNormV2) for stage in default.stages for block in stage.blocks)
    assert isinstance(custom.stem[1], ChannelLayerNorm) and isinstance(custom.stages[1].downsample[0], ChannelLayerNorm)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(custom(x), default(x)) <= 1e-5
    bn = convnext(**SMALL_OURS, norm_layer='batchnorm2d')
    assert isinstance(bn.stem[1], nn.BatchNorm2d) and isinstance(bn.head.norm, nn.BatchNorm2d)


def test_timm_argument_names():
    model = timm.create_model('metalayers_convnext_tiny', dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                              kernel_sizes=3)
    assert model.num_features == 32 and model.stages[0].blocks[0].branch.conv_dw.kernel_size == (3, 3)


@pytest.mark.parametrize('kwargs, match', [
    (dict(depths=(1, 1), planes=(8, 16, 32)), 'planes'),
    (dict(depths=(1, 1), planes=(8, 16), kernel_size=(3, 5, 7)), 'kernel_size'),
    (dict(depths=(1, 1), planes=(8, 16), output_stride=16), 'output_stride'),
    (dict(depths=(1, 0), planes=(8, 16)), 'depths'),
    (dict(depths=(1, 1), planes=(8, 16), mlp_ratio=0), 'mlp_ratio'),
])
def test_builder_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConvNeXt(**kwargs)
