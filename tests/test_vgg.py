"""VGG with and without batch norm: parity with timm's twins (conv pre-logits mapped onto ``pre_logits``),
timm's head semantics, the builder's options, wiring and errors."""
import pytest
import timm
import torch
from torch import nn

from twin_checks import (assert_adapts_in_chans_and_head, assert_filter_rejects, assert_logits_close, assert_twin,
                         assert_meta_mapping, assert_tags_are_timms, ours_from_file, timm_checkpoint)
from timm_metalayers.models.vgg import ConvMlp, checkpoint_filter_fn, vgg

ARCHS = [f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')]
SLIM = dict(mlp_ratio=1 / 64)  # timm's argument: a 64-wide 7x7 pre-logits conv keeps the test files small


def test_parity_full_size_pre_logits(tmp_path):
    ref, path = timm_checkpoint('vgg11_bn', tmp_path)
    # at 256: an 8x8 map, the 7x7 conv slides, then the pool
    assert_twin('vgg11_bn', ref, path, (64, 64), (256, 256))


@pytest.mark.parametrize('arch', ARCHS)
def test_parity_with_timm_through_filter(arch, tmp_path):
    ref, path = timm_checkpoint(arch, tmp_path, **SLIM)
    ours = ours_from_file(arch, path, **SLIM)
    assert_logits_close(ours, ref, (32, 32))  # the minimum: a 1x1 map, pooled up to the 7x7 kernel


@pytest.mark.parametrize('arch', ARCHS)
def test_every_key_maps_on_meta(arch):
    mapped = assert_meta_mapping(arch, checkpoint_filter_fn)
    assert mapped['pre_logits.fc1.0.weight'].shape == (4096, 512, 7, 7)


def test_pretrained_tags_are_timms():
    assert_tags_are_timms(ARCHS, first_conv='stage1.0')


def test_pretrained_adapts_in_chans_head_and_features(tmp_path):
    _, path = timm_checkpoint('vgg11_bn', tmp_path, **SLIM)
    kw = dict(pretrained=True, pretrained_cfg_overlay=dict(file=path), **SLIM)
    assert_adapts_in_chans_and_head('vgg11_bn', path, size=32, **SLIM)
    ours_feats = timm.create_model('metalayers_vgg11_bn', features_only=True, **kw).eval()
    ref_feats = timm.create_model('vgg11_bn', features_only=True, **kw).eval()
    assert ours_feats.feature_info.channels() == ref_feats.feature_info.channels()
    assert ours_feats.feature_info.reduction() == ref_feats.feature_info.reduction()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours_feats(x), ref_feats(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_filter_names_broken_keys():
    assert_filter_rejects(checkpoint_filter_fn, timm.create_model('metalayers_vgg11_bn', device='meta'),
                          timm.create_model('vgg11_bn', device='meta').state_dict(),
                          missing=['features.5.running_mean', 'pre_logits.fc2.bias'], extra=['features.99.weight'],
                          names=[r'stage2\.1\.running_mean', r'pre_logits\.fc2\.0\.bias', r'features\.99\.weight'])


def test_head_semantics_as_timms_vgg():
    model = timm.create_model('metalayers_vgg11', **SLIM).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.num_features == 512 and model.head_hidden_size == 4096
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 2, 2)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 4096)
        torch.testing.assert_close(pre, model.pre_logits(feats).mean((2, 3)))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, '')
        assert model(x).shape == (2, 4096, 1, 1)  # the pre-logits conv's map, unpooled
        model.reset_classifier(10, 'max')
        assert model(x).shape == (2, 10)
    headless = timm.create_model('metalayers_vgg11', num_classes=0, **SLIM).eval()
    headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('head.fc')})
    with torch.no_grad():
        torch.testing.assert_close(headless(x), pre)


def test_prune_removes_the_pre_logits():
    model = timm.create_model('metalayers_vgg11', **SLIM).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        assert [t.shape[1] for t in taps] == [64, 128, 256, 512, 512, 512]
        assert [t.shape[-1] for t in taps] == [64, 32, 16, 8, 4, 2]
        assert model.prune_intermediate_layers([2]) == [2]
        assert isinstance(model.pre_logits, nn.Identity)
        torch.testing.assert_close(model(x), taps[2])
        model.reset_classifier(5, 'avg')
        assert model(x).shape == (1, 5)
    kept = timm.create_model('metalayers_vgg11', **SLIM)
    kept.prune_intermediate_layers(5, prune_head=False)
    assert isinstance(kept.pre_logits, ConvMlp) and kept.head.fc.in_features == 4096


def test_act_norm_and_regularisers():
    model = vgg(11, batchnorm=True, act_layer='silu', norm_layer='groupnorm1', drop_rate=0.3, global_pool='max',
                fcsize=64, num_classes=3)
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d)) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 8 + 2
    assert model.pre_logits.drop.p == 0.3 and model.head.drop.p == 0.3
    plain = vgg(11, batchnorm=True, act_layer='silu', norm_layer='groupnorm1', fcsize=64, num_classes=3)
    assert list(model.state_dict()) == list(plain.state_dict())
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(isinstance(m, nn.GroupNorm) for m in vgg(11, norm_layer='groupnorm1', fcsize=64).modules())


def test_builder_options_and_errors():
    model = vgg([(16, 1), (32, 2), (64, 1)], batchnorm=True, fcsize=32, num_classes=4).eval()
    assert model.num_features == 64 and model.feature_info[-1]['reduction'] == 8
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 4)
    with pytest.raises(ValueError, match='depth_or_config=12'):
        vgg(12)
    with pytest.raises(ValueError, match=r'config\[1\]'):
        vgg([(16, 1), (32,)])
    with pytest.raises(ValueError, match='at most 5 stages'):
        vgg([(8, 1)] * 6)
    with pytest.raises(ValueError, match='mlp_ratio'):
        vgg(11, mlp_ratio=0)
    with pytest.raises(TypeError, match='batchnorm'):
        vgg(11, batchnorm='yes')
