"""The inverted-residual families (EfficientNet/V2, MobileNetV1/V2, MNASNet): parity with timm through the
checkpoint filter, every tag timm has, argument wiring, features / pruning as timm's, and the builder."""
import copy

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

import timm_metalayers  # noqa: F401 (registers the models)
from twin_checkpoints import load_twin
from twin_checks import assert_create_model_refuses, assert_filter_rejects
from timm_metalayers.layers import StochasticDepth, dwsep_conv_norm, fused_mbconv, linear_scheduler, mbconv
from timm_metalayers.models._invres import InvResNet, invresmodel, scale_depths
from timm_metalayers.models.efficientnet import (
    INVRES_CONFIGS, checkpoint_filter_fn, efficientnet, efficientnetv2, mnasnet, mobilenetv1, mobilenetv2)

TWINS = ([f'efficientnet_b{i}' for i in range(8)] + [f'tf_efficientnet_b{i}' for i in range(8)]
         + [f'tf_efficientnetv2_{s}' for s in ('s', 'm', 'l', 'xl')]
         + ['mobilenetv1_100', 'mobilenetv1_125', 'mobilenetv2_050', 'mobilenetv2_100', 'mobilenetv2_140',
            'mnasnet_100', 'semnasnet_100', 'mnasnet_small'])
# logits parity on the small and representative ones (every twin's full mapping is checked on 'meta' below)
PARITY = ['efficientnet_b0', 'efficientnet_b2', 'tf_efficientnet_b0', 'tf_efficientnetv2_s', 'mobilenetv1_125',
          'mobilenetv2_050', 'mobilenetv2_140', 'mnasnet_100', 'semnasnet_100', 'mnasnet_small']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def weights(timm_checkpoint):
    return timm_checkpoint


# ------------------------------------------------------------------------------------------------ registry

def test_registered_with_every_timm_tag():
    assert set(timm.list_models(['metalayers_' + n for n in TWINS])) == {f'metalayers_{n}' for n in TWINS}
    ours = set(timm.list_pretrained(['metalayers_' + n + '.*' for n in TWINS]))
    theirs = {f'metalayers_{t}' for t in timm.list_pretrained([n + '.*' for n in TWINS])}
    assert ours == theirs and len(ours) == 60
    for tag in ours:
        cfg = timm.get_pretrained_cfg(tag)
        timm_tag = tag[len('metalayers_'):]
        assert cfg.hf_hub_id == f'timm/{timm_tag}' and cfg.hf_hub_filename == 'model.safetensors'
        ref = timm.get_pretrained_cfg(timm_tag)
        for field in ('mean', 'std', 'crop_pct', 'interpolation', 'input_size', 'pool_size', 'num_classes'):
            assert getattr(cfg, field) == getattr(ref, field), (tag, field)
        assert cfg.first_conv == 'stem.0' and cfg.classifier == 'head.fc'
    for name in TWINS:  # the default tag is timm's default
        assert timm.get_pretrained_cfg(f'metalayers_{name}').tag == timm.get_pretrained_cfg(name).tag, name
    untrained = timm.get_pretrained_cfg('metalayers_efficientnet_b7')
    assert untrained.tag == 'untrained' and untrained.hf_hub_id is None and untrained.input_size == (3, 600, 600)


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize('name', PARITY)
def test_parity_with_timm(name, weights):
    ref, path = weights(name)
    ours = load_twin(name, path).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    for size in ((64, 64), (67, 45)):  # odd sizes: TF "same" pads asymmetrically at stride 2
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, got = ref(x), ours(x)
            assert expected.abs().max() > 0.1  # the comparison means something
            assert (got - expected).abs().max().item() <= 1e-4, size
            torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=0, atol=1e-4)


def _meta_pair(name: str):
    return timm.create_model(name, device='meta'), timm.create_model(f'metalayers_{name}', device='meta')


