"""``timm_metalayers.metalhead``: Metalhead.jl's constructors, ``backbone`` / ``classifier`` and ``UNet``.

Every row of the README's model table is built both ways (the Python call and its ``timm.create_model`` /
``create_unet`` column) on the meta device and must give the same module; the smallest configuration of each
constructor runs at a small input; ``pretrain`` loads from a loopback Hub serving files the tests write.
"""
import pathlib
import re
from functools import partial
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn
import timm
from timm.models import get_pretrained_cfg

import timm_metalayers.metalhead as mh
from timm_metalayers.metalhead import backbone, classifier
from timm_metalayers.metalhead._spec import ANY, REQUIRED, Constructor
from timm_metalayers.models.unet import create_unet

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'
ROW = re.compile(r'^\| (?P<julia>.+?) \| `(?P<python>.+?)` \| `(?P<timm>.+?)` \| (?P<weights>.+?) \|$')
# Metalhead.jl's exported model constructors (src/Metalhead.jl, v0.9)
METALHEAD_EXPORTS = ['AlexNet', 'VGG', 'ResNet', 'WideResNet', 'ResNeXt', 'DenseNet', 'GoogLeNet', 'Inceptionv3',
                     'Inceptionv4', 'InceptionResNetv2', 'Xception', 'SEResNet', 'SEResNeXt', 'Res2Net', 'Res2NeXt',
                     'SqueezeNet', 'MobileNetv1', 'MobileNetv2', 'MobileNetv3', 'MNASNet', 'EfficientNet',
                     'EfficientNetv2', 'ConvMixer', 'ConvNeXt', 'MLPMixer', 'ResMLP', 'gMLP', 'ViT', 'UNet']
CONSTRUCTORS = {name: getattr(mh, name) for name in METALHEAD_EXPORTS if name != 'UNet'}


def _section() -> str:
    text = README.read_text(encoding='utf-8')
    match = re.search(r'<!-- section:metalhead -->(.*?)<!-- /section:metalhead -->', text, re.S)
    assert match, 'README.md has no <!-- section:metalhead --> section'
    return match.group(1)


def _table() -> List[Dict[str, str]]:
    return [m.groupdict() for line in _section().splitlines() if (m := ROW.match(line))]


def _namespace() -> Dict[str, object]:
    return dict(vars(mh), timm=timm, create_unet=create_unet)


def _registered_in(text: str) -> set:
    return set(re.findall(r'metalayers_\w+', text))


# -- the README table -------------------------------------------------------------------------------------------
def test_table_covers_every_constructor_configuration_and_registered_model():
    table = _table()
    assert len(table) >= 80
    called = {row['python'].split('(')[0] for row in table}
    assert called == set(METALHEAD_EXPORTS), set(METALHEAD_EXPORTS) ^ called
    in_table = _registered_in(' '.join(row['timm'] for row in table))
    for name, constructor in CONSTRUCTORS.items():  # every configuration of the code's tables has its row
        missing = {f'metalayers_{row.model}' for row in constructor.rows} - in_table
        assert not missing, f'{name}: {missing} not in the README table'
    without = _registered_in(_section().split('Registered without a Metalhead.jl constructor')[1])
    assert not in_table & without
    assert in_table | without == set(timm.list_models('metalayers_*'))


def test_readme_example_runs(one_torch_thread):
    blocks = re.findall(r'^```python\n(.*?)^```', _section(), re.S | re.M)
    assert len(blocks) == 1 and 'backbone(model)(x)' in blocks[0]
    exec(compile(blocks[0], 'README.md[metalhead]', 'exec'), {'__name__': '__readme__'})


def _same_module(a: nn.Module, b: nn.Module) -> None:
    assert type(a) is type(b)
    assert repr(a) == repr(b)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert getattr(a, 'pretrained_cfg', None) == getattr(b, 'pretrained_cfg', None)


