"""Downloading from the Hub with ``huggingface_hub``, its errors turned into one-line :class:`HubLoadError` s.

Each message names the repository and the file. Nothing here changes process-wide settings:
``local_files_only`` is passed to ``hf_hub_download`` per call, and with it (or ``HF_HUB_OFFLINE=1``) no
request is made at all.
"""
import hashlib
import re
from pathlib import Path
from typing import List, Optional, Tuple

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
    OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.file_download import _CACHED_NO_EXIST
from huggingface_hub.utils import validate_repo_id
from timm.models import resolve_pretrained_cfg

from ..state_dict import HubLoadError
from ._checks import PathLike
from .errors import CorruptCheckpointError, HubConnectionError, MissingFileError, MissingWeightsError, \
    UnsafeCheckpointError
from .files import PICKLE_WEIGHTS_NAMES, SAFE_WEIGHTS_NAME, is_pickle_name, pickle_refusal

__all__ = ['parse_repo_spec', 'describe_repo', 'hub_download', 'hub_error', 'hub_weights_file', 'hub_file_exists',
           'pretrained_weights_error']


def parse_repo_spec(spec: str, revision: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Split ``"hf-hub:org/name@rev"`` (prefix and revision optional) into ``(repo_id, revision)``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f'repo id must be a non-empty string like "org/name", got {spec!r}')
    repo = spec
    for prefix in ('hf-hub:', 'hf_hub:'):
        if repo.startswith(prefix):
            repo = repo[len(prefix):]
    if '@' in repo:
        repo, _, at_revision = repo.partition('@')
        if revision is not None and revision != at_revision:
            raise ValueError(f'revision given twice: {spec!r} names {at_revision!r} but revision={revision!r}')
        revision = at_revision or None
    if repo.count('/') != 1:
        raise ValueError(f'repo id must look like "org/name" (optionally "hf-hub:org/name@revision"), got {spec!r}')
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ValueError(f'invalid repo id {spec!r}: {e}') from None
    return repo, revision


def describe_repo(repo_id: str, revision: Optional[str]) -> str:
    """``Hub repo 'org/name'`` (with its revision), for messages."""
    return f'Hub repo {repo_id!r}' + (f' at revision {revision!r}' if revision else '')


def _offline_reason(local_files_only: bool) -> Optional[str]:
    if constants.HF_HUB_OFFLINE:
        return 'HF_HUB_OFFLINE=1'
    return 'local_files_only=True' if local_files_only else None


def hub_error(error: BaseException, repo_id: str, filename: str, *, revision: Optional[str],
              cache_dir: Optional[PathLike], local_files_only: bool = False) -> Optional[HubLoadError]:
    """The :class:`HubLoadError` for a ``huggingface_hub`` error met fetching ``filename``; None for any other."""
    where = f'{filename!r} of {describe_repo(repo_id, revision)}'
    cache = cache_dir or constants.HF_HUB_CACHE
    if isinstance(error, GatedRepoError):
        return HubLoadError(f'cannot access {where}: the repository is gated; accept its terms on the Hub and '
                            f'log in (huggingface-cli login or HF_TOKEN).')
    if isinstance(error, RepositoryNotFoundError):
        return MissingFileError(f'Hub repo {repo_id!r} was not found at {constants.ENDPOINT} (or it is private and '
                                f'no valid token was sent).')
    if isinstance(error, RevisionNotFoundError):
        return MissingFileError(f'Hub repo {repo_id!r} has no revision {revision!r}.')
    offline = _offline_reason(local_files_only) or (
        'HF_HUB_OFFLINE=1' if isinstance(error, OfflineModeIsEnabled) else None)
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)) and offline:
        return HubConnectionError(f'{where} is not in the local cache ({cache}) and downloads are disabled '
                                  f'({offline}). Download it once while online.')
    if isinstance(error, LocalEntryNotFoundError):
        return HubConnectionError(
            f'could not reach the Hub at {constants.ENDPOINT} to fetch {where}, and it is not in the local cache '
            f'({cache}). Check the network connection / HF_ENDPOINT, or download it once and use HF_HUB_OFFLINE=1.')
    if isinstance(error, EntryNotFoundError):
        return MissingFileError(f'Hub repo {repo_id!r} has no file {filename!r}.')
    if isinstance(error, HfHubHTTPError):
        return HubLoadError(f'the Hub at {constants.ENDPOINT} refused {where}: {str(error).splitlines()[0]}')
    return None


def pretrained_weights_error(error: BaseException, variant: str, build_kwargs: dict) -> Optional[HubLoadError]:
    """For ``timm.create_model(<tag>, pretrained=True)``: the :class:`HubLoadError` naming the tag, repository and
    file for a ``huggingface_hub`` error met while timm downloaded the tag's weights (None for any other error).

    ``build_kwargs`` are those ``build_model_with_cfg`` got (``pretrained_cfg``, ``pretrained_cfg_overlay``,
    ``cache_dir``); the tag's config is resolved the way timm resolves it.
    """
    cfg = resolve_pretrained_cfg(variant, build_kwargs.get('pretrained_cfg'),
                                 build_kwargs.get('pretrained_cfg_overlay'))
    if not cfg.hf_hub_id:
        return None
    repo_id, revision = parse_repo_spec(cfg.hf_hub_id)
    filename = cfg.hf_hub_filename or SAFE_WEIGHTS_NAME
    described = hub_error(error, repo_id, filename, revision=revision, cache_dir=build_kwargs.get('cache_dir'))
    if described is None:
        return None
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    return type(described)(f'cannot load the pretrained weights of {name}: {described}')


