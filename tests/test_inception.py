"""Inception family: parity with timm's models through the checkpoint filters, the timm API and argument wiring.

The models are large for a CPU test run, so timm's reference models are built once per module, every
forward is batch 1, and structure-only checks build on the meta device.
"""
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import timm_metalayers  # noqa: F401  (registers the models)
from random_weights import randomize_weights
from timm_metalayers.layers import StochasticDepth, linear_scheduler
from timm_metalayers.models import inception_resnet_v2 as irv2_module
from timm_metalayers.models import inception_v3 as v3_module
from timm_metalayers.models import inception_v4 as v4_module
from timm_metalayers.state_dict import CheckpointMismatchError

MODELS = {
    # ours: (timm's architecture, the tag the parity test loads through, stage widths)
    'metalayers_inception_v3': ('inception_v3', 'tf_in1k', (64, 192, 288, 768, 2048)),
    'metalayers_inception_v4': ('inception_v4', 'tf_in1k', (64, 160, 384, 1024, 1536)),
    'metalayers_inception_resnet_v2': ('inception_resnet_v2', 'tf_in1k', (64, 192, 320, 1088, 1536)),
}
TAGS = {
    'metalayers_inception_v3': ('tv_in1k', 'tf_in1k', 'gluon_in1k'),
    'metalayers_inception_v4': ('tf_in1k',),
    'metalayers_inception_resnet_v2': ('tf_in1k',),
}
# feature map sides at 299x299 (valid padding): strides 2, 4, 8, 16, 32
FEATURE_SIDES = {
    'metalayers_inception_v3': (147, 71, 35, 17, 8),
    'metalayers_inception_v4': (147, 73, 35, 17, 8),
    'metalayers_inception_resnet_v2': (147, 71, 35, 17, 8),
}
OTHER_SIZE = (128, 160)  # (H, W), not square


