"""GoogLeNet, SqueezeNet and AlexNet: parity with torchvision through the checkpoint filters, the builders'
options and errors, the extended create_classifier heads, and scripts/convert_torchvision.py."""
import copy
import functools
import importlib.util
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import timm_metalayers  # noqa: F401 (registers the models)
from random_weights import randomize_weights
from twin_checks import assert_create_model_refuses, assert_filter_rejects
from timm_metalayers.hub import load_weights
from timm_metalayers.layers import create_classifier
from timm_metalayers.layers.classifier import HeadResetError
from timm_metalayers.models import googlenet as googlenet_module
from timm_metalayers.models._torchvision import TORCHVISION_TWINS, create_torchvision_twin
from timm_metalayers.models.alexnet import alexnet
from timm_metalayers.models.googlenet import googlenet_stages
from timm_metalayers.models.squeezenet import SQUEEZENET_CONFIGS, squeezenet

MODELS = ['metalayers_googlenet', 'metalayers_squeezenet1_0', 'metalayers_squeezenet1_1', 'metalayers_alexnet']
FIRST_CONV = {'metalayers_googlenet': 'stages.0.0.0', 'metalayers_squeezenet1_0': 'stem.0',
              'metalayers_squeezenet1_1': 'stem.0', 'metalayers_alexnet': 'stem.0'}
TV_FIRST_CONV = {'metalayers_googlenet': 'conv1.conv.weight', 'metalayers_squeezenet1_0': 'features.0.weight',
                 'metalayers_squeezenet1_1': 'features.0.weight', 'metalayers_alexnet': 'features.0.weight'}
SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'convert_torchvision.py'


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@functools.lru_cache(maxsize=None)
def _twin_and_file(name: str, tmp_root: str, **kwargs):
    """A torchvision twin with random weights (googlenet with its auxiliary classifiers, which the filter
    loads into a model with ``aux_logits=True`` and drops for one without) and its state dict as a safetensors
    file."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ref = randomize_weights(create_torchvision_twin(name, **kwargs), gain=2.0)
    path = f'{tmp_root}/{name}.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    return ref, path


@pytest.fixture(scope='module')
def twins(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('tv'))

    def get(name):
        return _twin_and_file(name, root, **({'aux_logits': True} if name == 'metalayers_googlenet' else {}))
    return get


def _ours(name: str, path: str, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)


# ------------------------------------------------------------------------------------------------ registry

def test_registered_without_pretrained_tags():
    assert set(timm.list_models('metalayers_googlenet')) | set(timm.list_models('metalayers_squeezenet*')) \
        | set(timm.list_models('metalayers_alexnet')) == set(MODELS)
    for name in MODELS:
        assert not timm.list_pretrained(name + '*')
        cfg = timm.get_pretrained_cfg(name)
        assert not cfg.hf_hub_id and not cfg.url and not cfg.has_weights
        assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == 'bilinear'
        assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN and cfg.std == timm.data.IMAGENET_DEFAULT_STD
        assert cfg.first_conv == FIRST_CONV[name] and cfg.classifier == 'head.fc'
        assert name in TORCHVISION_TWINS
    with pytest.raises(ValueError, match='metalayers_resnet18.*no torchvision twin'):
        create_torchvision_twin('metalayers_resnet18')


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize('name', MODELS)
def test_parity_with_torchvision(name, twins):
    ref, path = twins(name)
    ours = _ours(name, path).eval()
    ref_params = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith(('aux1.', 'aux2.')))
    assert sum(p.numel() for p in ours.parameters()) == ref_params
    for size in ((224, 224), (96, 128)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected, got = ref(x), ours(x)
        assert expected.abs().max() > 0.1  # the comparison means something
        assert (got - expected).abs().max().item() <= 1e-4, size
    assert ours.forward_features(torch.randn(1, 3, 224, 224)).shape[-2:] == ours.pretrained_cfg['pool_size']


@pytest.mark.parametrize('name', ['metalayers_squeezenet1_1', 'metalayers_googlenet'])
def test_load_weights_takes_a_torchvision_state_dict(name, twins):
    ref, _ = twins(name)
    model = timm.create_model(name).eval()
    load_weights(model, ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-4)
    own = model.state_dict()
    load_weights(timm.create_model(name), own)  # our own naming loads unchanged


@pytest.mark.parametrize('name', ['metalayers_squeezenet1_0', 'metalayers_alexnet'])
def test_pretrained_in_chans_and_num_classes(name, twins):
    ref, path = twins(name)
    model = _ours(name, path, in_chans=1, num_classes=5).eval()
    first = model.get_submodule(FIRST_CONV[name]).weight
    torch.testing.assert_close(first, ref.state_dict()[TV_FIRST_CONV[name]].sum(1, keepdim=True))
    assert model(torch.randn(2, 1, 96, 96)).shape == (2, 5)


def test_filter_names_broken_keys(twins):
    ref, _ = twins('metalayers_squeezenet1_1')
    assert_filter_rejects(lambda state, model: load_weights(model, state).state_dict(),
                          timm.create_model('metalayers_squeezenet1_1'), ref.state_dict(),
                          missing=['features.4.expand3x3.weight'], extra=['features.99.squeeze.weight'],
                          wrong={'features.6.squeeze.bias': (3,)},
                          names=['stages.0.2.expand.branch1.0.weight', 'features.99.squeeze.weight',
                                 'stages.1.1.squeeze.0.bias'])


def test_alexnet_filter_error_through_create_model(twins, tmp_path):
    ref, _ = twins('metalayers_alexnet')
    assert_create_model_refuses('metalayers_alexnet', ref.state_dict(), tmp_path, drop_prefix='classifier.4',
                                match=r'head\.hidden1\.weight')


# ------------------------------------------------------------------------------------------------ builders

def test_state_dict_keys_independent_of_regularisers_and_pool():
    for name, variants in (('metalayers_squeezenet1_1', (dict(drop_rate=0.0), dict(global_pool='max'),
                                                         dict(global_pool=''))),
                           ('metalayers_alexnet', (dict(drop_rate=0.0), dict(global_pool='max'))),
                           ('metalayers_googlenet', (dict(drop_rate=0.4), dict(global_pool='max')))):
        with torch.device('meta'):
            base = list(timm.create_model(name).state_dict())
            for kwargs in variants:
                assert list(timm.create_model(name, **kwargs).state_dict()) == base, (name, kwargs)


def test_act_and_norm_layer_reach_every_conv():
    model = squeezenet('1_1', act_layer='gelu', norm_layer=nn.BatchNorm2d)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(convs) - 1  # not the classifier
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    model = alexnet(act_layer='silu', norm_layer='batchnorm2d', num_classes=3)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 7  # five convs, two hidden layers
    model = timm.create_model('metalayers_googlenet', act_layer='silu')
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_googlenet_metalhead_options():
    plain = googlenet_stages(batchnorm=False, branch3_kernel=5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    assert plain[2][1][2][1][0].kernel_size == (5, 5)
    model = timm.create_model('metalayers_googlenet', batchnorm=False, num_classes=4).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    model = timm.create_model('metalayers_googlenet', batchnorm=False, aux_logits=True, num_classes=4).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert [o.shape for o in model(torch.randn(1, 3, 64, 64))] == [(1, 4)] * 3


# ------------------------------------------------------------------------------------------------ GoogLeNet aux

def _torchvision_googlenet_outputs(ref: nn.Module, x: torch.Tensor):
    """torchvision's ``(logits, aux_logits2, aux_logits1)``, in the model's mode (in evaluation torchvision
    returns the logits alone: the auxiliary classifiers then run on the inception 4a / 4d outputs)."""
    if ref.training:
        out = ref(x)
        assert type(out).__name__ == 'GoogLeNetOutputs'
        return tuple(out)
    taps = {}
    hooks = [ref.inception4a.register_forward_hook(lambda m, i, o: taps.__setitem__('aux1', o)),
             ref.inception4d.register_forward_hook(lambda m, i, o: taps.__setitem__('aux2', o))]
    try:
        logits = ref(x)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, ref.aux2(taps['aux2']), ref.aux1(taps['aux1'])


def _no_dropout(*models: nn.Module) -> None:
    for model in models:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0


def test_googlenet_aux_logits_parity_with_torchvision(twins):
    """aux_logits=True: the main and both auxiliary logits equal torchvision's through the filter, in
    evaluation and in training (dropout off, batch statistics), in torchvision's order."""
    ref, path = twins('metalayers_googlenet')
    ours = _ours('metalayers_googlenet', path, aux_logits=True).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = _torchvision_googlenet_outputs(ref.eval(), x), ours(x)
    assert len(got) == 3
    for a, b in zip(got, expected):
        assert b.abs().max() > 0.1 and (a - b).abs().max().item() <= 1e-4
    train_ref, train_ours = copy.deepcopy(ref).train(), copy.deepcopy(ours).train()
    _no_dropout(train_ref, train_ours)
    with torch.no_grad():
        expected, got = _torchvision_googlenet_outputs(train_ref, x), train_ours(x)
    assert len(got) == 3
    for a, b in zip(got, expected):
        assert (a - b).abs().max().item() <= 1e-4


