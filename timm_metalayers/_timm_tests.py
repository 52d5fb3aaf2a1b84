"""Hooks for running timm's own model tests on this package's models: ``pytest -p timm_metalayers ...``.

A model family that cannot meet one of timm's tests gets a ``skip_timm_test(test, models, reason)`` line in
the skip table below (and the reason in its README section); the test is then reported as skipped with that
reason instead of failing. Model code imports nothing from here; nothing here runs unless pytest loads the
package as a plugin.
"""
import fnmatch
import functools
import inspect
import os
from typing import Any, Callable, List, Optional, Tuple

_Skip = Tuple[str, str, str, Optional[Callable[[], bool]]]
_SKIPS: List[_Skip] = []


def skip_timm_test(test: str, models: str, reason: str, *, when: Optional[Callable[[], bool]] = None) -> None:
    """Skip timm's test function ``test`` (a glob) for the models matching ``models`` (a glob over
    ``model_name``, tags included), with ``reason``; ``when`` makes the skip conditional (checked at collection;
    it may take the model name)."""
    for value, argname in ((test, 'test'), (models, 'models'), (reason, 'reason')):
        if not isinstance(value, str) or not value:
            raise TypeError(f'{argname} must be a non-empty string, got {value!r}')
    if when is not None and not callable(when):
        raise TypeError(f'when must be a callable (of nothing, or of the model name) or None, got {when!r}')
    _SKIPS.append((test, models, reason, when))


LARGE_MODEL_PARAMS = 50 * 10**6


@functools.lru_cache(maxsize=None)
def _is_large(model: str) -> bool:
    """More than ``LARGE_MODEL_PARAMS`` parameters (counted on the meta device, nothing allocated)."""
    import timm
    architecture = model.split('.')[0]
    return sum(p.numel() for p in timm.create_model(architecture, device='meta').parameters()) > LARGE_MODEL_PARAMS


def hub_tests_off() -> bool:
    """True unless ``TIMM_METALAYERS_HUB_TESTS=1`` opts in to tests that download weights from the Hub
    (tests here never reach the network by default)."""
    return os.environ.get('TIMM_METALAYERS_HUB_TESTS', '').strip() != '1'


# The skip table: timm's tests that cannot apply to a family, with the reason (the README repeats each).
# ViT: timm runs its own ViTs through test_model_default_cfgs_non_std, selected by name.
skip_timm_test(
    'test_model_default_cfgs', 'metalayers_vit_*',
    'a ViT\'s forward_features returns tokens (N, 1 + H*W, C) with the class token first, not a spatial map: '
    'there is no pool_size and global_pool="" cannot give a 4-D output. timm runs its own ViTs through '
    'test_model_default_cfgs_non_std instead (its "vit_*" filter misses the metalayers_ prefix); '
    'tests/test_vit.py runs those checks on these models.')
# ResMLP and gMLP: token features, and timm's non-std filters ('resmlp_*', 'gmlp_*') miss the prefix.
for _tokens_family in ('metalayers_resmlp_*', 'metalayers_gmlp_*'):
    skip_timm_test(
        'test_model_default_cfgs', _tokens_family,
        'an MLP mixer\'s forward_features returns tokens (N, L, C), not a spatial map: there is no pool_size and '
        'global_pool="" classifies every token (3-D output). timm runs its own resmlp_*/gmlp_* through '
        'test_model_default_cfgs_non_std instead (its filters miss the metalayers_ prefix; its "*mixer_*" filter '
        'does send metalayers_mixer_* there); tests/test_mlp_mixer.py checks the token outputs.')
skip_timm_test('test_model_*_pretrained', 'metalayers_vit_*',
               'downloads the real weights from the Hub and tests never reach the network '
               '(TIMM_METALAYERS_HUB_TESTS=1 runs it)', when=hub_tests_off)
skip_timm_test(
    'test_prune_intermediate_layers_contract', 'metalayers_*',
    f'a model over {LARGE_MODEL_PARAMS // 10**6}M parameters: for each of its taps the test deep-copies, runs and '
    'back-propagates the whole model (ViT-L/16 at its fixed 224 input: 6-11 CPU-minutes on a 2-core CPU, over the '
    'test\'s 360 s timeout); timm keeps this unmarked test out of its own CI. tests/test_model_api.py checks the '
    'same contract (pruned taps equal the unpruned ones, prune_head=False keeps the output, a pruned model trains '
    'every parameter) on every model at a small input; TIMM_METALAYERS_SLOW_TESTS=1 runs it here too.',
    when=lambda model: _is_large(model) and os.environ.get('TIMM_METALAYERS_SLOW_TESTS', '') != '1')
skip_timm_test(
    'test_model_default_cfgs', 'metalayers_vgg*',
    'VGG\'s pre-logits 7x7 conv runs on the map before the global pool, so without a pool the output is the '
    'conv\'s (N, 4096, 1, 1) map, not the (7, 7) pool_size; timm exempts its own VGG from these two checks '
    '(EARLY_POOL_MODELS, an isinstance test ours cannot meet). tests/test_vgg.py runs the other checks of this '
    'test on these models (num_features, head_hidden_size, pre_logits, reset_classifier, num_classes=0).')

# AlexNet: its head's hidden layers read the 6x6 pooled grid.
skip_timm_test(
    'test_model_default_cfgs', 'metalayers_alexnet',
    'AlexNet\'s two hidden layers read a 6x6 pooled grid (256 x 36 features), so global_pool=\'\' (no pool) has '
    'no meaning for its head: reset_classifier(0, \'\') raises HeadResetError and global_pool=\'\' a ValueError. '
    'tests/test_torchvision_twins.py checks the rest of this test (pool_size, num_features, pre_logits and '
    'num_classes=0 widths) on it.')


def share_cores_among_xdist_workers() -> None:
    """In a pytest-xdist worker, give torch (and the processes it starts) its share of the CPU cores:
    ``cores // workers`` threads, not every core in every worker (which oversubscribes the machine)."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0') or 0)
    if workers < 1:
        return
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = threads
    import torch
    torch.set_num_threads(int(threads))


def pytest_configure(config: Any) -> None:
    """pytest hook: timm's model tests under ``-n N`` share the cores as this package's own tests do."""
    share_cores_among_xdist_workers()


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    """pytest hook: mark the declared (test, model) pairs as skipped, with their reasons."""
    import pytest

    for item in items:
        callspec = getattr(item, 'callspec', None)
        model = callspec.params.get('model_name') if callspec is not None else None
        if not isinstance(model, str):
            continue
        test = getattr(item, 'originalname', None) or item.name
        for test_glob, model_glob, reason, when in _SKIPS:
            if fnmatch.fnmatchcase(test, test_glob) and fnmatch.fnmatchcase(model, model_glob) \
                    and (when is None or (when(model) if inspect.signature(when).parameters else when())):
                item.add_marker(pytest.mark.skip(reason=reason))
                break


__all__ = ['skip_timm_test', 'hub_tests_off', 'share_cores_among_xdist_workers', 'pytest_configure',
           'pytest_collection_modifyitems']
