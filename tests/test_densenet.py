"""DenseNet: parity with timm's twins through the checkpoint filter, the builder's options, wiring and errors."""
import pytest
import timm
import torch
from torch import nn

from twin_checks import (assert_adapts_in_chans_and_head, assert_filter_rejects, assert_logits_close, assert_twin,
                         assert_meta_mapping, assert_tags_are_timms, ours_from_file, timm_checkpoint)
from timm_metalayers.models.densenet import DenseBottleneck, checkpoint_filter_fn, dense_bottleneck, densenet

ARCHS = ['densenet121', 'densenet161', 'densenet169', 'densenet201']


@pytest.fixture(scope='module')
def densenet121_file(tmp_path_factory):
    return timm_checkpoint('densenet121', tmp_path_factory.mktemp('densenet'))


def test_parity_with_timm_through_filter(densenet121_file):
    ref, path = densenet121_file
    assert_twin('densenet121', ref, path, (64, 64), (80, 48))


@pytest.mark.parametrize('arch', ARCHS[1:])
def test_big_variants_map_every_key_on_meta(arch):
    assert_meta_mapping(arch, checkpoint_filter_fn)


def test_densenet161_parity_at_minimum_size(tmp_path):
    ref, path = timm_checkpoint('densenet161', tmp_path)
    assert_logits_close(ours_from_file('densenet161', path), ref, (32, 32), batch=1)


def test_pretrained_tags_are_timms():
    assert_tags_are_timms(ARCHS)


def test_pretrained_adapts_in_chans_head_and_features(densenet121_file):
    _, path = densenet121_file
    kw = dict(pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert_adapts_in_chans_and_head('densenet121', path)
    ours_feats = timm.create_model('metalayers_densenet121', features_only=True, **kw).eval()
    ref_feats = timm.create_model('densenet121', features_only=True, **kw).eval()
    assert ours_feats.feature_info.channels() == ref_feats.feature_info.channels() == [64, 256, 512, 1024, 1024]
    assert ours_feats.feature_info.reduction() == ref_feats.feature_info.reduction()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours_feats(x), ref_feats(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_filter_names_broken_keys(densenet121_file):
    ref, _ = densenet121_file
    assert_filter_rejects(checkpoint_filter_fn, timm.create_model('metalayers_densenet121'), ref.state_dict(),
                          missing=['features.denseblock2.denselayer3.norm2.weight'],
                          extra=['features.denseblock9.denselayer1.conv1.weight'],
                          wrong={'features.transition1.conv.weight': (64, 256, 1, 1)},
                          names=[r'denseblock2\.2\.branch\.2\.weight',
                                 r'features\.denseblock9\.denselayer1\.conv1\.weight', r'transition1\.1\.weight'])


def test_dense_bottleneck_is_pre_activation_and_concatenates():
    layer = dense_bottleneck(16, 8).eval()
    assert isinstance(layer, DenseBottleneck)
    kinds = [type(m).__name__ for m in layer.branch]
    assert kinds == ['BatchNormAct2d', 'Conv2d', 'BatchNormAct2d', 'Conv2d']
    assert layer.branch[1].out_channels == 32 and layer.branch[3].out_channels == 8
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = layer(x)
        assert y.shape == (2, 24, 8, 8)
        torch.testing.assert_close(y[:, :16], x)  # the input passes through, the new maps are appended
        bn = layer.branch[0]
        pre = torch.relu(nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias))
        torch.testing.assert_close(layer.branch[0](x), pre)  # norm then act, before the conv


def test_act_and_norm_layer_reach_every_norm():
    model = densenet(8, (2, 2), num_init_features=16, act_layer='silu', norm_layer='groupnorm1', num_classes=3)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1 + 4 * 2 + 1 + 1  # stem, 2 per layer, transition, final
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d)) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == len(norms)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_regularisers_keep_keys_and_train():
    plain = timm.create_model('metalayers_densenet121')
    model = timm.create_model('metalayers_densenet121', drop_rate=0.2, proj_drop_rate=0.1, global_pool='catavgmax',
                              num_classes=4)
    assert [k for k in model.state_dict() if not k.startswith('head.')] == \
        [k for k in plain.state_dict() if not k.startswith('head.')]
    assert model.head.fc.in_features == 2048 and model.head.drop.p == 0.2
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.1 for m in model.modules()) == 58
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_builder_options_and_errors():
    model = densenet(12, (2, 3, 2), num_init_features=24, reduction=0.25, expansion=2, num_classes=5).eval()
    assert model.transition1[1].out_channels == int((24 + 24) * 0.25)
    assert model.denseblock1[0].branch[1].out_channels == 24
    assert model.feature_info[-1]['num_chs'] == model.num_features
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ValueError, match='reduction'):
        densenet(12, (2, 2), reduction=1.5)
    with pytest.raises(ValueError, match=r'block_config\[1\]'):
        densenet(12, (2, 0))
    with pytest.raises(ValueError, match='block_config'):
        densenet(12, ())
    with pytest.raises(ValueError, match='norm_layer=None'):
        densenet(12, (2, 2), norm_layer=None)
    with pytest.raises(ValueError, match='growth_rate'):
        densenet(0, (2, 2))