@pytest.mark.parametrize('row', _table(), ids=lambda row: row['python'])
def test_every_table_row_builds_the_model_of_its_timm_call(row):
    """Both columns on the meta device (no memory, no init cost): the same module tree, keys, shapes and cfg."""
    namespace = _namespace()
    with torch.device('meta'):
        ours = eval(row['python'], namespace)
        theirs = eval(row['timm'], namespace)
    _same_module(ours, theirs)
    if row['python'].split('(')[0] not in CONSTRUCTORS:
        return
    # the table's timm call is the one timm_call reports, and its weights are what pretrain=True loads
    assert row['timm'].startswith(f'timm.create_model("{eval(row["python"].replace("(", ".timm_call(", 1), namespace)[0]}"')
    with_weights = {name: partial(c.timm_call, pretrain=True) for name, c in CONSTRUCTORS.items()}
    if row['weights'] == 'none':
        with pytest.raises(ValueError, match='no pretrained weights'):
            eval(row['python'], with_weights)
        return
    name = eval(row['python'], with_weights)[0]
    assert row['weights'].startswith(f'`{name.split(".")[0][len("metalayers_"):]}.{get_pretrained_cfg(name).tag}`')
    assert row['weights'].endswith("(Metalhead's)") == ('.' in name)  # Metalhead's tag, not timm's default


def _smallest_rows() -> List[Tuple[str, Tuple]]:
    """Per constructor, the values of its configuration with the fewest parameters (counted on the meta device)."""
    out = []
    for name, constructor in CONSTRUCTORS.items():
        def count(row):
            return sum(p.numel() for p in timm.create_model(f'metalayers_{row.model}', device='meta').parameters())
        out.append((name, min(constructor.rows, key=count).values))
    return out


def _call_args(constructor: Constructor, values: Tuple) -> Tuple[list, dict]:
    args, kwargs = [], {}
    for arg, value in zip(constructor.args, values):
        value = arg.default if value is ANY else value
        (args.append(value) if arg.positional else kwargs.__setitem__(arg.name, value))
    return args, kwargs


# small sizes: the fixed-size token models at 32 px, VGG's conv MLP narrower (its 7x7x512x4096 conv is 100M weights)
SMALL = {'ViT': dict(imsize=32), 'MLPMixer': dict(imsize=32), 'ResMLP': dict(imsize=32), 'gMLP': dict(imsize=32),
         'VGG': dict(fcsize=64)}


@pytest.mark.parametrize('name, values', _smallest_rows(), ids=lambda v: v if isinstance(v, str) else '')
def test_smallest_configuration_runs_and_splits_into_backbone_and_classifier(name, values, one_torch_thread):
    constructor = CONSTRUCTORS[name]
    args, kwargs = _call_args(constructor, values)
    torch.manual_seed(0)
    model = constructor(*args, inchannels=2, nclasses=5, **{**kwargs, **SMALL.get(name, {})}).eval()
    side = max(64, *(model.pretrained_cfg.get('min_input_size') or (0, 0, 0))[1:])
    side = SMALL.get(name, {}).get('imsize', side)
    x = torch.randn(2, 2, side, side)
    body, head = backbone(model), classifier(model)
    with torch.no_grad():
        features = body(x)
        logits = head(features)
        assert logits.shape == (2, 5)
        assert torch.equal(features, model.forward_features(x))
        assert torch.equal(logits, model(x))
        assert torch.equal(head(features, pre_logits=True), model.forward_head(features, pre_logits=True))
    # the model's own parameters, split between the two
    ids = lambda m: {id(p) for p in m.parameters()}  # noqa: E731
    assert ids(body) | ids(head) == ids(model) and not ids(body) & ids(head)


