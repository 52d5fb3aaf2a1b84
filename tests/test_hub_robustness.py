"""Hub loading under what a careless or unlucky user does: threads, crafted files, offline with an empty cache,
a restrictive or permissive umask. Every failure must be a documented ``HubLoadError`` subclass naming the file.

All Hub traffic goes to the loopback server of ``tests/hub_server.py`` (fixture ``local_hub``, which also gives
each test an empty ``HF_HOME``).
"""
from __future__ import annotations

import json
import os
import stat
import struct
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import hf_hub_download

import timm
import timm_metalayers  # noqa: F401  (registers the metalayers_* models)
from timm_metalayers import hub
from timm_metalayers.hub import CorruptCheckpointError, HubConnectionError, HubLoadError, MissingFileError

MODEL = 'metalayers_resnet18'
NUM_CLASSES = 5


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(MODEL, num_classes=NUM_CLASSES).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope='module')
def saved_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('saved') / 'model'
    hub.save_for_hub(make_model(), out, model_card=False)
    return out


def hub_backed_tag() -> str:
    """A registered metalayers pretrained tag whose weights come from a Hub repo (hf_hub_id)."""
    tags = [t for t in timm.list_pretrained('metalayers_resnet18*') if timm.models.get_pretrained_cfg(t).hf_hub_id]
    assert tags, 'no metalayers_resnet18 pretrained tag points at the Hub'
    return sorted(tags)[0]


# ------------------------------------------------------------------------------------------------
# threads: a local-only load must not switch the whole process offline
# ------------------------------------------------------------------------------------------------
def test_local_only_load_leaves_other_threads_online(local_hub, saved_dir: Path):
    local_hub.add_folder('org/local', saved_dir)
    expected = logits(hub.create_model_from_hub('org/local'))  # fills the cache
    files = {f'file_{i:02d}.txt': f'content {i}' for i in range(40)}
    local_hub.add_files('org/many', files)
    local_hub.clear_log()

    stop, loads, errors = threading.Event(), [], []

    def local_only_loads():
        try:
            while not stop.is_set():
                loads.append(hub.create_model_from_hub('org/local', pretrained=False, local_files_only=True))
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    worker = threading.Thread(target=local_only_loads)
    worker.start()
    try:
        while not loads and worker.is_alive():
            stop.wait(0.01)
        downloaded = {}
        for name in files:  # each file is new to the cache, so each is a real download
            try:
                downloaded[name] = Path(hf_hub_download('org/many', name)).read_text()
            except Exception as e:
                errors.append(e)
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert downloaded == files
    assert len(loads) >= 2  # the local-only loads really ran alongside the downloads
    assert local_hub.requests_for('HEAD', '/org/local/') == [] and local_hub.requests_for('GET', '/org/local/') == []
    # and a local-only load with weights gives the published model
    assert torch.equal(logits(hub.create_model_from_hub('org/local', local_files_only=True)), expected)


# ------------------------------------------------------------------------------------------------
# crafted safetensors headers
# ------------------------------------------------------------------------------------------------
def _crafted_safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(raw)) + raw + data)
    return path


@pytest.mark.parametrize('offsets', ['ab', [0], [0, 16, 20], None, ['0', '16'], [0.5, 16], [-1, 16], {'a': 1}],
                         ids=['string', 'length-1', 'length-3', 'null', 'string-items', 'float', 'negative', 'object'])
def test_crafted_data_offsets_are_corrupt_checkpoint_errors(tmp_path: Path, offsets):
    path = _crafted_safetensors(tmp_path / 'crafted.safetensors',
                                {'fc.weight': {'dtype': 'F32', 'shape': [4], 'data_offsets': offsets}}, bytes(16))
    with pytest.raises(CorruptCheckpointError, match=r'crafted\.safetensors'):
        hub.read_state_dict(path)
    target = make_model(seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CorruptCheckpointError, match=r'crafted\.safetensors'):
        hub.load_weights(target, path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_crafted_header_shapes_and_sizes(tmp_path: Path):
    cases = {
        'entry-not-object': ({'w': 5}, bytes(16)),
        'offsets-past-end': ({'w': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 32]}}, bytes(16)),
        'shape-disagrees': ({'w': {'dtype': 'F32', 'shape': [5], 'data_offsets': [0, 16]}}, bytes(16)),
        'trailing-bytes': ({'w': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0, 16]}}, bytes(24)),
        'header-a-list': ([1, 2], b''),
    }
    for name, (header, data) in cases.items():
        path = _crafted_safetensors(tmp_path / f'{name}.safetensors', header, data)
        with pytest.raises(CorruptCheckpointError, match=rf'{name}\.safetensors'):
            hub.read_state_dict(path)
    # and a well-formed file still reads
    safetensors.torch.save_file({'w': torch.arange(4.0)}, tmp_path / 'good.safetensors')
    assert torch.equal(hub.read_state_dict(tmp_path / 'good.safetensors')['w'], torch.arange(4.0))