def test_googlenet_aux_load_weights_and_keys(twins):
    """load_weights takes torchvision's state dict with its auxiliary classifiers; the keys without them are
    those of the model without aux_logits, in the same order."""
    ref, _ = twins('metalayers_googlenet')
    model = load_weights(timm.create_model('metalayers_googlenet', aux_logits=True), ref.state_dict()).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(model(x), _torchvision_googlenet_outputs(ref.eval(), x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    torch.testing.assert_close(model.aux_head1.hidden.weight, ref.aux1.fc1.weight)
    torch.testing.assert_close(model.aux_head2.conv0[0].weight, ref.aux2.conv.conv.weight)
    keys = list(model.state_dict())
    plain = list(timm.create_model('metalayers_googlenet', device='meta').state_dict())
    assert [k for k in keys if not k.startswith(('aux_head1.', 'aux_head2.'))] == plain
    assert {k.split('.', 1)[1] for k in keys if k.startswith('aux_head1.')} == {
        'conv0.0.weight', 'conv0.1.weight', 'conv0.1.bias', 'conv0.1.running_mean', 'conv0.1.running_var',
        'conv0.1.num_batches_tracked', 'hidden.weight', 'hidden.bias', 'fc.weight', 'fc.bias'}
    load_weights(timm.create_model('metalayers_googlenet', aux_logits=True), model.state_dict())  # ours unchanged


def test_googlenet_aux_heads_kept_when_checkpoint_has_none(twins):
    """A checkpoint without auxiliary classifiers (or with them for other classes) leaves the model's own."""
    ref, path = twins('metalayers_googlenet')
    model = timm.create_model('metalayers_googlenet', aux_logits=True, num_classes=10)
    own = {k: v.clone() for k, v in model.state_dict().items() if k.startswith('aux_head')}
    no_aux = {k: v for k, v in ref.state_dict().items() if not k.startswith(('aux1.', 'aux2.'))}
    mapped = googlenet_module.checkpoint_filter_fn(no_aux, model)
    assert set(mapped) == set(model.state_dict())
    assert all(torch.equal(mapped[k], v) for k, v in own.items())
    state = ref.state_dict()
    mapped = googlenet_module.checkpoint_filter_fn(state, model)
    assert mapped['aux_head1.fc.weight'].shape == (10, 1024)  # its own (the checkpoint's is for 1000)
    assert mapped['aux_head1.hidden.weight'] is state['aux1.fc1.weight']
    loaded = _ours('metalayers_googlenet', path, aux_logits=True, num_classes=10).eval()
    assert [o.shape for o in loaded(torch.randn(1, 3, 64, 64))] == [(1, 10)] * 3


def test_googlenet_aux_wiring():
    model = timm.create_model('metalayers_googlenet', aux_logits=True, num_classes=12).eval()
    x = torch.randn(2, 3, 64, 64)
    assert [o.shape for o in model(x)] == [(2, 12)] * 3
    model.reset_classifier(3)
    assert [o.shape for o in model(x)] == [(2, 3)] * 3
    model.reset_classifier(0)
    assert [o.shape for o in model(x)] == [(2, 1024)] * 3  # the pre-logits features of each classifier
    model.set_grad_checkpointing()
    model.train()
    outs = model(x)
    sum(o.sum() for o in outs).backward()
    assert model.aux_head1.conv0[0].weight.grad is not None and model.stages[0][0][0].weight.grad is not None
    plain = timm.create_model('metalayers_googlenet', device='meta')
    assert plain.aux_head1 is None and plain.aux_head2 is None
    model.prune_intermediate_layers([2])
    assert model.aux_head1 is None and not model.aux_logits and model(x).shape == (2, 480, 8, 8)
    with pytest.raises(ValueError, match='aux_logits'):
        timm.create_model('metalayers_googlenet', aux_logits=True, features_only=True)
    with pytest.raises(ValueError, match='aux_logits=True: InceptionV4 has no auxiliary classifier'):
        timm.create_model('metalayers_inception_v4', aux_logits=True, device='meta')


def test_squeezenet_custom_config_and_errors():
    model = squeezenet((3, 32, [[(8, 16, 16)], [(16, 32, 32), (16, 32, 32)]]), num_classes=6).eval()
    assert [f['num_chs'] for f in model.feature_info] == [32, 32, 64]
    assert [f['reduction'] for f in model.feature_info] == [2, 4, 8]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 6)
    assert set(SQUEEZENET_CONFIGS) == {'1_0', '1_1'}
    with pytest.raises(ValueError, match=r"config='1_2'"):
        squeezenet('1_2')
    with pytest.raises(ValueError, match='stage 0 row 0'):
        squeezenet((3, 32, [[(8, 16)]]))
    with pytest.raises(ValueError, match='drop_rate'):
        squeezenet(drop_rate=1.5)
    features = timm.create_model('metalayers_squeezenet1_1', features_only=True)
    assert features.feature_info.reduction() == [2, 4, 8, 16]


def test_alexnet_options_and_errors():
    model = alexnet(hidden_planes=(64, 32), pool_size=2, num_classes=3, drop_rate=0.2).eval()
    assert model.head.hidden.in_features == 256 * 4 and model.head.hidden1.out_features == 32
    assert model.head_hidden_size == 32 and model(torch.randn(1, 3, 96, 96)).shape == (1, 3)
    assert [type(m).__name__ for m in model.head] == ['AdaptiveAvgPool2d', 'Flatten', 'Linear', 'ReLU', 'Dropout',
                                                     'Linear', 'ReLU', 'Dropout', 'Linear']
    with pytest.raises(ValueError, match="global_pool='catavgmax'"):
        alexnet(global_pool='catavgmax')
    with pytest.raises(ValueError, match=r'hidden_planes\[1\]'):
        alexnet(hidden_planes=(8, 0))


def test_squeezenet_pre_logits_and_reset():
    model = timm.create_model('metalayers_squeezenet1_1', num_classes=7).eval()
    x = torch.randn(2, 3, 96, 96)
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    # the classifier runs on the map, ReLU, then the pool (not pooled first)
    expected = torch.relu(model.head.fc(feats)).mean((2, 3))
    torch.testing.assert_close(model.forward_head(feats), expected)
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), feats.mean((2, 3)))
    model.reset_classifier(3, '')
    assert model(x).shape == (2, 3, 5, 5)