@pytest.mark.parametrize('name', TWINS)
def test_every_twin_maps_every_key_and_shape(name):
    """Every timm key lands on one of ours with its shape, and the features are timm's (no compute: 'meta')."""
    ref, ours = _meta_pair(name)
    mapped = checkpoint_filter_fn(ref.state_dict(), ours)
    target = ours.state_dict()
    assert mapped.keys() == target.keys()
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert ours.num_features == ref.num_features
    assert [(f['num_chs'], f['reduction']) for f in ours.feature_info] == [
        (f['num_chs'], f['reduction']) for f in ref.feature_info]


def test_intermediates_and_pruning_as_timm(weights):
    """The head conv ends the trunk as timm's: after the last feature, kept by a prune that keeps it."""
    ref, path = weights('efficientnet_b0')
    ours = load_twin('efficientnet_b0', path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for kwargs in (dict(), dict(indices=[4], stop_early=True), dict(indices=[1], stop_early=True)):
            final, taps = ours.forward_intermediates(x, **kwargs)
            ref_final, ref_taps = ref.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, ref_final)
            torch.testing.assert_close(taps, ref_taps)
        for kwargs in (dict(indices=[4], prune_head=False), dict(indices=[4], prune_norm=True),
                       dict(indices=[2])):
            pruned, ref_pruned = copy.deepcopy(ours), copy.deepcopy(ref)
            assert pruned.prune_intermediate_layers(**kwargs) == ref_pruned.prune_intermediate_layers(**kwargs)
            torch.testing.assert_close(pruned(x), ref_pruned(x))
            assert pruned.num_features == ref_pruned.num_features, kwargs
        assert isinstance(pruned.head_conv, nn.Identity)


def test_data_config_from_tag():
    model = timm.create_model('metalayers_tf_efficientnet_b3.ns_jft_in1k', device='meta')
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg['input_size'] == (3, 300, 300) and cfg['crop_pct'] == 0.904 and cfg['interpolation'] == 'bicubic'


# ------------------------------------------------------------------------------------------------ filter

def test_filter_names_broken_keys(weights):
    ref, _ = weights('mnasnet_small')
    assert_filter_rejects(checkpoint_filter_fn, timm.create_model('metalayers_mnasnet_small'), ref.state_dict(),
                          missing=['blocks.2.1.conv_dw.weight'], extra=['blocks.9.0.conv_pw.weight'],
                          wrong={'conv_head.weight': (3, 3, 1, 1)},
                          names=['stages.2.1.dw.0.weight', 'blocks.9.0.conv_pw.weight', 'head_conv.0.weight'])


def test_filter_error_through_create_model(weights, tmp_path):
    ref, _ = weights('mobilenetv1_125')
    assert_create_model_refuses('metalayers_mobilenetv1_125', ref.state_dict(), tmp_path, drop_prefix='blocks.3.5.bn2',
                                match=r'stages\.3\.5\.4\.weight')


def test_filter_loads_own_state_dict_unchanged(weights):
    ref, path = weights('tf_efficientnetv2_s')
    ours = load_twin('tf_efficientnetv2_s', path)
    own = ours.state_dict()
    mapped = checkpoint_filter_fn(own, ours)
    assert mapped.keys() == own.keys() and all(mapped[k] is own[k] for k in own)


def test_pretrained_in_chans_and_num_classes(weights):
    ref, path = weights('mobilenetv2_050')
    model = load_twin('mobilenetv2_050', path, in_chans=1, num_classes=5).eval()
    torch.testing.assert_close(model.stem[0].weight, ref.conv_stem.weight.sum(1, keepdim=True))
    torch.testing.assert_close(model.head_conv[0].weight, ref.conv_head.weight)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    model = load_twin('mobilenetv2_050', path, num_classes=0).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1280)
    features = load_twin('mobilenetv2_050', path, features_only=True, out_indices=(1, 4))
    torch.testing.assert_close(features.model.stages[1][0].dw[0].weight, ref.blocks[1][0].conv_dw.weight)
    assert [f.shape[1] for f in features(torch.randn(1, 3, 64, 64))] == [16, 160]