def _known_missing(error: BaseException, repo_id: str, filename: str, revision: Optional[str],
                   cache_dir: Optional[PathLike], local_files_only: bool) -> bool:
    """Whether ``error`` says the repository lacks ``filename`` (online, or as remembered by the cache)."""
    if isinstance(error, LocalEntryNotFoundError):
        return bool(_offline_reason(local_files_only)) and try_to_load_from_cache(
            repo_id, filename, cache_dir=cache_dir, revision=revision) is _CACHED_NO_EXIST
    return isinstance(error, EntryNotFoundError)


def hub_download(repo_id: str, filename: str, *, revision: Optional[str], cache_dir: Optional[PathLike],
                 local_files_only: bool, missing_ok: bool = False) -> Optional[Path]:
    """``hf_hub_download`` with its errors turned into :class:`HubLoadError` subclasses.

    Returns None for a file the repository does not have when ``missing_ok``.
    """
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, library_name='timm_metalayers'))
    except Exception as e:
        if missing_ok and _known_missing(e, repo_id, filename, revision, cache_dir, local_files_only):
            return None
        error = hub_error(e, repo_id, filename, revision=revision, cache_dir=cache_dir,
                          local_files_only=local_files_only)
        if error is None and isinstance(e, OSError):  # e.g. "Consistency check failed" on a short download
            error = HubConnectionError(f'downloading {filename!r} of {describe_repo(repo_id, revision)} failed: {e}')
        if error is None:
            raise
        raise error from e


def _verify_cached_blob(path: Path, repo_id: str, filename: str) -> None:
    """A cached LFS blob is named by its sha256: check the content still matches it."""
    blob = path.resolve()
    if blob.parent.name != 'blobs' or not re.fullmatch(r'[0-9a-f]{64}', blob.name):
        return
    digest = hashlib.sha256()
    with blob.open('rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        raise CorruptCheckpointError(
            f'the cached copy of {filename!r} from Hub repo {repo_id!r} ({blob}) does not match the sha256 the Hub '
            f'published for it: the cache is corrupt. Delete that file or call '
            f'hf_hub_download({repo_id!r}, {filename!r}, force_download=True).')


def _verified_download(repo_id: str, filename: str, **download) -> Optional[Path]:
    path = hub_download(repo_id, filename, missing_ok=True, **download)
    if path is not None:
        _verify_cached_blob(path, repo_id, filename)
    return path


def hub_weights_file(repo_id: str, *, revision: Optional[str], filename: Optional[str], allow_pickle: bool,
                     cache_dir: Optional[PathLike], local_files_only: bool) -> Path:
    """Download the weights file of a repository: ``filename``, model.safetensors, or a pickle when allowed."""
    download = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if filename is not None and is_pickle_name(filename) and not allow_pickle:
        raise UnsafeCheckpointError(pickle_refusal(f'{filename!r} of Hub repo {repo_id!r}'))
    candidates = [filename] if filename is not None else [SAFE_WEIGHTS_NAME]
    if filename is None and allow_pickle:
        candidates += PICKLE_WEIGHTS_NAMES
    for name in candidates:
        path = _verified_download(repo_id, name, **download)
        if path is not None:
            return path
    if filename is not None:
        raise MissingWeightsError(f'Hub repo {repo_id!r} has no weights file {filename!r}.')
    if allow_pickle:
        raise MissingWeightsError(f'Hub repo {repo_id!r} has no weights: neither {SAFE_WEIGHTS_NAME} nor any of '
                                  f'{", ".join(PICKLE_WEIGHTS_NAMES)}.')
    pickles = [] if local_files_only else _pickle_files_on_hub(repo_id, revision)
    if pickles:
        raise UnsafeCheckpointError(
            f'Hub repo {repo_id!r} has no {SAFE_WEIGHTS_NAME}, only pickle weights ({", ".join(pickles)}). '
            + pickle_refusal('them'))
    raise MissingWeightsError(f'Hub repo {repo_id!r} has no weights file: {SAFE_WEIGHTS_NAME} is missing.')


def hub_file_exists(repo_id: str, filename: str, revision: Optional[str]) -> bool:
    """A HEAD request, only used to word an error message (False when offline or unsure)."""
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        return HfApi().file_exists(repo_id, filename, revision=revision)
    except Exception:  # only used to improve an error message
        return False


def _pickle_files_on_hub(repo_id: str, revision: Optional[str]) -> List[str]:
    if constants.HF_HUB_OFFLINE:
        return []
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # only used to improve an error message
        return []
    return [f for f in files if is_pickle_name(f)]