def test_alexnet_unpooled_reset_is_refused():
    model = timm.create_model('metalayers_alexnet')
    with pytest.raises(HeadResetError, match='pooled width'):
        model.reset_classifier(0, '')


# ------------------------------------------------------------------------------------------------ classifier

def test_classifier_several_hidden_layers_reset_keeps_them():
    head = create_classifier(16, (12, 8), 5, ('relu', None), dropout_prob=0.1)
    assert list(head._modules) == ['global_pool', 'flatten', 'hidden', 'hidden_act', 'drop', 'hidden1',
                                   'hidden1_act', 'drop1', 'fc']
    hidden1 = head.hidden1.weight
    head.reset(3)
    assert head.hidden1.weight is hidden1 and head.fc.out_features == 3 and head.hidden_size == 8
    assert create_classifier(16, (12,), 5).hidden.out_features == 12
    with pytest.raises(ValueError, match='non-empty tuple'):
        create_classifier(16, hidden_planes=(), nclasses=5)


def test_classifier_pool_last():
    head = create_classifier(8, 4, 'relu', use_conv=True, pool_last=True)
    assert list(head._modules) == ['fc', 'act', 'global_pool', 'flatten']
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(head(x), torch.relu(head.fc(x)).mean((2, 3)))
    assert head(x, pre_logits=True).shape == (2, 8)
    with pytest.raises(ValueError, match='pool_last=True needs use_conv=True'):
        create_classifier(8, 4, pool_last=True)


# ------------------------------------------------------------------------------------------------ convert script

