"""What ``save_for_hub`` writes, read by the tools around us: Hugging Face transformers, and plain timm in a process
that never imports this package (``timm_native=True``). Also the inverse of every family's checkpoint filter."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
import transformers  # a test dependency (pyproject's test extra): never skipped
from PIL import Image
from timm.models._input import get_model_input_config

import timm_metalayers  # noqa: F401  (registers the models)
from random_weights import randomize_weights
from twins import smallest_per_family
from timm_metalayers import hub
from timm_metalayers.hub.timm_layout import NoTimmTwinError, timm_state_dict, to_timm_model
from timm_metalayers.models._torchvision import TORCHVISION_TWINS
from timm_metalayers.state_dict import checkpoint_filter_of


LABELS = ['cat', 'dog', 'emu']
TWINS = sorted(n for n in timm.list_models('metalayers_*') if n not in TORCHVISION_TWINS)


REPRESENTATIVES = smallest_per_family(TWINS)


def _small_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``name`` with 3 classes and random weights (and random batch-norm statistics), in eval mode."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs.setdefault('img_size', 32)
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=len(LABELS), **kwargs)
    randomize_weights(model)
    return model.eval()


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    current = get_model_input_config(model)
    side = current['input_size'][1] if current['fixed_input_size'] else max(
        64, *(model.pretrained_cfg.get('min_input_size') or (0, 0, 0))[1:])
    return torch.randn(batch, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    tol = 1e-5 * float(expected.abs().max()) + 1e-6
    assert float((actual - expected).abs().max()) <= tol


# ------------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in
                                  sorted(set(REPRESENTATIVES) | {'metalayers_googlenet'})])
def test_saved_folder_loads_in_transformers_with_equal_logits(name, tmp_path):
    model = _small_model(name)
    hub.save_for_hub(model, tmp_path, label_names=LABELS, model_card=False)
    loaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = _input(model)
    with torch.no_grad():
        _assert_close(loaded(pixel_values=x).logits, model(x))
    assert loaded.config.id2label == dict(enumerate(LABELS))


def test_config_has_num_classes_once(tmp_path):
    """transformers passes the root num_classes to timm itself: a second copy in model_args was its TypeError."""
    hub.save_for_hub(_small_model('metalayers_resnet18'), tmp_path, model_card=False)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['num_classes'] == 3
    assert 'num_classes' not in config.get('model_args', {})
    assert timm.create_model(f'local-dir:{tmp_path}', pretrained=True).num_classes == 3


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))


def test_image_processor_and_pipeline_from_the_hub(local_hub, tmp_path):
    """pipeline('image-classification') from a repo pushed with push_to_hub: our preprocessing, our labels."""
    model = _small_model('metalayers_resnet18')
    hub.push_to_hub(model, 'org/rn18', label_names=LABELS, model_card=False)
    processor = transformers.AutoImageProcessor.from_pretrained('org/rn18')
    pixels = processor(_image(), return_tensors='pt')['pixel_values']
    data = timm.data.resolve_data_config(model=model)
    ours = timm.data.create_transform(**data)(_image()).unsqueeze(0)
    torch.testing.assert_close(pixels, ours)
    classify = transformers.pipeline('image-classification', model='org/rn18')
    with torch.no_grad():
        probs = model(ours).softmax(-1)[0]
    top = classify(_image(), top_k=3)
    assert [p['label'] for p in top] == [LABELS[i] for i in probs.argsort(descending=True)]
    assert top[0]['score'] == pytest.approx(float(probs.max()), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# timm's own layout
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', TWINS)
def test_every_twin_maps_onto_timms_layout_completely(name):
    """The filter run backwards gives every one of timm's tensors, each from a different one of ours (meta)."""
    with torch.device('meta'):
        ours = timm.create_model(name)
        theirs = timm.create_model(name[len('metalayers_'):])
    mapped = timm_state_dict(ours, theirs)
    target = theirs.state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    back = checkpoint_filter_of(ours)(mapped, ours)
    assert set(back) == set(ours.state_dict())


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in REPRESENTATIVES])
def test_timm_layout_round_trip_is_bit_exact(name):
    """timm's weights -> ours (load_weights, through the filter) -> timm's layout: the same tensors, bit for bit,
    and timm's model holding them gives our logits."""
    reference = timm.create_model(name[len('metalayers_'):], num_classes=3, **(
        {'img_size': 32} if timm.models.get_pretrained_cfg(name).fixed_input_size else {}))
    randomize_weights(reference)
    ours = _small_model(name, seed=1)
    hub.load_weights(ours, reference.state_dict())
    twin = to_timm_model(ours)
    assert type(twin) is type(reference)
    expected = reference.state_dict()
    got = twin.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected if not k.endswith('num_batches_tracked'))
    x = _input(ours)
    with torch.no_grad():
        _assert_close(twin(x), ours(x))


