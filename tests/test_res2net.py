"""SE-ResNeXt and Res2Net / Res2NeXt from the ResNet builder: parity with timm's twins through the checkpoint
filter, the ``bottle2neck`` block's options, wiring and errors."""
import pytest
import timm
import torch
from torch import nn

from twin_checks import (assert_adapts_in_chans_and_head, assert_filter_rejects, assert_meta_mapping,
                         assert_tags_are_timms, assert_twin, ours_from_file, timm_checkpoint)
from timm_metalayers.layers import StochasticDepth, linear_scheduler
from timm_metalayers.models.resnet import MultiScaleConvs, bottle2neck, checkpoint_filter_fn, resnet

SMALL = ['seresnext50_32x4d', 'res2net50_26w_4s', 'res2net50_14w_8s', 'res2net50_26w_6s', 'res2net50_26w_8s',
         'res2net50_48w_2s', 'res2next50']
BIG = ['seresnext101_32x8d', 'res2net101_26w_4s']


@pytest.fixture(scope='module')
def res2net_file(tmp_path_factory):
    return timm_checkpoint('res2net50_26w_4s', tmp_path_factory.mktemp('res2net'))


@pytest.mark.parametrize('arch', SMALL)
def test_parity_with_timm_through_filter(arch, tmp_path):
    ref, path = timm_checkpoint(arch, tmp_path)
    assert_twin(arch, ref, path, (64, 64), *([(72, 56)] if arch == 'res2net50_26w_4s' else []))


@pytest.mark.parametrize('arch', BIG)
def test_big_variants_map_every_key_on_meta(arch):
    mapped = assert_meta_mapping(arch, checkpoint_filter_fn)
    assert any('.attn.' in k for k in mapped) == arch.startswith('se')
    assert any('.convs.' in k for k in mapped) == arch.startswith('res2')


def test_pretrained_tags_are_timms():
    assert_tags_are_timms(SMALL + BIG)


def test_pretrained_adapts_in_chans_and_head(res2net_file):
    _, path = res2net_file
    ours1 = assert_adapts_in_chans_and_head('res2net50_26w_4s', path)
    ours5 = ours_from_file('res2net50_26w_4s', path, in_chans=1, num_classes=5)
    torch.testing.assert_close(ours5.layer1[0].conv2[0].convs[0][0].weight, ours1.layer1[0].conv2[0].convs[0][0].weight)


def test_filter_names_broken_res2net_keys(res2net_file):
    ref, _ = res2net_file
    assert_filter_rejects(checkpoint_filter_fn, timm.create_model('metalayers_res2net50_26w_4s'), ref.state_dict(),
                          missing=['layer1.0.bns.1.weight'], extra=['layer1.0.convs.9.weight'],
                          wrong={'layer2.1.convs.2.weight': (3, 3, 3, 3)},
                          names=[r'layer1\.0\.conv2\.0\.convs\.1\.1\.weight', r'layer1\.0\.convs\.9\.weight',
                                 r'layer2\.1\.conv2\.0\.convs\.2\.0\.weight'])


def test_multi_scale_convs_cascade_inside_a_stage():
    model = timm.create_model('metalayers_res2net50_26w_4s')
    first, later = model.layer2[0].conv2[0], model.layer2[1].conv2[0]
    assert isinstance(first, MultiScaleConvs) and not first.cascade and isinstance(first.pool, nn.AvgPool2d)
    assert later.cascade and isinstance(later.pool, nn.Identity)
    assert len(later.convs) == 3 and later.width == 52  # scale 4: 3 convs, the 4th group passes through
    # a cascaded group sees the previous group's output: change group 0 and group 2's output changes too
    later.eval()
    x = torch.randn(1, 4 * 52, 8, 8)
    y = x.clone()
    y[:, :52] += 1.0
    with torch.no_grad():
        a, b = later(x), later(y)
    assert not torch.allclose(a[:, 104:156], b[:, 104:156])
    torch.testing.assert_close(a[:, 156:], b[:, 156:])  # the pass-through group


def test_drop_path_and_regularisers_keep_keys():
    model = timm.create_model('metalayers_res2net50_26w_4s', drop_path_rate=0.2, drop_block_rate=0.1,
                              drop_rate=0.2, global_pool='max')
    probs = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert probs == pytest.approx(linear_scheduler(0.2, depth=16)[1:])
    plain = timm.create_model('metalayers_res2net50_26w_4s')
    assert list(model.state_dict()) == list(plain.state_dict())
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_act_and_norm_layer_reach_every_conv_norm():
    model = timm.create_model('metalayers_res2next50', act_layer='silu', norm_layer=lambda c: nn.GroupNorm(4, c))
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d)) for m in model.modules())
    blocks = 16
    # per block: conv1, 3 scale convs, the block's output; plus the stem
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 1 + blocks * 5
    # per block: conv1, 3 scale convs, conv3; the 4 projection shortcuts; the stem
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 1 + blocks * 5 + 4
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize('scale', [1, 3])
def test_builder_bottle2neck_options(scale):
    model = resnet('bottle2neck', [1, 1, 1, 1], base_width=16, block_args=dict(scale=scale), attn_layer='se',
                   cardinality=2, num_classes=3).eval()
    convs = model.layer3[0].conv2[0]
    assert len(convs.convs) == max(1, scale - 1) and convs.passthrough == (scale > 1)
    assert convs.convs[0][0].groups == 2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_builder_rejects_bad_bottle2neck_options():
    with pytest.raises(TypeError, match="block_args must be a dict.*'scale'"):
        resnet('bottle2neck', [1, 1, 1, 1], block_args='scale')
    with pytest.raises(ValueError, match='scale'):
        resnet('bottle2neck', [1, 1, 1, 1], block_args=dict(scale=0))
    with pytest.raises(ValueError, match='reduction_factor=2'):
        resnet(bottle2neck, [1, 1, 1, 1], reduction_factor=2)
    with pytest.raises(TypeError, match='scale'):
        resnet('bottleneck', [1, 1, 1, 1], block_args=dict(scale=4))
    with pytest.raises(ValueError, match='bottle2neck'):
        resnet('bottle3neck', [1, 1, 1, 1])