def test_backbone_and_classifier_are_views_of_the_model():
    model = mh.VGG(11, nclasses=3, fcsize=32)
    body, head = backbone(model), classifier(model)
    assert list(head._modules) == ['pre_logits', 'head'] and list(body._modules)[0] == 'stage1'
    assert body.stage1 is model.stage1 and backbone(body).stage1 is model.stage1
    assert set(body.state_dict()) | set(head.state_dict()) == set(model.state_dict())
    vit = mh.ViT('tiny', imsize=32, global_pool='avg')  # the final norm follows the pooling: the classifier's
    assert list(classifier(vit)._modules) == ['norm', 'head'] and 'norm' not in backbone(vit)._modules
    with pytest.raises(TypeError, match=r'backbone\(model\) takes a model of this package'):
        backbone(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r'classifier\(model\) takes a model of this package'):
        classifier(timm.create_model('metalayers_resnet18', features_only=True, device='meta'))


# -- arguments and errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('call, name, kwargs', [
    ('ResNet(50)', 'metalayers_resnet50', {}),
    ('ResNet(depth=34, inchannels=1, nclasses=10)', 'metalayers_resnet34', dict(in_chans=1, num_classes=10)),
    ('MobileNetv3(":small", width_mult=0.75)', 'metalayers_mobilenetv3_small_075', {}),
    ('MNASNet("b1")', 'metalayers_mnasnet_100', dict(drop_rate=0.2)),
    ('MobileNetv1(1.25)', 'metalayers_mobilenetv1_125', {}),
    ('ViT("base", imsize=(384, 384))', 'metalayers_vit_base_patch16_384',
     dict(pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1)),
    ('ViT("base", imsize=256, proj_drop_rate=0.0)', 'metalayers_vit_base_patch16_224',
     dict(pos_drop_rate=0.1, proj_drop_rate=0.0, attn_drop_rate=0.1, img_size=(256, 256))),
    ('MLPMixer("base", imsize=192, drop_path_rate=0.1)', 'metalayers_mixer_b16_224',
     dict(img_size=(192, 192), drop_path_rate=0.1)),
    ('ResNet(18, pretrain=True)', 'metalayers_resnet18.tv_in1k', dict(pretrained=True)),
    ('ResNet(18, pretrain="a1_in1k")', 'metalayers_resnet18.a1_in1k', dict(pretrained=True)),
    ('SEResNet(50, pretrain=True)', 'metalayers_seresnet50', dict(pretrained=True)),
    ('ViT("tiny", imsize=384, pretrain=True)', 'metalayers_vit_tiny_patch16_224',
     dict(pretrained=True, pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1, img_size=(384, 384))),
])
def test_timm_call(call, name, kwargs):
    got_name, got = eval(call.replace('(', '.timm_call(', 1), vars(mh))
    expected = dict(pretrained=False, in_chans=3, num_classes=1000)
    expected.update(kwargs)
    assert (got_name, got) == (name, expected)


