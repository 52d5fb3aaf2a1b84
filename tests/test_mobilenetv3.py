"""MobileNetV3 family: parity with timm through the checkpoint filter, argument wiring, features, head API."""
import functools

import pytest
import timm
import torch
from torch import nn

import timm_metalayers  # noqa: F401 (registers the models)
from twin_checkpoints import load_twin
from twin_checks import assert_create_model_refuses, assert_filter_rejects
from timm_metalayers.layers import StochasticDepth, linear_scheduler
from timm_metalayers.state_dict import CheckpointMismatchError
from timm_metalayers.layers.classifier import HeadResetError
from timm_metalayers.models.mobilenetv3 import MobileNetV3, checkpoint_filter_fn, mobilenetv3

MODELS = ['mobilenetv3_large_100', 'mobilenetv3_small_100', 'mobilenetv3_small_075', 'mobilenetv3_small_050']
TAGS = {
    'metalayers_mobilenetv3_large_100.ra_in1k', 'metalayers_mobilenetv3_large_100.miil_in21k_ft_in1k',
    'metalayers_mobilenetv3_small_100.lamb_in1k', 'metalayers_mobilenetv3_small_075.lamb_in1k',
    'metalayers_mobilenetv3_small_050.lamb_in1k',
}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def weights(timm_checkpoint):
    return timm_checkpoint


# ------------------------------------------------------------------------------------------------ registry

