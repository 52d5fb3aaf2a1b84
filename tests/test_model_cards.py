"""``model_cards/`` holds one current, generated card per registered ``metalayers_*`` pretrained tag."""
from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard

import timm
import timm_metalayers  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / 'model_cards'


def _load_script():
    spec = importlib.util.spec_from_file_location('make_model_cards', ROOT / 'scripts' / 'make_model_cards.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault('make_model_cards', module)
    spec.loader.exec_module(module)
    return module


make_model_cards = _load_script()


@pytest.fixture(scope='module')
def expected() -> dict:
    """Every card, regenerated in memory (params and GMACs computed on the meta device)."""
    return make_model_cards.expected_cards()


def front_matter(card: str) -> dict:
    assert card.startswith('---\n'), 'card must open with YAML front matter'
    return ModelCard(card).data.to_dict()


def test_every_pretrained_tag_has_a_current_card(expected: dict):
    tags = timm.list_pretrained('metalayers_*')
    assert sorted(expected) == sorted(f'{t}.md' for t in tags)
    problems = make_model_cards.compare(CARDS, expected)
    assert problems == {'missing': [], 'stale': [], 'orphaned': []}, (
        f'model cards out of date ({problems}); run: python scripts/make_model_cards.py')


def test_card_contents(expected: dict):
    from timm.models import get_pretrained_cfg

    for file_name, card in expected.items():
        name = file_name[:-len('.md')]
        cfg = get_pretrained_cfg(name)
        meta = front_matter(card)
        assert meta['library_name'] == 'timm', name
        assert meta['pipeline_tag'] == 'image-classification', name
        assert meta['license'] == (cfg.license or 'other').lower(), name
        assert {'timm', 'image-classification', 'timm-metalayers'} <= set(meta['tags']), name
        if name.endswith('in1k'):
            assert 'imagenet-1k' in meta['datasets'], name
        assert f'# Model card for {name}' in card
        assert '**Built from timm_metalayers layers:**' in card, name
        assert re.search(r'\*\*Params \(M\):\*\* \d+\.\d\d\n', card), name
        assert re.search(r'\*\*GMACs:\*\* \d+\.\d\d \(at \d+ x \d+', card), name
        assert f'[`{cfg.hf_hub_id}`](https://huggingface.co/{cfg.hf_hub_id})' in card, name
        assert f'licence: {meta["license"]}' in card, name
        assert f"timm.create_model('{name}', pretrained=True)" in card, name


def test_params_and_gmacs_are_computed():
    """The numbers in a card are the model's own (checked against a real CPU forward for one tag)."""
    from torch.utils.flop_counter import FlopCounterMode

    from timm_metalayers.hub import pretrained_model_card

    name = sorted(timm.list_pretrained('metalayers_resnet18*') or timm.list_pretrained('metalayers_*'))[0]
    cfg = timm.models.get_pretrained_cfg(name)
    model = timm.create_model(name.split('.')[0]).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *cfg.input_size))
    card = pretrained_model_card(name)
    assert f'**Params (M):** {sum(p.numel() for p in model.parameters()) / 1e6:.2f}' in card
    assert f'**GMACs:** {counter.get_total_flops() / 2 / 1e9:.2f}' in card


def test_usage_snippet_runs(local_hub, tmp_path: Path, monkeypatch):
    """Execute a card's snippet against the local Hub (timm's weights replaced by random ones)."""
    import urllib.request

    from PIL import Image

    name = sorted(timm.list_pretrained('metalayers_resnet18*') or timm.list_pretrained('metalayers_*'))[0]
    cfg = timm.models.get_pretrained_cfg(name)
    source_arch = cfg.hf_hub_id.split('/', 1)[1].split('.')[0]
    torch.manual_seed(0)
    source = timm.create_model(source_arch).eval()
    safetensors.torch.save_file(source.state_dict(), tmp_path / 'model.safetensors')
    local_hub.add_files(cfg.hf_hub_id, {'model.safetensors': tmp_path / 'model.safetensors',
                                        'config.json': json.dumps({'architecture': source_arch})})

    png = io.BytesIO()
    Image.new('RGB', (300, 200), (120, 80, 40)).save(png, format='PNG')
    monkeypatch.setattr(urllib.request, 'urlopen', lambda url, *a, **k: io.BytesIO(png.getvalue()))

    card = (CARDS / f'{name}.md').read_text()
    snippet = re.search(r'```python\n(.*?)```', card, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, f'<usage snippet of {name}>', 'exec'), namespace)
    assert namespace['output'].shape == (1, cfg.num_classes)
    assert namespace['top5_class_indices'].shape == (1, 5)
    x = namespace['transform'](Image.open(io.BytesIO(png.getvalue())).convert('RGB')).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(namespace['output'], source(x), atol=1e-4, rtol=0)


def test_check_mode(tmp_path: Path, capsys):
    out = tmp_path / 'cards'
    pattern = 'metalayers_resnet18*'
    n = len(timm.list_pretrained(pattern))
    if n == 0:
        pattern, n = 'metalayers_*', len(timm.list_pretrained('metalayers_*'))
    argv = ['--out', str(out), '--filter', pattern]
    if n == 0:  # nothing registered: nothing to generate, and --check passes
        assert make_model_cards.main(argv + ['--check']) == 0
        return
    assert make_model_cards.main(argv + ['--check']) == 1
    assert 'missing:' in capsys.readouterr().out
    assert make_model_cards.main(argv) == 0
    assert len(list(out.glob('*.md'))) == n
    assert make_model_cards.main(argv + ['--check']) == 0

    first = sorted(out.glob('*.md'))[0]
    first.write_text(first.read_text().replace('GMACs', 'GFLOPs'))
    (out / 'metalayers_resnet18.gone_in1k.md').write_text('old')
    assert make_model_cards.main(argv + ['--check']) == 1
    report = capsys.readouterr().out
    assert f'stale: {first}' in report and 'orphaned:' in report
    assert make_model_cards.main(argv) == 0  # regenerates the stale card, removes the orphan
    assert make_model_cards.main(argv + ['--check']) == 0
    assert not (out / 'metalayers_resnet18.gone_in1k.md').exists()