@pytest.mark.parametrize('call, error, message', [
    ('ResNet(200)', ValueError, r'ResNet: depth=200 has no registered model here; allowed: 18, 34, 50, 101, 152'),
    ('WideResNet(152)', ValueError, r'depth=152 .*allowed: 50, 101'),
    ('ResNeXt(101)', ValueError, r'no registered model for depth=101, cardinality=32, base_width=4; with depth=101: '
                                 r'cardinality=32, base_width=8 \(metalayers_resnext101_32x8d\)'),
    ('ResNeXt(101, cardinality=64, base_width=4)', ValueError, r'cardinality=64'),
    ('DenseNet(161)', ValueError, r'growth_rate=48, reduction=0.5 \(metalayers_densenet161\).*published'),
    ('DenseNet(121, reduction=0.25)', ValueError, r'reduction=0.25'),
    ('GoogLeNet()', ValueError, r'batchnorm=False has no registered model.*torchvision'),
    ('GoogLeNet(batchnorm=True)', ValueError, r'bias=True'),
    ('ConvMixer("large")', ValueError, r'patch_size=7; with config="large": patch_size=14'),
    ('ResMLP("small")', ValueError, r'config="small" has no registered model here; allowed: "S12", "S24", "S36", '
                                    r'"B24"\. Metalhead'),
    ('ResMLP("B24")', ValueError, r'patch_size=\(8, 8\)'),
    ('gMLP("base")', ValueError, r'allowed: "Ti", "S", "B"'),
    ('ViT("huge")', ValueError, r'config="huge" .*allowed: "tiny", "small", "base", "large"'),
    ('ViT("large", patch_size=32)', ValueError, r'patch_size=\(32, 32\); with config="large": imsize=any, '
                                                r'patch_size=\(16, 16\)'),
    ('MLPMixer("huge")', ValueError, r'"huge"'),
    ('EfficientNet("b8")', ValueError, r'config="b8" .*"b7"'),
    ('MobileNetv3("large", width_mult=0.75)', ValueError, r'width_mult=0.75'),
    ('MobileNetv2(0.35)', ValueError, r'width_mult=0.35 .*allowed: 0.5, 1.0, 1.4'),
    # pretrained weights
    ('AlexNet(pretrain=True)', ValueError, r'no pretrained weights for metalayers_alexnet; pass pretrain=False'),
    ('EfficientNet("b6", pretrain=True)', ValueError, r'metalayers_efficientnet_b6'),
    ('ResNet(50, pretrain="in22k")', ValueError, r"pretrain='in22k' is not a pretrained tag of metalayers_resnet50; "
                                                 r'its tags: a1_in1k, tv2_in1k, tv_in1k'),
    ('SqueezeNet(pretrain="tv_in1k")', ValueError, r'its tags: none'),
    ('ResNet(50, pretrain=1)', TypeError, r'pretrain must be True, False or a pretrained tag'),
    ('MLPMixer("base", imsize=192, pretrain=True)', ValueError,
     r"imsize=\(192, 192\): timm's weights for metalayers_mixer_b16_224 fit imsize=\(224, 224\) only"),
    # argument types and names
    ('ResNet()', TypeError, r"ResNet: missing a required argument: 'depth'"),
    ('ResNet(50, 3)', TypeError, r'ResNet: too many positional arguments'),
    ('ResNet(50.5)', TypeError, r'ResNet: depth must be an integer, got 50.5'),
    ('ResNet("50")', TypeError, r'depth must be a number'),
    ('ResNet(True)', TypeError, r'depth must be a number'),
    ('MobileNetv3(3)', TypeError, r'config must be a string \(a Julia symbol such as :large is "large"\)'),
    ('MobileNetv3(":")', TypeError, r'config must be a string'),
    ('VGG(16, batchnorm=1)', TypeError, r'VGG: batchnorm must be True or False'),
    ('ViT("base", imsize=(224, 224, 3))', ValueError, r'ViT: imsize must be an int or a pair of ints'),
    ('ResNet(50, num_classes=10)', TypeError, r'pass nclasses= \(Metalhead\'s name\), not num_classes='),
    ('ResNet(50, in_chans=1)', TypeError, r'pass inchannels='),
    ('ResNet(50, pretrained=True)', TypeError, r'pass pretrain='),
    ('ViT("base", img_size=256)', TypeError, r'pass imsize='),
])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        eval(call.replace('(', '.timm_call(', 1), vars(mh))


def test_constructors_show_metalhead_signatures():
    assert str(mh.ResNeXt.__signature__).startswith('(depth, *, cardinality=32, base_width=4, pretrain')
    assert str(mh.MobileNetv1.__signature__).startswith('(width_mult=1.0, *, pretrain')
    assert 'ResNeXt' in repr(mh.ResNeXt) and 'nclasses' in mh.ResNeXt.__doc__
    for name, constructor in CONSTRUCTORS.items():
        assert constructor.__name__ == name
        required = [a for a in constructor.args if a.default is REQUIRED]
        assert all(a.positional for a in required), name