def test_registered():
    assert set(timm.list_models('metalayers_mobilenetv3*')) == {f'metalayers_{n}' for n in MODELS}
    assert set(timm.list_pretrained('metalayers_mobilenetv3*')) == TAGS
    for tag in TAGS:
        cfg = timm.get_pretrained_cfg(tag)
        timm_tag = tag[len('metalayers_'):]
        assert cfg.hf_hub_id == f'timm/{timm_tag}' and cfg.hf_hub_filename == 'model.safetensors'
        ref = timm.get_pretrained_cfg(timm_tag)
        for field in ('mean', 'std', 'crop_pct', 'interpolation', 'input_size', 'pool_size', 'num_classes',
                      'license'):
            assert getattr(cfg, field) == getattr(ref, field), (tag, field)
        assert cfg.first_conv == 'stem.0' and cfg.classifier == 'head.fc'


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize('name', MODELS)
def test_parity_with_timm(name, weights):
    ref, path = weights(name)
    ours = load_twin(name, path).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    for size in ((224, 224), (160, 192)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, got = ref(x), ours(x)
            assert expected.abs().max() > 0.1  # the comparison means something
            assert (got - expected).abs().max().item() <= 1e-4, size
            feats = ours.forward_features(x)
            torch.testing.assert_close(feats, ref.forward_features(x), rtol=0, atol=1e-4)
            torch.testing.assert_close(ours.forward_head(feats, pre_logits=True),
                                       ref.forward_head(ref.forward_features(x), pre_logits=True), rtol=0, atol=1e-4)


def test_data_config_from_tag():
    model = timm.create_model('metalayers_mobilenetv3_large_100.miil_in21k_ft_in1k')
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg['mean'] == (0., 0., 0.) and cfg['std'] == (1., 1., 1.) and cfg['interpolation'] == 'bilinear'
    assert timm.data.resolve_data_config(model=timm.create_model('metalayers_mobilenetv3_small_100'))[
        'interpolation'] == 'bicubic'


# ------------------------------------------------------------------------------------------------ filter

def test_filter_names_broken_keys(weights):
    ref, _ = weights('mobilenetv3_small_050')
    assert_filter_rejects(checkpoint_filter_fn, timm.create_model('metalayers_mobilenetv3_small_050'),
                          ref.state_dict(), missing=['blocks.2.1.conv_dw.weight'], extra=['blocks.9.0.conv.weight'],
                          wrong={'blocks.1.0.bn3.weight': (3,)},
                          names=['stages.2.1.dw.0.weight', 'blocks.9.0.conv.weight', 'stages.1.0.project.1.weight'])
    assert issubclass(CheckpointMismatchError, ValueError) and not issubclass(CheckpointMismatchError, TypeError)


def test_filter_error_through_create_model(weights, tmp_path):
    ref, _ = weights('mobilenetv3_small_050')
    assert_create_model_refuses('metalayers_mobilenetv3_small_050', ref.state_dict(), tmp_path,
                                drop_prefix='conv_head', match=r'head\.hidden\.weight')


def test_filter_loads_own_state_dict_unchanged(weights):
    ref, path = weights('mobilenetv3_small_050')
    ours = load_twin('mobilenetv3_small_050', path).eval()
    own = ours.state_dict()
    assert checkpoint_filter_fn(own, ours).keys() == own.keys()
    # and onto an unpooled model, whose head runs as 1x1 convs
    unpooled = timm.create_model('metalayers_mobilenetv3_small_050', global_pool='').eval()
    unpooled.load_state_dict(checkpoint_filter_fn(own, unpooled))
    assert unpooled.head.hidden.weight.dim() == 4
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(unpooled.forward_head(torch.ones(1, 288, 3, 3)).mean((2, 3)),
                                   ours.forward_head(torch.ones(1, 288, 3, 3)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unpooled.forward_features(x), ours.forward_features(x))


def test_unpooled_model_loads_timm_weights(weights):
    ref, path = weights('mobilenetv3_small_100')
    ours = load_twin('mobilenetv3_small_100', path, global_pool='').eval()
    torch.testing.assert_close(ours.head.hidden.weight, ref.conv_head.weight)
    torch.testing.assert_close(ours.head.fc.weight.flatten(1), ref.classifier.weight)


def test_pretrained_in_chans_and_num_classes(weights):
    ref, path = weights('mobilenetv3_small_075')
    model = load_twin('mobilenetv3_small_075', path, in_chans=1, num_classes=5).eval()
    torch.testing.assert_close(model.stem[0].weight, ref.conv_stem.weight.sum(1, keepdim=True))
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    torch.testing.assert_close(model.head.hidden.weight, ref.conv_head.weight.flatten(1))
    model = load_twin('mobilenetv3_small_075', path, in_chans=1, num_classes=0).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1024)
    features = load_twin('mobilenetv3_small_075', path, features_only=True)
    torch.testing.assert_close(features.model.stages[0][0].dw[0].weight, ref.blocks[0][0].conv_dw.weight)


# ------------------------------------------------------------------------------------------------ wiring

@pytest.mark.parametrize('name', ['mobilenetv3_large_100', 'mobilenetv3_small_100'])
def test_drop_path_rate_schedule(name):
    rate = 0.2
    model = timm.create_model(f'metalayers_{name}', drop_path_rate=rate)
    probs = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    residual = sum(getattr(b, 'has_skip', False) for b in timm.create_model(name).blocks.modules())
    assert len(probs) == residual == {'mobilenetv3_large_100': 10, 'mobilenetv3_small_100': 6}[name]
    assert probs == linear_scheduler(rate, depth=residual)
    assert probs[0] == 0.0 and probs[-1] < rate


def test_state_dict_keys_independent_of_drop_rates_and_pool():
    base = timm.create_model('metalayers_mobilenetv3_small_050').state_dict()
    for kwargs in (dict(drop_rate=0.0), dict(drop_rate=0.5), dict(drop_path_rate=0.3),
                   dict(global_pool='max'), dict(global_pool=''), dict(global_pool='meanmax')):
        model = timm.create_model('metalayers_mobilenetv3_small_050', **kwargs)
        assert list(model.state_dict()) == list(base), kwargs


def test_drop_rate_is_head_dropout():
    model = timm.create_model('metalayers_mobilenetv3_small_050', drop_rate=0.3)
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.3
    assert list(model.head._modules) == ['global_pool', 'flatten', 'hidden', 'hidden_act', 'drop', 'fc']
    assert 'drop' not in timm.create_model('metalayers_mobilenetv3_small_050', drop_rate=0.0).head._modules
    assert timm.create_model('metalayers_mobilenetv3_small_050').head.drop.p == 0.2  # Metalhead's default


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax', 'catavgmax', 'meanmax'])
def test_global_pool(pool):
    model = timm.create_model('metalayers_mobilenetv3_small_050', global_pool=pool, num_classes=7).eval()
    width = 288 * (2 if pool == 'catavgmax' else 1)
    assert model.head.hidden.in_features == width
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_no_pool_gives_a_map():
    model = timm.create_model('metalayers_mobilenetv3_small_050', global_pool='', num_classes=0).eval()
    out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 1024, 3, 3)
    model = timm.create_model('metalayers_mobilenetv3_small_050', global_pool='', num_classes=10).eval()
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 10, 3, 3)


