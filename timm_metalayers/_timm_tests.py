"""Hooks for running timm's own model tests on this package's models: ``pytest -p timm_metalayers ...``.

A model family that cannot meet one of timm's tests declares it with ``skip_timm_test(test, models, reason)``
next to its models (and repeats the reason in its README section); the test is then reported as skipped with
that reason instead of failing. Nothing here runs unless pytest loads the package as a plugin.
"""
import fnmatch
import os
from typing import Any, Callable, List, Optional, Tuple

_Skip = Tuple[str, str, str, Optional[Callable[[], bool]]]
_SKIPS: List[_Skip] = []


def skip_timm_test(test: str, models: str, reason: str, *, when: Optional[Callable[[], bool]] = None) -> None:
    """Skip timm's test function ``test`` (a glob) for the models matching ``models`` (a glob over
    ``model_name``, tags included), with ``reason``; ``when`` makes the skip conditional (checked at collection)."""
    for value, argname in ((test, 'test'), (models, 'models'), (reason, 'reason')):
        if not isinstance(value, str) or not value:
            raise TypeError(f'{argname} must be a non-empty string, got {value!r}')
    if when is not None and not callable(when):
        raise TypeError(f'when must be a callable or None, got {when!r}')
    _SKIPS.append((test, models, reason, when))


def hub_tests_off() -> bool:
    """True unless ``TIMM_METALAYERS_HUB_TESTS=1`` opts in to tests that download weights from the Hub
    (tests here never reach the network by default)."""
    return os.environ.get('TIMM_METALAYERS_HUB_TESTS', '').strip() != '1'


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
                    and (when is None or when()):
                item.add_marker(pytest.mark.skip(reason=reason))
                break


__all__ = ['skip_timm_test', 'hub_tests_off', 'pytest_collection_modifyitems']