# ------------------------------------------------------------------------------------------------ wiring

@pytest.mark.parametrize('name', ['efficientnet_b1', 'tf_efficientnetv2_s', 'mnasnet_small', 'mobilenetv1_100'])
def test_drop_path_rate_schedule_is_timms(name):
    """linear_scheduler over all blocks; one StochasticDepth per residual block, with timm's rates."""
    rate = 0.2
    ours = timm.create_model(f'metalayers_{name}', drop_path_rate=rate, device='meta')
    ref = timm.create_model(name, drop_path_rate=rate, device='meta')
    ref_blocks = [b for stage in ref.blocks for b in stage]
    blocks = [b for stage in ours.stages for b in stage]
    assert len(blocks) == len(ref_blocks)
    schedule = linear_scheduler(rate, depth=len(blocks))
    probs = [m.p for m in ours.modules() if isinstance(m, StochasticDepth)]
    expected = [p for p, b in zip(schedule, ref_blocks) if b.has_skip]
    assert probs == pytest.approx(expected) and len(probs) == {
        'efficientnet_b1': 16, 'tf_efficientnetv2_s': 35, 'mnasnet_small': 10, 'mobilenetv1_100': 0}[name]
    assert probs == pytest.approx([getattr(b.drop_path, 'drop_prob', 0.) for b in ref_blocks if b.has_skip])


def test_state_dict_keys_independent_of_regularisers_and_pool():
    base = list(timm.create_model('metalayers_efficientnet_b0', device='meta').state_dict())
    for kwargs in (dict(drop_rate=0.5), dict(drop_path_rate=0.3), dict(global_pool='max'), dict(global_pool=''),
                   dict(global_pool='catavgmax')):
        model = timm.create_model('metalayers_efficientnet_b0', device='meta', **kwargs)
        assert list(model.state_dict()) == base, kwargs


def test_drop_rate_and_global_pool_reach_the_head():
    model = timm.create_model('metalayers_mnasnet_small', drop_rate=0.3, global_pool='catavgmax', num_classes=4)
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.3
    assert model.head.fc.in_features == 2 * 1280
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    unpooled = timm.create_model('metalayers_mnasnet_small', global_pool='', num_classes=0).eval()
    assert unpooled(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


def test_act_and_norm_layer_reach_every_conv_norm():
    model = timm.create_model('metalayers_efficientnet_b0', act_layer='gelu', norm_layer='layernorm2d')
    assert not any(isinstance(m, (nn.SiLU, nn.BatchNorm2d)) for m in model.modules())
    block = model.stages[1][0]
    for act in (model.stem[2], block.expand[2], block.dw[2], block.se.reduce[1], model.head_conv[2]):
        assert type(act).__name__ == 'GELU'
    assert type(block.se.expand[1]).__name__ == 'Sigmoid'  # the gate stays a sigmoid
    assert isinstance(model.stem[1], timm.layers.LayerNorm2d) and isinstance(block.project[1], timm.layers.LayerNorm2d)
    mnv1 = timm.create_model('metalayers_mobilenetv1_100', act_layer='silu')
    assert {type(m) for m in mnv1.stages[0][0] if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d))} == {nn.SiLU}