# -- pretrained weights, offline ----------------------------------------------------------------------------------
def _serve(local_hub, timm_checkpoint, arch: str, tag: str) -> nn.Module:
    """Put timm's ``arch`` with random weights on the loopback Hub as ``timm/<arch>.<tag>``; return that model."""
    ref, path = timm_checkpoint(arch)
    local_hub.add_files(f'timm/{arch}.{tag}', {'model.safetensors': pathlib.Path(path)})
    return ref


def test_pretrain_loads_the_weights_metalhead_loads(local_hub, timm_checkpoint, one_torch_thread):
    """ResNet(18, pretrain=True) downloads timm/resnet18.tv_in1k (torchvision's IMAGENET1K_V1, Metalhead's
    artifact) from the (loopback) Hub, through the checkpoint filter: the logits are timm's."""
    ref = _serve(local_hub, timm_checkpoint, 'resnet18', 'tv_in1k')
    model = mh.ResNet(18, pretrain=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert local_hub.requests_for('GET', '/timm/resnet18.tv_in1k/resolve/main/model.safetensors')
    # Metalhead's other arguments with pretrain: the classes are new, the input channels adapted
    tuned = mh.ResNet(18, pretrain=True, inchannels=1, nclasses=4)
    assert tuned.head.fc.out_features == 4 and tuned.stem[0].in_channels == 1
    assert torch.equal(tuned.layer1[0].conv1[0].weight, model.layer1[0].conv1[0].weight)


def test_pretrain_tag_and_backbone_of_a_pretrained_model(local_hub, timm_checkpoint, one_torch_thread):
    ref = _serve(local_hub, timm_checkpoint, 'resnet18', 'a1_in1k')
    model = mh.ResNet(18, pretrain='a1_in1k', nclasses=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(model)(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)


def test_pretrain_fails_clearly_when_the_hub_lacks_the_file(local_hub):
    from timm_metalayers.hub import HubLoadError
    with pytest.raises(HubLoadError, match='resnet18.tv_in1k'):
        mh.ResNet(18, pretrain=True)


# -- UNet ---------------------------------------------------------------------------------------------------------
def test_unet_defaults_and_any_divisible_size(one_torch_thread):
    with torch.device('meta'):
        _same_module(mh.UNet(), create_unet('metalayers_densenet121', num_classes=3))
    unet = mh.UNet((64, 64), 1, 2, 'metalayers_resnet18').eval()
    with torch.no_grad():
        assert unet(torch.randn(1, 1, 64, 96)).shape == (1, 2, 64, 96)


def test_unet_encoder_starts_from_the_given_model(one_torch_thread):
    model = mh.ResNet(18, inchannels=1, nclasses=4)
    unet = mh.UNet((64, 64), 1, 2, backbone(model))
    encoder = unet.encoder.model.state_dict()
    assert encoder and all(torch.equal(v, model.state_dict()[k]) for k, v in encoder.items())
    assert torch.equal(mh.UNet((64, 64), 1, 2, model).encoder.model.stem[0].weight, model.stem[0].weight)


@pytest.mark.parametrize('call, error, message', [
    ('UNet((100, 100), 3, 2, "metalayers_resnet18")', ValueError, r'imsize=\(100, 100\) must be divisible by '
                                                                  r'the reduction of the metalayers_resnet18 encoder \(32\)'),
    ('UNet(pretrain=True)', ValueError, r'no pretrained UNet weights'),
    ('UNet(pretrain=1)', TypeError, r'UNet: pretrain must be True or False'),
    ('UNet((64, 64), 3, 0, "metalayers_resnet18")', ValueError, r'UNet: outplanes must be > 0'),
    ('UNet((64, 64), 3, 2, torch.nn.Linear(2, 2))', TypeError, r'UNet encoder_backbone\(model\) takes a model'),
    ('UNet((64, 64), 3, 2, ResNet(18, inchannels=1))', ValueError, r'is not the metalayers_resnet18 that create_unet '
                                                                   r'builds'),
])
def test_unet_errors(call, error, message):
    with pytest.raises(error, match=message):
        eval(call, dict(vars(mh), torch=torch))