def _save(model: nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _ours(name: str, file: str, tag: str, **kwargs) -> nn.Module:
    return timm.create_model(f'{name}.{tag}', pretrained=True, pretrained_cfg_overlay=dict(file=file), **kwargs).eval()


@pytest.fixture(scope='module')
def timm_weights(tmp_path_factory):
    """timm's model (random weights) and its state dict as safetensors, per architecture, built once.

    timm's Inception-v3 is built with its auxiliary classifier, as torchvision's weights (tv_in1k) have it;
    ``ref.aux_logits`` switches it off for the comparisons without one."""
    cache = {}

    def get(name):
        if name not in cache:
            kwargs = dict(aux_logits=True) if name == 'metalayers_inception_v3' else {}
            ref = randomize_weights(timm.create_model(MODELS[name][0], **kwargs), gain=2.0)
            cache[name] = ref, _save(ref, tmp_path_factory.mktemp('weights') / f'{MODELS[name][0]}.safetensors')
        return cache[name]
    return get


@pytest.fixture(scope='module')
def loaded(timm_weights):
    """Our model loaded from timm's weights through ``pretrained_cfg_overlay=dict(file=...)``, built once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _ours(name, timm_weights(name)[1], MODELS[name][1])
        return cache[name]
    return get


@pytest.mark.parametrize('name', list(MODELS))
def test_logits_match_timm(name, timm_weights, loaded):
    ref, _ = timm_weights(name)
    ours = loaded(name)
    ref.aux_logits = False  # timm's v3 runs its auxiliary classifier only when asked
    torch.manual_seed(0)
    with torch.no_grad():
        for size in ((299, 299), OTHER_SIZE):
            x = torch.randn(1, 3, *size)
            expected, actual = ref(x), ours(x)
            assert actual.shape == expected.shape == (1, 1000)
            assert expected.abs().max() > 1e-2  # the comparison means something
            assert (actual - expected).abs().max().item() <= 1e-4, f'{name} at {size}'


def test_inception_v3_aux_logits_match_torchvision_weights(timm_weights):
    """tv_in1k carries the auxiliary classifier: both outputs match timm's model with aux_logits=True."""
    ref, file = timm_weights('metalayers_inception_v3')
    ours = _ours('metalayers_inception_v3', file, 'tv_in1k', aux_logits=True)
    ref.aux_logits = True
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        (logits, aux), (ref_logits, ref_aux) = ours(x), ref(x)
    assert aux.shape == logits.shape == (1, 1000)
    assert (logits - ref_logits).abs().max() <= 1e-4
    assert (aux - ref_aux).abs().max() <= 1e-4


def test_inception_v3_aux_head_kept_when_checkpoint_has_none(timm_weights):
    """The filter drops the checkpoint's auxiliary classifier for a model without one; a model with one
    keeps its own where the checkpoint has none (TF / Gluon weights) or has one for other classes."""
    ref, file = timm_weights('metalayers_inception_v3')
    sd = load_file(file)
    plain = timm.create_model('metalayers_inception_v3', device='meta')
    assert set(v3_module.checkpoint_filter_fn(sd, plain)) == set(plain.state_dict())

    with_aux = timm.create_model('metalayers_inception_v3', aux_logits=True, num_classes=10, device='meta')
    own = with_aux.state_dict()
    no_aux = {k: v for k, v in sd.items() if not k.startswith('AuxLogits.')}
    for checkpoint in (no_aux, sd):
        mapped = v3_module.checkpoint_filter_fn(checkpoint, with_aux)
        assert set(k for k in mapped if k in own) == set(own)
        assert mapped['aux_head.fc.weight'].shape == (10, 768)  # its own (the checkpoint's is for 1000)
        assert mapped['stages.4.2.branch3.1.0.weight'] is sd['Mixed_7c.branch_pool.conv.weight']
    assert mapped['aux_head.conv1.0.weight'] is sd['AuxLogits.conv1.conv.weight']


def test_checkpoint_in_our_naming_loads_unchanged(loaded):
    from timm_metalayers.models.inception_resnet_v2 import checkpoint_filter_fn
    model = loaded('metalayers_inception_resnet_v2')
    own = model.state_dict()
    out = checkpoint_filter_fn(dict(own), model)
    assert list(out) == list(own)
    assert all(out[k] is own[k] for k in own)


def test_broken_checkpoint_names_the_keys(timm_weights, tmp_path):
    _, file = timm_weights('metalayers_inception_v3')
    sd = load_file(file)
    del sd['Mixed_6b.branch7x7_2.bn.running_var']
    sd['Mixed_5b.branch_extra.conv.weight'] = sd.pop('Mixed_5b.branch_pool.conv.weight')
    sd['Mixed_7a.branch3x3_2.conv.weight'] = torch.zeros(320, 192, 1, 1)
    with pytest.raises(CheckpointMismatchError) as info:  # through timm's loader: not a TypeError it retries
        _ours('metalayers_inception_v3', _save_dict(sd, tmp_path / 'broken.safetensors'), 'tf_in1k')
    message = str(info.value)
    assert 'Mixed_5b.branch_extra.conv.weight' in message  # no place in the model
    assert 'stages.3.1.branch1.1.1.running_var' in message  # not provided
    assert 'stages.2.1.branch3.1.0.weight' in message
    assert 'stages.4.0.branch0.1.0.weight' in message and '(320, 192, 1, 1)' in message  # wrong shape
    # the same checks for the other two filters, on timm's key layout (meta tensors: names and shapes only)
    for module, arch, missing, extra in (
            (v4_module, 'inception_v4', 'features.19.branch2_3b.bn.weight', 'features.22.conv.weight'),
            (irv2_module, 'inception_resnet_v2', 'repeat_1.7.conv2d.bias', 'repeat.10.conv2d.weight')):
        sd = timm.create_model(arch, device='meta').state_dict()
        sd[extra] = sd.pop(missing)
        with pytest.raises(CheckpointMismatchError) as info:
            module.checkpoint_filter_fn(sd, timm.create_model(f'metalayers_{arch}', device='meta'))
        assert extra in str(info.value)
        assert module._timm_to_ours(missing) in str(info.value)


def _save_dict(sd, path) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def test_pretrained_adapts_in_chans_head_and_features_only(timm_weights):
    """What timm's (network-bound) test_model_load_pretrained / test_model_features_pretrained check, offline."""
    ref, file = timm_weights('metalayers_inception_v3')
    model = _ours('metalayers_inception_v3', file, 'tf_in1k', in_chans=1, num_classes=5)
    first = model.stages[0][0][0].weight
    assert first.shape == (32, 1, 3, 3)
    torch.testing.assert_close(first, ref.Conv2d_1a_3x3.conv.weight.sum(dim=1, keepdim=True))
    assert model.head.fc.out_features == 5
    with torch.no_grad():
        assert model(torch.randn(1, 1, *OTHER_SIZE)).shape == (1, 5)

    features = timm.create_model('metalayers_inception_v3.tf_in1k', pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=dict(file=file))
    assert torch.equal(features.model.stages[4][2].branch3[1][0].weight, ref.Mixed_7c.branch_pool.conv.weight)


@pytest.mark.parametrize('name', list(MODELS))
def test_pretrained_tags_point_at_timm_hub(name):
    arch = MODELS[name][0]
    assert timm.list_pretrained(f'{name}.*') == sorted(f'{name}.{t}' for t in TAGS[name])
    for tag in TAGS[name]:
        ours = timm.models.get_pretrained_cfg(f'{name}.{tag}').to_dict()
        theirs = timm.models.get_pretrained_cfg(f'{arch}.{tag}').to_dict()
        assert ours['hf_hub_id'] == f'timm/{arch}.{tag}'
        for key in ('num_classes', 'input_size', 'pool_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean',
                    'std', 'license', 'label_offset', 'fixed_input_size'):
            assert ours.get(key) == theirs.get(key), (tag, key)
        assert ours['min_input_size'] == (3, 107, 107)  # ours only: where every feature level is still sound
        assert (ours['first_conv'], ours['classifier']) == ('stages.0.0.0', 'head.fc')
    model = timm.create_model(name, device='meta')
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg['input_size'] == (3, 299, 299) and cfg['interpolation'] == 'bicubic'


@pytest.mark.parametrize('name', list(MODELS))
def test_head_wiring_and_keys(name):
    base = timm.create_model(name, device='meta')
    keys = list(base.state_dict())
    assert base.num_features == base.head_hidden_size == MODELS[name][2][-1]
    assert not any(isinstance(m, nn.Dropout) for m in base.modules())

    dropped = timm.create_model(name, drop_rate=0.3, global_pool='max', device='meta')
    assert isinstance(dropped.head.drop, nn.Dropout) and dropped.head.drop.p == 0.3
    assert dropped.head.global_pool.pool_type == 'max'
    assert list(dropped.state_dict()) == keys

    cat = timm.create_model(name, global_pool='catavgmax', device='meta')
    assert cat.head_hidden_size == 2 * cat.num_features and cat.head.fc.in_features == 2 * cat.num_features
    x = torch.randn(1, 3, 299, 299, device='meta')
    assert cat(x).shape == (1, 1000)
    assert cat.forward_head(cat.forward_features(x), pre_logits=True).shape == (1, 2 * cat.num_features)

    headless = timm.create_model(name, num_classes=0, device='meta')
    assert headless(x).shape == (1, headless.num_features)
    assert timm.create_model(name, num_classes=0, global_pool='', device='meta')(x).shape[-2:] == (8, 8)
    assert timm.create_model(name, num_classes=7, device='meta')(x).shape == (1, 7)


@pytest.mark.parametrize('name', list(MODELS))
def test_reset_classifier(name):
    model = timm.create_model(name, global_pool='avgmax', device='meta')
    x = torch.randn(1, 3, 299, 299, device='meta')
    model.reset_classifier(10)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    assert model.head.global_pool.pool_type == 'avgmax'  # the pooling is kept
    assert model(x).shape == (1, 10)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(0, '')
    assert model(x).shape == (1, model.num_features, 8, 8)
    model.reset_classifier(5, 'avg')
    assert model(x).shape == (1, 5)


def test_inception_v3_aux_logits_wiring():
    model = timm.create_model('metalayers_inception_v3', aux_logits=True, num_classes=12, device='meta')
    x = torch.randn(2, 3, 299, 299, device='meta')
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 12)
    model.reset_classifier(3)
    assert [o.shape for o in model(x)] == [(2, 3), (2, 3)]
    assert timm.create_model('metalayers_inception_v3', device='meta').aux_head is None
    model.prune_intermediate_layers([2])
    assert model.aux_head is None and model(x).shape == (2, 288, 35, 35)
    with pytest.raises(ValueError, match='aux_logits'):
        timm.create_model('metalayers_inception_v3', aux_logits=True, features_only=True)