def test_num_classes_zero_gives_pre_logits():
    model = timm.create_model('metalayers_mobilenetv3_small_050', num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, model.head_hidden_size) == (2, 1024)
    torch.testing.assert_close(out, model.forward_head(model.forward_features(x), pre_logits=True))
    assert model.num_features == 288 and model.num_classes == 0


def test_act_and_norm_layer():
    model = timm.create_model('metalayers_mobilenetv3_small_050', act_layer='silu',
                              norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3))
    assert not any(isinstance(m, nn.Hardswish) for m in model.modules())
    assert isinstance(model.stem[2], nn.SiLU) and isinstance(model.head.hidden_act, nn.SiLU)
    assert isinstance(model.stages[0][0].dw[2], nn.ReLU)  # a ReLU row stays ReLU
    assert isinstance(model.stages[2][0].dw[2], nn.SiLU)
    assert isinstance(model.stages[2][0].se.reduce[1], nn.ReLU)  # the SE keeps ReLU / hard-sigmoid
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 for m in norms)
    model = timm.create_model('metalayers_mobilenetv3_small_050', norm_layer='layernorm2d', act_layer=nn.GELU)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.stem[1], timm.layers.LayerNorm2d) and isinstance(model.stem[2], nn.GELU)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


# ------------------------------------------------------------------------------------------------ features

@pytest.mark.parametrize('name', ['mobilenetv3_large_100', 'mobilenetv3_small_050'])
def test_features_only(name):
    ref = timm.create_model(name, features_only=True)
    model = timm.create_model(f'metalayers_{name}', features_only=True).eval()
    assert model.feature_info.channels() == ref.feature_info.channels()
    assert model.feature_info.reduction() == ref.feature_info.reduction() == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 128, 160)
    outs = model(x)
    assert [o.shape[1:] for o in outs] == [(c, 128 // r, 160 // r) for c, r in
                                           zip(model.feature_info.channels(), model.feature_info.reduction())]
    model = timm.create_model(f'metalayers_{name}', features_only=True, out_indices=(1, 3)).eval()
    assert [o.shape[1] for o in model(x)] == [ref.feature_info.channels()[i] for i in (1, 3)]


def test_forward_intermediates_and_prune():
    model = timm.create_model('metalayers_mobilenetv3_small_050').eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]
        taps = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True, stop_early=True)
        torch.testing.assert_close(taps, inter[1:3])
        kept = model.prune_intermediate_layers([2])
        assert kept == [2] and model.num_features == 16 and model.head_hidden_size == 16
        torch.testing.assert_close(model.forward_features(x), inter[2])
        assert model(x).shape == inter[2].shape  # the head went with the pruned stages
        model.reset_classifier(5, 'avg')
        assert model(x).shape == (1, 5)


