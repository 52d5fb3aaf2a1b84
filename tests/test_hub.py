"""Hub round trip against a local Hub server: publish, download, cache, offline, safe loading.

Everything goes through the real huggingface_hub and timm code paths; the ``local_hub`` fixture
serves the Hub protocol on 127.0.0.1 and refuses any other connection.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard, hf_hub_download

import timm
import timm_metalayers  # noqa: F401  (registers the metalayers_* models)
from timm_metalayers import hub
from timm_metalayers.hub import (
    CheckpointMismatchError, CorruptCheckpointError, HubConnectionError, HubLoadError, MissingFileError,
    MissingWeightsError, UnknownArchitectureError, UnsafeCheckpointError)
from timm_metalayers.hub.loading import classifier_names

# A registered metalayers model when the ResNet family is there, else timm's tiny test model.
MODEL = 'metalayers_resnet18' if timm.list_models('metalayers_resnet18') else 'test_resnet'
NUM_CLASSES = 7
IMG = 64


def make_model(num_classes: int = NUM_CLASSES, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(MODEL, num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics so a lost buffer shows in the logits
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f'{k} changed by a failed load'


def front_matter(card: str) -> dict:
    assert card.startswith('---\n')
    return ModelCard(card).data.to_dict()


@pytest.fixture(scope='module')
def saved_dir(tmp_path_factory) -> Path:
    """A model saved once by save_for_hub (reused by several tests)."""
    out = tmp_path_factory.mktemp('saved') / 'model'
    hub.save_for_hub(make_model(), out, label_names=[f'class_{i}' for i in range(NUM_CLASSES)],
                     license='mit', datasets=['my-dataset'], tags=['fine-tuned'])
    return out


# ------------------------------------------------------------------------------------------------
# publishing
# ------------------------------------------------------------------------------------------------
def test_save_for_hub_writes_safetensors_config_and_card(saved_dir: Path):
    files = sorted(p.name for p in saved_dir.iterdir())
    assert files == ['README.md', 'config.json', 'model.safetensors']  # no pickle copy

    cfg = json.loads((saved_dir / 'config.json').read_text())
    assert cfg['architecture'] == MODEL
    assert cfg['num_classes'] == NUM_CLASSES
    assert cfg['num_features'] == make_model().num_features
    assert cfg['label_names'] == [f'class_{i}' for i in range(NUM_CLASSES)]
    assert cfg['pretrained_cfg']['num_classes'] == NUM_CLASSES
    assert tuple(cfg['pretrained_cfg']['input_size']) == tuple(make_model().pretrained_cfg['input_size'])

    sd = safetensors.torch.load_file(saved_dir / 'model.safetensors')
    ref = make_model().state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)

    card = (saved_dir / 'README.md').read_text()
    meta = front_matter(card)
    assert meta['library_name'] == 'timm'
    assert meta['license'] == 'mit'
    assert meta['pipeline_tag'] == 'image-classification'
    assert meta['datasets'] == ['my-dataset']
    assert {'timm', 'image-classification', 'fine-tuned'} <= set(meta['tags'])
    params = sum(p.numel() for p in make_model().parameters())
    assert f'**Params (M):** {params / 1e6:.2f}' in card
    assert '**GMACs:**' in card
    assert f"timm.create_model('hf-hub:<org>/<name>', pretrained=True)" in card


def test_save_for_hub_rejects_bad_input(tmp_path: Path):
    with pytest.raises(TypeError, match='model must be a torch.nn.Module'):
        hub.save_for_hub('resnet', tmp_path)
    with pytest.raises(ValueError, match='pretrained_cfg architecture'):
        hub.save_for_hub(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match=f'label_names has 2 names but the model has num_classes={NUM_CLASSES}'):
        hub.save_for_hub(make_model(), tmp_path, label_names=['a', 'b'])
    with pytest.raises(TypeError, match='unknown model card field.*colour'):
        hub.save_for_hub(make_model(), tmp_path, colour='red')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ValueError, match='is not a folder'):
        hub.save_for_hub(make_model(), tmp_path / 'file')
    with pytest.raises(ValueError, match='repo id must look like "org/name"'):
        hub.push_to_hub(make_model(), 'no-org')


# ------------------------------------------------------------------------------------------------
# the download protocol: first download, cache hit, offline
# ------------------------------------------------------------------------------------------------
def test_download_cache_hit_and_offline(local_hub, saved_dir: Path):
    commit = local_hub.add_folder('org/cached', saved_dir)

    path = hf_hub_download('org/cached', 'model.safetensors')
    assert Path(path).read_bytes() == (saved_dir / 'model.safetensors').read_bytes()
    assert commit in path  # snapshots/<commit>/model.safetensors: X-Repo-Commit was honoured
    assert len(local_hub.requests_for('GET', '/org/cached/resolve/main/model.safetensors')) == 1

    # cache hit: the server is asked for metadata (HEAD) but the file is not fetched again
    local_hub.clear_log()
    assert hf_hub_download('org/cached', 'model.safetensors') == path
    assert local_hub.requests_for('GET', 'model.safetensors') == []
    assert len(local_hub.requests_for('HEAD', '/org/cached/resolve/main/model.safetensors')) == 1

    # HF_HUB_OFFLINE=1: served from the cache without a single request
    local_hub.clear_log()
    with local_hub.offline():
        assert hf_hub_download('org/cached', 'model.safetensors') == path
        with pytest.raises(HubConnectionError, match='HF_HUB_OFFLINE=1'):
            hub.create_model_from_hub('org/never-downloaded')
    assert local_hub.state.requests == []


def test_push_to_hub_then_create_model_gives_identical_logits(local_hub):
    model = make_model(seed=3)
    expected = logits(model)
    info = hub.push_to_hub(model, 'my-org/my-model', label_names=[str(i) for i in range(NUM_CLASSES)])
    assert info.oid == local_hub.head_commit('my-org/my-model')
    files = local_hub.files('my-org/my-model')
    assert sorted(files) == ['README.md', 'config.json', 'model.safetensors']
    assert "timm.create_model('hf-hub:my-org/my-model', pretrained=True)" in files['README.md'].decode()
    # the upload went through the Hub's commit protocol
    assert local_hub.requests_for('POST', '/api/repos/create')
    assert local_hub.requests_for('POST', '/api/models/my-org/my-model/preupload/main')
    commit_req = local_hub.requests_for('POST', '/api/models/my-org/my-model/commit/main')
    assert commit_req and commit_req[0].headers['Content-Type'] == 'application/x-ndjson'

    # plain timm, through hf_hub_download
    loaded = timm.create_model('hf-hub:my-org/my-model', pretrained=True)
    assert loaded.pretrained_cfg['label_names'] == [str(i) for i in range(NUM_CLASSES)]
    assert torch.equal(logits(loaded), expected)

    # the checked loader
    checked = hub.create_model_from_hub('hf-hub:my-org/my-model')
    assert torch.equal(logits(checked), expected)
    assert checked.pretrained_cfg == loaded.pretrained_cfg  # built from the same config.json as timm's hf-hub:
    checked = hub.create_model_from_hub('my-org/my-model', revision=info.oid)
    assert torch.equal(logits(checked), expected)

    # offline, from the cache, with no request at all
    local_hub.clear_log()
    with local_hub.offline():
        assert torch.equal(logits(timm.create_model('hf-hub:my-org/my-model', pretrained=True)), expected)
        assert torch.equal(logits(hub.create_model_from_hub('my-org/my-model')), expected)
    assert local_hub.state.requests == []

    # load_weights from the repo id into a fresh model
    fresh = make_model(seed=9)
    hub.load_weights(fresh, 'my-org/my-model')
    assert torch.equal(logits(fresh), expected)


def test_push_keeps_an_existing_card_unless_replaced(local_hub):
    local_hub.add_files('org/carded', {'README.md': '---\nlicense: mit\n---\n# My own card\n'})
    hub.push_to_hub(make_model(), 'org/carded')
    assert local_hub.files('org/carded')['README.md'].decode().endswith('# My own card\n')
    hub.push_to_hub(make_model(seed=5), 'org/carded', replace_card=True, commit_message='new card')
    assert '# Model card for carded' in local_hub.files('org/carded')['README.md'].decode()


def test_new_head_from_hub_checkpoint(local_hub, saved_dir: Path):
    local_hub.add_folder('org/base', saved_dir)
    source = timm.create_model('hf-hub:org/base', pretrained=True)
    tuned = hub.create_model_from_hub('org/base', num_classes=3)
    assert tuned.num_classes == 3
    head = set(classifier_names(tuned, None))
    for k, v in tuned.state_dict().items():
        if not any(k.startswith(h + '.') for h in head):
            assert torch.equal(v, source.state_dict()[k]), k


# ------------------------------------------------------------------------------------------------
# pretrained tags whose hf_hub_id names a repo on the (local) Hub
# ------------------------------------------------------------------------------------------------
def _publish_timm_weights(local_hub, tmp_path: Path, tagged_name: str) -> torch.nn.Module:
    """Serve timm's own model (random weights) as the repo a pretrained tag's hf_hub_id names."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tagged_name).to_dict()
    source_name = cfg['hf_hub_id'].split('/', 1)[1]  # e.g. "resnet18.a1_in1k"
    torch.manual_seed(11)
    source = timm.create_model(source_name.split('.')[0], num_classes=cfg['num_classes']).eval()
    safetensors.torch.save_file(source.state_dict(), tmp_path / 'model.safetensors')
    (tmp_path / 'config.json').write_text(json.dumps({'architecture': source_name.split('.')[0],
                                                       'num_classes': cfg['num_classes']}))
    local_hub.add_folder(cfg['hf_hub_id'], tmp_path)
    return source