def test_drop_path_rate_schedules_stochastic_depth():
    model = timm.create_model('metalayers_inception_resnet_v2', drop_path_rate=0.2, device='meta')
    probs = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert probs == linear_scheduler(0.2, depth=40)
    plain = timm.create_model('metalayers_inception_resnet_v2', device='meta')
    assert list(plain.state_dict()) == list(model.state_dict())
    for name in ('metalayers_inception_v3', 'metalayers_inception_v4'):  # no residual blocks, as timm
        with pytest.raises(TypeError):
            timm.create_model(name, drop_path_rate=0.1, device='meta')


def test_act_and_norm_layer_reach_every_conv_block():
    model = timm.create_model('metalayers_inception_v4', act_layer='silu', device='meta')
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules())
    default = timm.create_model('metalayers_inception_v4', device='meta')
    assert {m.eps for m in default.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    gn = timm.create_model('metalayers_inception_v4', norm_layer=lambda c: nn.GroupNorm(1, c), device='meta')
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    buffers = ('running_mean', 'running_var', 'num_batches_tracked')
    assert list(gn.state_dict()) == [k for k in default.state_dict() if not k.endswith(buffers)]


@pytest.mark.parametrize('name', list(MODELS))
def test_features_only(name):
    model = timm.create_model(name, features_only=True, device='meta')
    assert model.feature_info.channels() == list(MODELS[name][2])
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    outs = model(torch.randn(1, 3, 299, 299, device='meta'))
    assert [tuple(o.shape[1:]) for o in outs] == [(c, s, s) for c, s in zip(MODELS[name][2], FEATURE_SIDES[name])]

    picked = timm.create_model(name, features_only=True, out_indices=(1, 3), device='meta')
    assert picked.feature_info.channels() == [MODELS[name][2][1], MODELS[name][2][3]]
    assert [o.shape[-1] for o in picked(torch.randn(1, 3, 299, 299, device='meta'))] == \
        [FEATURE_SIDES[name][1], FEATURE_SIDES[name][3]]


@pytest.mark.parametrize('name', list(MODELS))
def test_forward_intermediates_and_pruning(name):
    model = timm.create_model(name, device='meta')
    x = torch.randn(1, 3, 299, 299, device='meta')
    final, inter = model.forward_intermediates(x)
    assert final.shape == (1, MODELS[name][2][-1], 8, 8)
    assert [o.shape[-1] for o in inter] == list(FEATURE_SIDES[name])
    assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    kept = model.prune_intermediate_layers([1])
    assert kept == [1] and len(model.stages) == 2
    assert model.num_features == model.head_hidden_size == MODELS[name][2][1]
    assert model(x).shape == (1, MODELS[name][2][1], FEATURE_SIDES[name][1], FEATURE_SIDES[name][1])


@pytest.mark.parametrize('name', list(MODELS))
def test_group_matcher_and_no_weight_decay(name):
    from timm.models._manipulate import group_parameters
    model = timm.create_model(name, device='meta')
    groups = group_parameters(model, model.group_matcher())
    assert len(groups) > 10 and any(n.startswith('stages.0.') for n in groups[0])
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 6  # stem, four stages, head
    assert model.no_weight_decay() == set()