# ------------------------------------------------------------------------------------------------
# malformed config.json
# ------------------------------------------------------------------------------------------------
def _config_with(saved_dir: Path, change) -> str:
    cfg = json.loads((saved_dir / 'config.json').read_text())
    change(cfg)
    return json.dumps(cfg)


CONFIG_CHANGES = {
    'pretrained_cfg-a-string': (lambda c: c.update(pretrained_cfg='resnet18'), 'pretrained_cfg must be a JSON object'),
    'pretrained_cfg-null': (lambda c: c.update(pretrained_cfg=None), 'pretrained_cfg must be a JSON object'),
    'classifier-an-int': (lambda c: c['pretrained_cfg'].update(classifier=5), 'pretrained_cfg.classifier'),
    'first_conv-an-int': (lambda c: c['pretrained_cfg'].update(first_conv=3), 'pretrained_cfg.first_conv'),
    'classifier-list-of-ints': (lambda c: c['pretrained_cfg'].update(classifier=[1, 2]), 'pretrained_cfg.classifier'),
    'input_size-too-short': (lambda c: c['pretrained_cfg'].update(input_size=[3, 64]), 'pretrained_cfg.input_size'),
    'unknown-field': (lambda c: c['pretrained_cfg'].update(colour='red'), 'fields timm does not know: colour'),
    'in_chans-a-string': (lambda c: c.update(model_args={'in_chans': 'rgb'}), 'model_args.in_chans'),
}


@pytest.mark.parametrize('case', sorted(CONFIG_CHANGES))
def test_malformed_config_is_a_corrupt_checkpoint_error(local_hub, saved_dir: Path, case: str):
    change, expected = CONFIG_CHANGES[case]
    local_hub.add_files('org/bad-config', {'config.json': _config_with(saved_dir, change),
                                           'model.safetensors': saved_dir / 'model.safetensors'})
    with pytest.raises(CorruptCheckpointError) as err:
        hub.create_model_from_hub('org/bad-config', in_chans=1)  # in_chans: the first_conv path is used too
    message = str(err.value)
    assert "config.json of Hub repo 'org/bad-config'" in message and expected in message
    assert '\n' not in message


# ------------------------------------------------------------------------------------------------
# offline with an empty cache: the error names the repository and the missing file
# ------------------------------------------------------------------------------------------------
def test_offline_empty_cache_names_repo_and_file(local_hub, saved_dir: Path):
    local_hub.add_folder('org/half', saved_dir)
    hf_hub_download('org/half', 'config.json')  # the config is cached, the weights are not
    tag = hub_backed_tag()
    hf_hub_id = timm.models.get_pretrained_cfg(tag).hf_hub_id
    local_hub.clear_log()
    with local_hub.offline():
        with pytest.raises(HubConnectionError) as err:
            hub.create_model_from_hub('org/absent')
        assert "'config.json' of Hub repo 'org/absent'" in str(err.value) and 'HF_HUB_OFFLINE=1' in str(err.value)
        with pytest.raises(HubConnectionError) as err:
            hub.create_model_from_hub('org/half')
        assert "'model.safetensors' of Hub repo 'org/half'" in str(err.value)
        with pytest.raises(HubConnectionError) as pretrained_err:
            timm.create_model(tag, pretrained=True)
    message = str(pretrained_err.value)
    assert isinstance(pretrained_err.value, HubLoadError)
    assert f"'model.safetensors' of Hub repo '{hf_hub_id}'" in message and tag in message
    assert 'HF_HUB_OFFLINE=1' in message and 'not in the local cache' in message
    for e in (err.value, pretrained_err.value):
        assert '\n' not in str(e)
    assert local_hub.state.requests == []


def test_pretrained_tag_missing_on_the_hub_names_the_repo(local_hub):
    tag = hub_backed_tag()
    hf_hub_id = timm.models.get_pretrained_cfg(tag).hf_hub_id
    with pytest.raises(MissingFileError, match=f"Hub repo '{hf_hub_id}' was not found"):
        timm.create_model(tag, pretrained=True)
    timm.create_model(tag, pretrained=False)  # no download, no error


# ------------------------------------------------------------------------------------------------
# exported files follow the umask
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077], ids=['022', '002', '077'])
def test_exported_files_follow_the_umask(tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        out = hub.save_for_hub(make_model(), tmp_path / 'export')
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in ('README.md', 'config.json', 'model.safetensors')}


def test_local_files_only_never_asks_the_hub(local_hub, saved_dir: Path):
    """Even the lookups that only word an error message stay off the network with local_files_only."""
    local_hub.add_files('org/config-only', {'config.json': saved_dir / 'config.json'})
    with pytest.raises(hub.MissingWeightsError, match="'org/config-only'"):
        hub.create_model_from_hub('org/config-only')  # online: caches config.json and that the weights are missing
    local_hub.clear_log()
    with pytest.raises(hub.MissingWeightsError, match="'org/config-only'"):
        hub.create_model_from_hub('org/config-only', local_files_only=True)
    with pytest.raises(HubConnectionError, match="'config.json' of Hub repo 'org/never-seen'.*local_files_only=True"):
        hub.create_model_from_hub('org/never-seen', local_files_only=True)
    assert local_hub.state.requests == []