def _script():
    spec = importlib.util.spec_from_file_location('convert_torchvision', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_script(twins, tmp_path, monkeypatch, capsys):
    script = _script()
    ref, _ = twins('metalayers_squeezenet1_1')
    head = {'classifier.1.weight': ref.classifier[1].weight[:10], 'classifier.1.bias': ref.classifier[1].bias[:10]}
    state = {**ref.state_dict(), **head}
    pth = tmp_path / 'squeezenet1_1.pth'
    torch.save(state, pth)
    out = tmp_path / 'hub'
    monkeypatch.delenv('TIMM_METALAYERS_ALLOW_PICKLE', raising=False)
    assert script.main([str(pth), str(out), '--model', 'metalayers_squeezenet1_1']) == 2
    assert 'allow_pickle' in capsys.readouterr().err  # pickles are opt-in
    assert script.main([str(pth), str(out), '--model', 'metalayers_squeezenet1_1', '--allow-pickle']) == 0
    assert {p.name for p in out.iterdir()} >= {'model.safetensors', 'config.json', 'README.md'}
    model = timm.create_model('metalayers_squeezenet1_1', num_classes=10).eval()
    load_weights(model, out)
    x = torch.randn(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.relu(ref.classifier[1](ref.features(x))).mean((2, 3))[:, :10])


def test_convert_script_keeps_googlenet_aux_heads_on_request(twins, tmp_path):
    """--aux-logits keeps the checkpoint's auxiliary classifiers, and the folder rebuilds a model that has them;
    without it they are dropped (torchvision's pretrained googlenet drops them too). The checkpoint is a
    safetensors file, whose keys come sorted: the class count once came from the last bias in the file (a
    128-channel norm of inception5b here) instead of torchvision's fc."""
    script = _script()
    ref, path = twins('metalayers_googlenet')
    expected = load_weights(timm.create_model('metalayers_googlenet', aux_logits=True), ref.state_dict()).state_dict()
    assert any(k.startswith('aux_head1.') for k in expected)
    for aux, out in ((True, tmp_path / 'aux'), (False, tmp_path / 'plain')):
        argv = [path, str(out), '--model', 'metalayers_googlenet'] + (['--aux-logits'] if aux else [])
        assert script.main(argv) == 0
        model = timm.create_model(f'local-dir:{out}', pretrained=True)
        assert model.aux_logits is aux
        saved = model.state_dict()
        assert set(saved) == {k for k in expected if aux or not k.startswith('aux_head')}
        for key, value in saved.items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


@pytest.mark.parametrize('args, message', [
    (['{missing}', '{out}', '--model', 'metalayers_alexnet'], 'is not a file'),
    (['{pth}', '{out}', '--model', 'metalayers_resnet18'], 'not a twin of a torchvision model'),
    (['{pth}', '{out}', '--model', 'metalayers_alexnet', '--allow-pickle', '--num-classes', '1000'],
     'checkpoint does not fit'),
    (['{pth}', '{out}', '--model', 'metalayers_squeezenet1_1', '--num-classes', '0'], 'positive integer'),
    (['{pth}', '{out}', '--model', 'metalayers_alexnet', '--aux-logits'], '--aux-logits is for metalayers_googlenet'),
    (['{pth}', '{out}', '--model', 'metalayers_squeezenet1_1', '--allow-pickle'],
     "the checkpoint has no classifier.1.bias (the output layer of torchvision's squeezenet1_1); pass --num-classes"),
])
def test_convert_script_errors(args, message, tmp_path, capsys):
    pth = tmp_path / 'sq.pth'
    torch.save({'features.0.weight': torch.zeros(64, 3, 3, 3)}, pth)
    values = dict(missing=str(tmp_path / 'nope.pth'), out=str(tmp_path / 'out'), pth=str(pth))
    assert _script().main([a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith('convert_torchvision.py: error:')


def test_alexnet_shapes_timm_default_cfgs_checks():
    """What timm's test_model_default_cfgs checks, but for the unpooled head (skipped there, see the README)."""
    model = timm.create_model('metalayers_alexnet').eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, 6, 6) and model.pretrained_cfg['pool_size'] == (6, 6)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size) == (1, 4096)
        model.reset_classifier(0)
        assert model(x).shape == pre.shape
        assert timm.create_model('metalayers_alexnet', num_classes=0).eval()(x).shape == pre.shape
    with pytest.raises(ValueError, match="global_pool=''"):
        timm.create_model('metalayers_alexnet', global_pool='')
