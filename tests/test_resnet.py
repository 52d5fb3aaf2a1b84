"""ResNet family: parity with timm through the checkpoint filter, argument wiring, timm's model API."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import timm_metalayers  # noqa: F401  (registers the models)
from random_weights import randomize_weights
from twin_checks import assert_create_model_refuses, assert_filter_rejects
from timm_metalayers.layers import AdaptiveMeanMaxPool, DropBlock, StochasticDepth, linear_scheduler
from timm_metalayers.state_dict import CheckpointMismatchError
from timm_metalayers.models.resnet import ResNet, basicblock, bottleneck, checkpoint_filter_fn, resnet

ARCHS = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnet50d', 'resnext50_32x4d',
         'resnext101_32x8d', 'wide_resnet50_2', 'wide_resnet101_2', 'seresnet50']
DEPTHS = {'resnet18': 8, 'resnet34': 16, 'resnet50': 16, 'resnet101': 33, 'resnet152': 50}


def _timm_checkpoint(arch: str, tmp_path, **kwargs):
    ref = randomize_weights(timm.create_model(arch, **kwargs))
    path = tmp_path / f'{arch}.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, str(path)


def _ours(arch: str, path: str, **kwargs) -> nn.Module:
    return timm.create_model(f'metalayers_{arch}', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


@pytest.mark.parametrize('arch', ARCHS)
def test_parity_with_timm_through_filter(arch, tmp_path):
    ref, path = _timm_checkpoint(arch, tmp_path)
    ours = _ours(arch, path)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    with torch.no_grad():
        for size in ((64, 64), (96, 80)):
            x = torch.randn(2, 3, *size)
            expected = ref(x)
            got = ours(x)
            assert got.shape == expected.shape == (2, 1000)
            assert (got - expected).abs().max().item() <= 1e-4, size
            torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50d', 'seresnet50'])
def test_pretrained_adapts_in_chans_and_head(arch, tmp_path):
    ref, path = _timm_checkpoint(arch, tmp_path)
    ref1 = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1,
                             num_classes=0).eval()
    ours1 = _ours(arch, path, in_chans=1, num_classes=0)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours1(x), ref1(x), rtol=1e-4, atol=1e-4)
    ours5 = _ours(arch, path, in_chans=1, num_classes=5)
    assert ours5(x).shape == (1, 5)
    # the backbone was loaded even though the head is new
    torch.testing.assert_close(ours5.stem[0].weight, ours1.stem[0].weight)
    feats = timm.create_model(f'metalayers_{arch}', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                              features_only=True).eval()
    with torch.no_grad():
        ref_feats = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path),
                                      features_only=True).eval()(torch.randn(1, 3, 64, 64).fill_(0.5))
        got = feats(torch.randn(1, 3, 64, 64).fill_(0.5))
    for a, b in zip(got, ref_feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_filter_rejects_broken_checkpoints(tmp_path):
    model = timm.create_model('metalayers_resnet18')
    sd = timm.create_model('resnet18').state_dict()
    assert_filter_rejects(checkpoint_filter_fn, model, sd,
                          missing=['layer2.1.bn1.weight'], extra=['layer9.0.conv1.weight'],
                          wrong={'layer3.0.conv2.weight': (256, 256, 1, 1)},
                          names=[r'layer2\.1\.conv1\.1\.weight', r'layer9\.0\.conv1\.weight',
                                 r'layer3\.0\.conv2\.0\.weight.*\(256, 256, 1, 1\)'])

    # another architecture's checkpoint
    with pytest.raises(CheckpointMismatchError):
        checkpoint_filter_fn(timm.create_model('resnet50').state_dict(), model)

    assert_create_model_refuses('metalayers_resnet18', sd, tmp_path, drop_prefix='layer2.1.bn1.weight',
                                match='does not provide')


def test_our_naming_loads_unchanged():
    model = timm.create_model('metalayers_resnet18')
    sd = model.state_dict()
    out = checkpoint_filter_fn(sd, model)
    assert list(out) == list(sd)
    assert all(out[k] is sd[k] for k in sd)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_drop_path_rate_schedules_stochastic_depth(arch):
    depth = DEPTHS[arch]
    model = timm.create_model(f'metalayers_{arch}', drop_path_rate=0.2)
    probs = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    schedule = linear_scheduler(0.2, depth=depth)
    assert schedule[0] == 0.0  # the first block keeps its branch: no module at all
    assert probs == pytest.approx(schedule[1:])
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            assert block.drop_path.__class__ in (StochasticDepth, nn.Identity)
            assert block.drop_path is not None and all(m.mode == 'row' for m in block.modules()
                                                       if isinstance(m, StochasticDepth))
    assert not any(isinstance(m, StochasticDepth) for m in timm.create_model(f'metalayers_{arch}').modules())


def test_drop_block_rate_places_dropblock_in_stages_3_and_4():
    model = timm.create_model('metalayers_resnet50', drop_block_rate=0.1)
    schedule = linear_scheduler(0.1, depth=16)
    found = {}
    block_idx = 0
    for stage_idx, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for block in stage:
            if isinstance(block.drop_block, DropBlock):
                found[block_idx] = block.drop_block
                assert stage_idx in (2, 3)
                assert block.drop_block.block_size == (5 if stage_idx == 2 else 3)
                assert block.drop_block.gamma_scale == (0.25 if stage_idx == 2 else 1.0)
                assert block.drop_block.couple_channels  # as timm's ResNet
                assert block.drop_block.drop_block_prob == pytest.approx(schedule[block_idx])
            else:
                assert stage_idx in (0, 1)
            block_idx += 1
    assert sorted(found) == list(range(7, 16))
    for rate in (0.0, None):
        assert not any(isinstance(m, DropBlock)
                       for m in timm.create_model('metalayers_resnet50', drop_block_rate=rate).modules())


def test_drop_block_couple_channels_option():
    model = timm.create_model('metalayers_resnet18', drop_block_rate=0.2, drop_block_couple_channels=False)
    blocks = [m for m in model.modules() if isinstance(m, DropBlock)]
    assert blocks and not any(b.couple_channels for b in blocks)
    with pytest.raises(TypeError, match=r"drop_block_couple_channels.*'no'"):
        timm.create_model('metalayers_resnet18', drop_block_rate=0.2, drop_block_couple_channels='no')


def test_drop_rate_and_global_pool_reach_create_classifier():
    model = timm.create_model('metalayers_resnet18', drop_rate=0.3, global_pool='catavgmax', num_classes=7)
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.3
    assert model.head.fc.in_features == 1024
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert 'drop' not in dict(timm.create_model('metalayers_resnet18').head.named_children())

    x = torch.randn(2, 3, 64, 64)
    base = timm.create_model('metalayers_resnet18', num_classes=0).eval()
    feats = base.forward_features(x)
    for pool, expected in (('avg', feats.mean((2, 3))), ('max', feats.amax((2, 3))),
                           ('avgmax', 0.5 * (feats.mean((2, 3)) + feats.amax((2, 3)))),
                           ('meanmax', feats.mean((2, 3)) + feats.amax((2, 3)))):
        model = timm.create_model('metalayers_resnet18', num_classes=0, global_pool=pool).eval()
        model.load_state_dict(base.state_dict())
        torch.testing.assert_close(model(x), expected)
    unpooled = timm.create_model('metalayers_resnet18', num_classes=0, global_pool='').eval()
    unpooled.load_state_dict(base.state_dict())
    assert unpooled(x).shape == feats.shape


def test_state_dict_keys_do_not_depend_on_regularisers():
    plain = timm.create_model('metalayers_resnet50')
    regularised = timm.create_model('metalayers_resnet50', drop_rate=0.2, drop_path_rate=0.1, drop_block_rate=0.1,
                                    global_pool='max')
    assert list(plain.state_dict()) == list(regularised.state_dict())
    regularised.load_state_dict(plain.state_dict())
    plain.load_state_dict(regularised.state_dict())
    meanmax = timm.create_model('metalayers_resnet50', global_pool=AdaptiveMeanMaxPool())
    assert list(meanmax.state_dict()) == list(plain.state_dict())


def test_act_and_norm_layer_reach_every_conv_norm():
    model = timm.create_model('metalayers_resnet18', act_layer='silu', norm_layer='groupnorm')
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d)) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 1 + 8 * 2
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 1 + 8 * 2 + 3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_training_step_with_all_regularisers_has_finite_gradients():
    torch.manual_seed(0)
    model = timm.create_model('metalayers_resnet50', num_classes=10, drop_rate=0.2, drop_path_rate=0.2,
                              drop_block_rate=0.2)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (2,)))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_features_only_and_feature_info():
    model = timm.create_model('metalayers_resnet50', features_only=True).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    outs = model(torch.randn(1, 3, 128, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(c, 128 // r, 96 // r) for c, r in
                                                  zip(model.feature_info.channels(), model.feature_info.reduction())]
    picked = timm.create_model('metalayers_resnet18', features_only=True, out_indices=(2, 4))
    assert picked.feature_info.channels() == [128, 512]
    assert [o.shape[1] for o in picked(torch.randn(1, 3, 64, 64))] == [128, 512]


def test_forward_intermediates_and_prune():
    model = timm.create_model('metalayers_resnet18').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape[1] for t in inter] == [64, 64, 128, 256, 512]
        torch.testing.assert_close(model.forward_intermediates(x, indices=[2], intermediates_only=True)[0], inter[2])
        nhwc = model.forward_intermediates(x, output_fmt='NHWC', intermediates_only=True)
        assert all(torch.equal(a, b.permute(0, 2, 3, 1)) for a, b in zip(nhwc, inter))
        with pytest.raises(ValueError, match="output_fmt must be one of \\('NCHW', 'NHWC'\\).*'NLC'"):
            model.forward_intermediates(x, output_fmt='NLC')
        kept = model.prune_intermediate_layers([2], prune_norm=True)
        assert kept == [2]
        torch.testing.assert_close(model.forward_features(x), inter[2])
        assert model.num_features == 128 and model(x).shape == (1, 128, 8, 8)  # pruning removes the pool too


def test_reset_classifier_and_pre_logits():
    model = timm.create_model('metalayers_resnet34', global_pool='max').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, 512)
        model.reset_classifier(5)
        assert model.num_classes == 5 and model.get_classifier().out_features == 5
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pre)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, '')
        assert model(x).shape == (2, 512, 2, 2)
    with pytest.raises(ValueError, match='num_classes'):
        model.reset_classifier(-1)


def test_pretrained_tags_point_at_timm_hub_weights():
    tags = [t for t in timm.list_pretrained('metalayers_*') if t.split('.')[0][len('metalayers_'):] in ARCHS]
    for arch in ARCHS:
        for tag in ('tv_in1k', 'a1_in1k'):
            if timm.list_pretrained(f'{arch}.{tag}') and arch not in ('resnet50d', 'seresnet50', 'wide_resnet50_2',
                                                                       'resnext101_32x8d', 'wide_resnet101_2'):
                assert f'metalayers_{arch}.{tag}' in tags
    for name in tags:
        arch, tag = name.split('.')
        ours = timm.models.get_pretrained_cfg(name)
        theirs = timm.models.get_pretrained_cfg(f'{arch[len("metalayers_"):]}.{tag}')
        assert ours.hf_hub_id == f'timm/{arch[len("metalayers_"):]}.{tag}'
        assert not ours.url
        for field in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'license', 'num_classes'):
            assert getattr(ours, field) == getattr(theirs, field), (name, field)
        assert ours.first_conv == 'stem.0' and ours.classifier == 'head.fc'
    model = timm.create_model('metalayers_resnet50.a1_in1k')
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.95


def test_guide_examples_build_in_one_call():
    # "a ResNet-50-like model with AdaptiveMeanMaxPool as the head's pool and stochastic depth 0.2"
    model = resnet(bottleneck, [3, 4, 6, 3], global_pool=AdaptiveMeanMaxPool(), drop_path_rate=0.2)
    assert isinstance(model.head.global_pool, AdaptiveMeanMaxPool)
    assert sum(isinstance(m, StochasticDepth) for m in model.modules()) == 15
    # "the same made ResNeXt-like with cardinality 32 and base width 4"
    resnext = resnet(bottleneck, [3, 4, 6, 3], cardinality=32, base_width=4)
    assert sum(p.numel() for p in resnext.parameters()) == \
        sum(p.numel() for p in timm.create_model('resnext50_32x4d').parameters())
    assert resnext(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize('shortcut_type', ['A', 'C', 'D'])
@pytest.mark.parametrize('stem_type', ['default', 'deep_tiered'])
def test_builder_options(shortcut_type, stem_type):
    model = resnet(basicblock if shortcut_type == 'A' else 'bottleneck', [1, 1, 1, 1], shortcut_type=shortcut_type,
                   stem_type=stem_type, stem_pool='conv', attn_layer='se', reduction_factor=2, head_hidden_size=32,
                   num_classes=3).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    if shortcut_type == 'C':
        assert all(isinstance(b.shortcut, nn.Sequential) for s in (model.layer1, model.layer4) for b in s)


def test_builder_rejects_bad_options():
    with pytest.raises(ValueError, match="block='resblock'"):
        resnet('resblock', [1, 1, 1, 1])
    with pytest.raises(ValueError, match='layers'):
        resnet('bottleneck', [1, 1, 1])
    with pytest.raises(ValueError, match="stem_type='wide'"):
        resnet('bottleneck', [1, 1, 1, 1], stem_type='wide')
    with pytest.raises(ValueError, match="shortcut_type='E'"):
        resnet('bottleneck', [1, 1, 1, 1], shortcut_type='E')
    with pytest.raises(ValueError, match='drop_path_rate'):
        resnet('bottleneck', [1, 1, 1, 1], drop_path_rate=1.5)
    with pytest.raises(ValueError, match='cardinality=32'):
        resnet('basicblock', [1, 1, 1, 1], cardinality=32)
    with pytest.raises(ValueError, match="global_pool|pool_layer='median'"):
        resnet('bottleneck', [1, 1, 1, 1], global_pool='median')
    with pytest.raises(TypeError):
        timm.create_model('metalayers_resnet18', not_an_arg=1)


def test_torchscript_and_grad_checkpointing():
    model = timm.create_model('metalayers_resnet18', drop_path_rate=0.1, drop_block_rate=0.1).eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model, ResNet)