def test_torchvision_twin_has_no_timm_layout(tmp_path):
    model = _small_model('metalayers_googlenet')
    with pytest.raises(NoTimmTwinError, match="metalayers_googlenet has no timm twin.*torchvision's googlenet"):
        hub.save_for_hub(model, tmp_path / 'out', timm_native=True)
    assert not (tmp_path / 'out').exists()


def test_custom_configuration_is_not_a_timm_twin(tmp_path):
    """Same keys and shapes as timm's resnet18 but another activation: the logits tell, and nothing is written."""
    model = _small_model('metalayers_resnet18')
    parent, child = next((p, n) for p in model.modules() for n, c in p.named_children() if isinstance(c, torch.nn.ReLU))
    setattr(parent, child, torch.nn.GELU())
    with pytest.raises(NoTimmTwinError, match="metalayers_resnet18 as built here is not timm's resnet18"):
        hub.save_for_hub(model, tmp_path / 'out', timm_native=True)
    assert not (tmp_path / 'out').exists()


def test_other_layers_are_not_a_timm_twin():
    model = _small_model('metalayers_resnet34')
    model.pretrained_cfg = {**model.pretrained_cfg, 'architecture': 'metalayers_resnet18'}
    with pytest.raises(NoTimmTwinError, match='resnet18'):
        to_timm_model(model)


def test_unregistered_model_is_refused():
    with pytest.raises(NoTimmTwinError, match="pretrained_cfg architecture is None"):
        to_timm_model(torch.nn.Linear(2, 2))


def test_timm_native_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="timm_native must be True or False, got 'yes'"):
        hub.save_for_hub(_small_model('metalayers_resnet18'), tmp_path, timm_native='yes')


_PLAIN_PROCESS = textwrap.dedent('''
    import json, sys
    import timm, torch, transformers
    cases = json.loads(sys.argv[1])
    for case in cases:
        x, expected = torch.load(case['io'])
        model = timm.create_model(case['source'], pretrained=True).eval()
        hf = transformers.AutoModelForImageClassification.from_pretrained(case['folder']).eval()
        with torch.no_grad():
            for got in (model(x), hf(pixel_values=x).logits):
                assert got.shape == expected.shape, (case, got.shape)
                tol = 1e-5 * float(expected.abs().max()) + 1e-6
                assert float((got - expected).abs().max()) <= tol, (case, float((got - expected).abs().max()))
        assert hf.config.id2label == dict(enumerate(case['labels'])), hf.config.id2label
        print(case['source'], type(model).__name__, 'ok')
    assert not [m for m in sys.modules if m.startswith('timm_metalayers')], 'timm_metalayers was imported'
''')


def test_timm_native_folders_load_without_this_package(tmp_path, local_hub):
    """A process that never imports timm_metalayers loads timm_native folders and a pushed repo with plain timm
    and transformers, with our logits and labels (checked through sys.modules)."""
    cases = []
    for name, kwargs in [('metalayers_resnet50d', {}), ('metalayers_efficientnet_b0', {}),
                         ('metalayers_vit_tiny_patch16_224', {'img_size': 32, 'in_chans': 1})]:
        model = _small_model(name, **kwargs)
        folder = tmp_path / name
        hub.save_for_hub(model, folder, timm_native=True, label_names=LABELS)
        assert 'import timm_metalayers' not in (folder / 'README.md').read_text()
        x = _input(model)
        with torch.no_grad():
            torch.save((x, model(x)), tmp_path / f'{name}.pt')
        cases.append(dict(source=f'local-dir:{folder}', folder=str(folder), io=str(tmp_path / f'{name}.pt'),
                          labels=LABELS))
    hub.push_to_hub(_small_model('metalayers_convnext_tiny'), 'org/cnx', timm_native=True, label_names=LABELS)
    pushed = _small_model('metalayers_convnext_tiny')
    x = _input(pushed)
    with torch.no_grad():
        torch.save((x, pushed(x)), tmp_path / 'pushed.pt')
    cases.append(dict(source='hf-hub:org/cnx', folder='org/cnx', io=str(tmp_path / 'pushed.pt'), labels=LABELS))

    script = tmp_path / 'plain.py'
    script.write_text(_PLAIN_PROCESS)
    out = subprocess.run([sys.executable, str(script), json.dumps(cases)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(' ok') == len(cases)