def test_timm_pretrained_tag_served_by_local_hub(local_hub, tmp_path: Path):
    source = _publish_timm_weights(local_hub, tmp_path, 'test_resnet.r160_in1k')
    model = timm.create_model('test_resnet.r160_in1k', pretrained=True)
    assert torch.equal(logits(model), logits(source))
    assert local_hub.requests_for('GET', '/timm/test_resnet.r160_in1k/resolve/main/model.safetensors')


def test_metalayers_pretrained_tag_served_by_local_hub(local_hub, tmp_path: Path):
    tags = [t for t in timm.list_pretrained('metalayers_resnet*')
            if timm.models.get_pretrained_cfg(t).hf_hub_id]
    assert tags, 'no metalayers_resnet* pretrained tag points at the Hub (hf_hub_id)'
    small = sorted(tags, key=lambda t: ('18' not in t, t))[0]
    source = _publish_timm_weights(local_hub, tmp_path, small)
    model = timm.create_model(small, pretrained=True)
    torch.testing.assert_close(logits(model), logits(source), atol=1e-4, rtol=0)
    hf_hub_id = timm.models.get_pretrained_cfg(small).hf_hub_id
    assert local_hub.requests_for('GET', f'/{hf_hub_id}/resolve/main/model.safetensors')
    # the same timm-named checkpoint through the checked loader, from the Hub repo id
    fresh = timm.create_model(small.split('.')[0])
    hub.load_weights(fresh, hf_hub_id)
    torch.testing.assert_close(logits(fresh), logits(source), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------
# safe loading: pickles
# ------------------------------------------------------------------------------------------------
def test_pickle_checkpoint_refused_unless_opted_in(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(hub.ALLOW_PICKLE_ENV, raising=False)
    model = make_model(seed=4)
    torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
    target = make_model(seed=8)
    before = snapshot(target)
    for source in (tmp_path / 'pytorch_model.bin', tmp_path):
        with pytest.raises(UnsafeCheckpointError) as err:
            hub.load_weights(target, source)
        msg = str(err.value)
        assert 'pytorch_model.bin' in msg and 'pickle' in msg and 'arbitrary code' in msg
        assert 'allow_pickle=True' in msg and hub.ALLOW_PICKLE_ENV in msg
        assert_unchanged(target, before)

    hub.load_weights(target, tmp_path / 'pytorch_model.bin', allow_pickle=True)
    assert torch.equal(logits(target), logits(model))

    monkeypatch.setenv(hub.ALLOW_PICKLE_ENV, '1')
    other = make_model(seed=8)
    hub.load_weights(other, tmp_path)  # the folder's pytorch_model.bin, via the env var
    assert torch.equal(logits(other), logits(model))


class _Exploit:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_pickle_with_code_is_refused_even_when_opted_in(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({'fc.weight': _Exploit()}, tmp_path / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'evil\.pth.*weights_only=True'):
        hub.read_state_dict(tmp_path / 'evil.pth', allow_pickle=True)
    assert not (tmp_path / 'pwned').exists()


def test_hub_repo_with_only_pickle_weights(local_hub, tmp_path: Path, saved_dir: Path):
    model = make_model(seed=6)
    torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
    local_hub.add_files('org/pickled', {'config.json': saved_dir / 'config.json',
                                        'pytorch_model.bin': tmp_path / 'pytorch_model.bin'})
    with pytest.raises(UnsafeCheckpointError, match="org/pickled.*only pickle weights \\(pytorch_model.bin\\)"):
        hub.create_model_from_hub('org/pickled')
    assert local_hub.requests_for('GET', 'pytorch_model.bin') == []  # never even downloaded
    loaded = hub.create_model_from_hub('org/pickled', allow_pickle=True)
    assert torch.equal(logits(loaded), logits(model))


# ------------------------------------------------------------------------------------------------
# safe loading: bad files and repos, each with one clear error
# ------------------------------------------------------------------------------------------------
def test_truncated_safetensors(local_hub, tmp_path: Path, saved_dir: Path):
    data = (saved_dir / 'model.safetensors').read_bytes()
    (tmp_path / 'model.safetensors').write_bytes(data[:len(data) // 2])
    target = make_model(seed=2)
    before = snapshot(target)
    with pytest.raises(CorruptCheckpointError, match=r'model\.safetensors.*truncated or corrupt'):
        hub.load_weights(target, tmp_path / 'model.safetensors')
    assert_unchanged(target, before)

    (tmp_path / 'garbage.safetensors').write_bytes(b'not a safetensors file at all')
    with pytest.raises(CorruptCheckpointError, match='garbage.safetensors'):
        hub.read_state_dict(tmp_path / 'garbage.safetensors')

    local_hub.add_files('org/truncated', {'config.json': saved_dir / 'config.json',
                                          'model.safetensors': data[:len(data) - 100]})
    with pytest.raises(CorruptCheckpointError, match='model.safetensors'):
        hub.create_model_from_hub('org/truncated')


def test_corrupted_cache_is_detected(local_hub, saved_dir: Path):
    local_hub.add_folder('org/cache-rot', saved_dir)
    path = Path(hf_hub_download('org/cache-rot', 'model.safetensors'))
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped bit of weight data
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match='cache is corrupt.*force_download=True'):
        hub.create_model_from_hub('org/cache-rot')


def test_repo_without_weights(local_hub, saved_dir: Path):
    local_hub.add_files('org/empty', {'config.json': saved_dir / 'config.json', 'README.md': 'hi'})
    with pytest.raises(MissingWeightsError, match="org/empty.*model.safetensors"):
        hub.create_model_from_hub('org/empty')
    with pytest.raises(MissingWeightsError, match="org/empty"):
        hub.load_weights(make_model(), 'org/empty')
    assert isinstance(MissingWeightsError('x'), FileNotFoundError)

    local_hub.add_files('org/no-config', {'model.safetensors': saved_dir / 'model.safetensors'})
    with pytest.raises(MissingFileError, match='no config.json .*has weights but nothing says which architecture'):
        hub.create_model_from_hub('org/no-config')
    assert local_hub.requests_for('GET', '/org/no-config/resolve/main/model.safetensors') == []
    with pytest.raises(MissingWeightsError, match="org/empty.*no weights file 'other.safetensors'"):
        hub.load_weights(make_model(), 'org/empty', filename='other.safetensors')
    with pytest.raises(MissingFileError, match="'org/nope' was not found"):
        hub.create_model_from_hub('org/nope')
    with pytest.raises(MissingFileError, match="no revision 'v9'"):
        hub.create_model_from_hub('org/empty@v9')


def test_config_with_unknown_architecture(local_hub, saved_dir: Path):
    cfg = json.loads((saved_dir / 'config.json').read_text())
    cfg['architecture'] = 'metalayers_resnet_does_not_exist'
    local_hub.add_files('org/alien', {'config.json': json.dumps(cfg),
                                      'model.safetensors': saved_dir / 'model.safetensors'})
    with pytest.raises(UnknownArchitectureError, match="config.json.*'metalayers_resnet_does_not_exist'"):
        hub.create_model_from_hub('org/alien')
    local_hub.add_files('org/badjson', {'config.json': '{"architecture": ', 'model.safetensors': b''})
    with pytest.raises(CorruptCheckpointError, match='config.json .*not valid JSON'):
        hub.create_model_from_hub('org/badjson')


def test_num_classes_mismatch(local_hub, saved_dir: Path):
    target = make_model(num_classes=NUM_CLASSES + 3)
    before = snapshot(target)
    with pytest.raises(CheckpointMismatchError,
                       match=rf'{NUM_CLASSES}-class head .* model has {NUM_CLASSES + 3} classes'):
        hub.load_weights(target, saved_dir)
    assert_unchanged(target, before)

    # replacing the head: trunk loaded, head left as it was
    hub.load_weights(target, saved_dir, replace_head=True)
    saved = safetensors.torch.load_file(saved_dir / 'model.safetensors')
    head = set(classifier_names(target, None))
    for k, v in target.state_dict().items():
        if any(k.startswith(h + '.') for h in head):
            assert torch.equal(v, before[k])
        else:
            assert torch.equal(v, saved[k])

    # a config.json whose num_classes disagrees with model_args' (as plain timm's save_for_hf writes both)
    cfg = json.loads((saved_dir / 'config.json').read_text())
    assert 'num_classes' not in cfg.get('model_args', {})  # ours: at the root only (transformers passes it too)
    cfg.setdefault('model_args', {})['num_classes'] = NUM_CLASSES
    cfg['num_classes'] = cfg['pretrained_cfg']['num_classes'] = NUM_CLASSES + 1
    local_hub.add_files('org/inconsistent', {'config.json': json.dumps(cfg),
                                             'model.safetensors': saved_dir / 'model.safetensors'})
    with pytest.raises(CorruptCheckpointError, match=rf'num_classes={NUM_CLASSES + 1} .*model_args.*{NUM_CLASSES}'):
        hub.create_model_from_hub('org/inconsistent')
    cfg.get('model_args', {}).pop('num_classes', None)
    local_hub.add_files('org/liar', {'config.json': json.dumps(cfg),
                                     'model.safetensors': saved_dir / 'model.safetensors'})
    with pytest.raises(CheckpointMismatchError, match=rf"{NUM_CLASSES}-class head.*{NUM_CLASSES + 1} classes"):
        hub.create_model_from_hub('org/liar')


def test_missing_and_unexpected_keys_name_the_keys(tmp_path: Path, saved_dir: Path):
    sd = safetensors.torch.load_file(saved_dir / 'model.safetensors')
    dropped = sorted(sd)[0]
    sd.pop(dropped)
    sd['bogus.weight'] = torch.zeros(1)
    safetensors.torch.save_file(sd, tmp_path / 'model.safetensors')
    target = make_model(seed=2)
    before = snapshot(target)
    with pytest.raises(CheckpointMismatchError) as err:
        hub.load_weights(target, tmp_path / 'model.safetensors', filter_fn=lambda sd, model: sd)
    assert dropped in str(err.value) and 'bogus.weight' in str(err.value)
    assert_unchanged(target, before)


def test_missing_network(local_hub, saved_dir: Path, monkeypatch):
    import time
    import types

    from huggingface_hub.utils import _http

    # huggingface_hub retries a refused connection with exponential backoff; skip the waiting
    sleeps = []
    fast_time = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith('_')})
    fast_time.sleep = sleeps.append
    monkeypatch.setattr(_http, 'time', fast_time)
    local_hub.add_folder('org/gone', saved_dir)
    local_hub.stop()
    with pytest.raises(HubConnectionError, match=f"could not reach the Hub at {local_hub.url}.*'config.json'"):
        hub.create_model_from_hub('org/gone')
    with pytest.raises(HubConnectionError, match='model.safetensors'):
        hub.load_weights(make_model(), 'org/gone')
    assert sleeps  # the real retry path ran


def test_network_guard_blocks_everything_but_loopback(local_hub):
    with pytest.raises(ConnectionRefusedError, match='test network guard'):
        socket.create_connection(('93.184.216.34', 80), timeout=1)


def test_bad_arguments(tmp_path: Path):
    model = make_model()
    with pytest.raises(TypeError, match='source must be a path, a Hub repo id or a state dict'):
        hub.load_weights(model, 42)
    with pytest.raises(TypeError, match='model must be a torch.nn.Module'):
        hub.load_weights('model', tmp_path)
    with pytest.raises(MissingFileError, match='neither an existing file or folder nor a Hub repo id'):
        hub.load_weights(model, tmp_path / 'missing.safetensors')
    with pytest.raises(TypeError, match='allow_pickle must be a bool'):
        hub.load_weights(model, tmp_path, allow_pickle='yes')
    with pytest.raises(MissingWeightsError, match='has no weights file'):
        hub.load_weights(model, tmp_path)
    (tmp_path / 'weights.npz').write_bytes(b'x')
    with pytest.raises(ValueError, match="weights.npz' is not a checkpoint"):
        hub.read_state_dict(tmp_path / 'weights.npz')
    with pytest.raises(ValueError, match='repo id must look like'):
        hub.create_model_from_hub('a/b/c')
    with pytest.raises(ValueError, match='revision given twice'):
        hub.create_model_from_hub('org/name@v1', revision='v2')
    with pytest.raises(ValueError, match='pretrained_cfg cannot be combined'):
        hub.create_model_from_hub('org/name', pretrained_cfg={'x': 1})
    with pytest.raises(ValueError, match=r'input_size must be \(C, H, W\)'):
        hub.count_macs(model, (224, 224))
    assert issubclass(UnsafeCheckpointError, HubLoadError) and issubclass(HubLoadError, RuntimeError)


def test_in_chans_adapted_like_timm(local_hub, saved_dir: Path):
    local_hub.add_folder('org/rgb', saved_dir)
    reference = timm.create_model('hf-hub:org/rgb', pretrained=True, in_chans=1)  # timm's own adaptation
    gray = hub.create_model_from_hub('org/rgb', in_chans=1)
    x = torch.randn(1, 1, IMG, IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(gray.eval()(x), reference.eval()(x))