def test_grad_checkpointing_same_output():
    model = timm.create_model('metalayers_mobilenetv3_small_050', drop_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    expected = model(x)
    model.set_grad_checkpointing()
    torch.manual_seed(0)
    out = model(x)
    out.mean().backward()
    torch.testing.assert_close(out, expected)
    final, inter = model.forward_intermediates(x)
    (final.mean() + sum(t.mean() for t in inter)).backward()


# ------------------------------------------------------------------------------------------------ head API

def test_reset_classifier_keeps_hidden_layer():
    model = timm.create_model('metalayers_mobilenetv3_small_050').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        hidden = model.head.hidden.weight.clone()
        model.reset_classifier(10)
        assert model.num_classes == 10 and model.get_classifier().out_features == 10
        assert model(x).shape == (2, 10)
        torch.testing.assert_close(model.head.hidden.weight, hidden)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pre)

        model.reset_classifier(0, '')
        assert model(x).shape == (2, 1024, 2, 2)
        torch.testing.assert_close(model.head.hidden.weight.flatten(1), hidden)
        model.reset_classifier(3, 'avg')
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pre)
        model.reset_classifier(4)  # keeps the pool
        assert model.head.global_pool.pool_type == 'avg' and model(x).shape == (2, 4)
    with pytest.raises(HeadResetError, match='pooled width'):
        model.reset_classifier(5, 'catavgmax')
    assert isinstance(HeadResetError(), AssertionError) and isinstance(HeadResetError(), ValueError)
    assert model(x).shape == (2, 4)  # unchanged by the refused reset


def test_reset_classifier_keeps_frozen_and_mode():
    model = timm.create_model('metalayers_mobilenetv3_small_050').eval().requires_grad_(False)
    model.reset_classifier(0, '')
    model.reset_classifier(3, 'avg')
    assert not model.head.hidden.weight.requires_grad and not model.head.training


def test_api_contract():
    model = timm.create_model('metalayers_mobilenetv3_small_050')
    assert model.group_matcher() == dict(stem=r'^stem', blocks=r'^stages\.(\d+)\.(\d+)')
    assert model.group_matcher(coarse=True)['blocks'] == r'^stages\.(\d+)'
    assert model.no_weight_decay() == set()
    assert model.pretrained_cfg['classifier'] == 'head.fc' and model.in_chans == 3
    with pytest.raises(TypeError):
        timm.create_model('metalayers_mobilenetv3_small_050', not_a_model_arg=1)
    model = timm.create_model('metalayers_mobilenetv3_small_050', device='meta', dtype=torch.float64)
    assert all(t.device.type == 'meta' for t in model.state_dict().values())
    assert model.head.hidden.weight.dtype == torch.float64


# ------------------------------------------------------------------------------------------------ builder

def test_builder_custom_table():
    table = [(3, 16, 1, 2, 1, 4, 'relu'), (3, 24, 4, 2, 2, None, 'hard_swish'), (5, 32, 3, 2, 1, 4, 'hard_swish')]
    model = mobilenetv3(table, 1.0, hidden_planes=256, num_classes=3).eval()
    assert isinstance(model, MobileNetV3)
    assert [len(s) for s in model.stages] == [1, 2, 1, 3]  # + the final conv_norm stage (3 modules)
    assert model.num_features == 96 and model.head_hidden_size == 256
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    wide = mobilenetv3('small', 1.25, num_classes=0)
    assert wide.stem[0].out_channels == 24 and wide.num_features == 720


def test_builder_errors():
    with pytest.raises(ValueError, match='hidden_planes'):
        mobilenetv3([(3, 16, 1, 2, 1, None, 'relu')])
    with pytest.raises(ValueError, match='config_table'):
        mobilenetv3('medium')
    with pytest.raises(ValueError, match='row 0'):
        mobilenetv3([(3, 16, 1, 2)], hidden_planes=64)
    with pytest.raises(ValueError, match='width_mult'):
        mobilenetv3('small', 0)
    with pytest.raises(ValueError, match='drop_path_rate'):
        mobilenetv3('small', drop_path_rate=2.0)
    with pytest.raises(ValueError, match='global_pool'):
        mobilenetv3('small', global_pool='mean')