def test_tf_variants_pad_as_tensorflow():
    tf = timm.create_model('metalayers_tf_efficientnet_b0', device='meta')
    assert isinstance(tf.stem[0], Conv2dSame) and isinstance(tf.stages[1][0].dw[0], Conv2dSame)
    assert all(m.eps == 1e-3 for m in tf.modules() if isinstance(m, nn.BatchNorm2d))
    pt = timm.create_model('metalayers_efficientnet_b0', device='meta')
    assert not any(isinstance(m, Conv2dSame) for m in pt.modules())
    assert all(m.eps == 1e-5 for m in pt.modules() if isinstance(m, nn.BatchNorm2d))
    own_norm = timm.create_model('metalayers_tf_efficientnetv2_s', norm_layer=nn.BatchNorm2d, device='meta')
    assert all(m.eps == 1e-5 for m in own_norm.modules() if isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------------------------------------------ builder

def test_builder_custom_table():
    """Metalhead's build_invresmodel: a config table of three block types in one call."""
    table = [(fused_mbconv, 3, 16, 1, 1, 1, None), (fused_mbconv, 3, 24, 4, 2, 2, None),
             (mbconv, 5, 32, 6, 2, 2, 0.25), (dwsep_conv_norm, 3, 64, 1, 2, 1, None)]
    model = invresmodel(table, width_mult=1.5, depth_mult=1.5, stem_planes=16, head_planes=256,
                        act_layer='silu', num_classes=3, drop_path_rate=0.1).eval()
    assert isinstance(model, InvResNet)
    assert [len(s) for s in model.stages] == [2, 3, 3, 2]  # ceil(repeats x 1.5)
    assert [f['num_chs'] for f in model.feature_info] == [24, 40, 48, 96]  # make_divisible(c x 1.5, 8)
    assert model.stem[0].out_channels == 24 and model.num_features == 256
    assert isinstance(model.stages[2][0].se.reduce[1], nn.SiLU)
    assert model.stages[2][0].se.reduce[0].out_channels == 10  # se_ratio of the block's input: 40 x 0.25
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert [f['reduction'] for f in model.feature_info] == [2, 4, 8, 16]
    assert isinstance(model.stages[0][0].project, nn.Identity)  # fused_mbconv, expansion 1: one conv_norm
    no_head = invresmodel(table[:1], head_planes=None, num_classes=0)
    assert isinstance(no_head.head_conv, nn.Identity) and no_head.num_features == 16
    assert scale_depths([1, 2, 3], 1.1) == [2, 3, 4]


def test_family_builders():
    assert efficientnet('b3', device='meta').num_features == 1536
    assert [len(s) for s in efficientnet('b1', device='meta').stages] == [2, 3, 3, 4, 4, 5, 2]
    assert efficientnetv2('m', device='meta').stem[0].out_channels == 24
    assert mobilenetv1(0.5, device='meta').num_features == 512
    assert mobilenetv2(1.4, device='meta').num_features == 1792
    assert mnasnet('small', device='meta').stem[0].out_channels == 8
    assert len(INVRES_CONFIGS['mnasnet_a1']) == 7


def test_builder_errors():
    row = (mbconv, 3, 16, 6, 1, 1, None)
    with pytest.raises(ValueError, match='non-empty list'):
        invresmodel([])
    with pytest.raises(ValueError, match=r'row 0'):
        invresmodel([(mbconv, 3, 16)])
    with pytest.raises(ValueError, match=r'config_table\[0\] block'):
        invresmodel([(nn.Conv2d, 3, 16, 6, 1, 1, None)])
    with pytest.raises(ValueError, match='se_ratio'):
        invresmodel([(mbconv, 3, 16, 6, 1, 1, 4)])
    with pytest.raises(ValueError, match='dwsep_conv_norm has no expansion'):
        invresmodel([(dwsep_conv_norm, 3, 16, 6, 1, 1, None)])
    with pytest.raises(ValueError, match='expansion'):
        invresmodel([(mbconv, 3, 16, 0.5, 1, 1, None)])
    with pytest.raises(ValueError, match='width_mult'):
        invresmodel([row], width_mult=0)
    with pytest.raises(ValueError, match='depth_mult'):
        invresmodel([row], depth_mult=-1)
    with pytest.raises(ValueError, match='pad'):
        invresmodel([row], pad='valid')
    with pytest.raises(ValueError, match='drop_path_rate'):
        invresmodel([row], drop_path_rate=1.5)
    with pytest.raises(ValueError, match='head_planes'):
        invresmodel([row], head_planes=0)
    with pytest.raises(ValueError, match="scale='b9'"):
        efficientnet('b9')
    with pytest.raises(ValueError, match="size='xxl'"):
        efficientnetv2('xxl')
    with pytest.raises(ValueError, match="config='c1'"):
        mnasnet('c1')
