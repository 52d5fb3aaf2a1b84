"""Shared checks of a twin family against timm: a random timm checkpoint written as safetensors, our model
loaded from it through timm's factory, and the full key/shape mapping of big variants on the meta device."""
import re
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import timm_metalayers  # noqa: F401  (registers the models)
from random_weights import randomize_weights
from timm_metalayers.state_dict import CheckpointMismatchError


def timm_checkpoint(arch: str, directory, gain: float = 2.0, **kwargs) -> Tuple[nn.Module, str]:
    """timm's ``arch`` with random weights (eval mode), and the safetensors file of its state dict."""
    ref = randomize_weights(timm.create_model(arch, **kwargs), gain=gain)
    path = directory / f'{arch}.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, str(path)


def ours_from_file(arch: str, path: str, **kwargs) -> nn.Module:
    """Our twin of ``arch`` with the weights of ``path``, loaded as a user would (eval mode)."""
    return timm.create_model(f'metalayers_{arch}', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


def assert_logits_close(ours: nn.Module, ref: nn.Module, size: Tuple[int, int], batch: int = 2) -> None:
    """Equal logits and features (max abs difference <= 1e-4, relative to the logits' scale)."""
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
        assert got.shape == expected.shape
        scale = max(1.0, expected.abs().max().item())
        assert (got - expected).abs().max().item() <= 1e-4 * scale, size
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True),
                                   rtol=1e-4, atol=1e-4 * scale)


def assert_twin(arch: str, ref: nn.Module, path: str, *sizes: Tuple[int, int]) -> nn.Module:
    """Our twin of ``arch`` loaded from ``path`` (``ref``'s weights) has ``ref``'s parameter count and its logits at
    each of ``sizes`` (a batch of 2 at the first, 1 at the others); returns our model."""
    ours = ours_from_file(arch, path)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    for i, size in enumerate(sizes):
        assert_logits_close(ours, ref, size, batch=1 if i else 2)
    return ours


def assert_meta_mapping(arch: str, checkpoint_filter_fn: Callable) -> Dict[str, torch.Tensor]:
    """Every key of timm's ``arch`` maps onto our twin with its shape, and every key of ours is provided,
    checked on the meta device (no weights, no compute)."""
    ref = timm.create_model(arch, device='meta')
    ours = timm.create_model(f'metalayers_{arch}', device='meta')
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    mapped = checkpoint_filter_fn(ref.state_dict(), ours)
    target = ours.state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    return mapped


def assert_tags_are_timms(prefix_archs, first_conv: str = 'stem.0') -> None:
    """Our pretrained tags are exactly timm's for each arch, pointing at timm's Hub safetensors with its
    preprocessing."""
    for arch in prefix_archs:
        theirs = {t.split('.', 1)[1] for t in timm.list_pretrained(f'{arch}.*') if t.split('.')[0] == arch}
        ours = {t.split('.', 1)[1] for t in timm.list_pretrained(f'metalayers_{arch}.*')
                if t.split('.')[0] == f'metalayers_{arch}'}
        assert theirs and ours == theirs, arch
        for tag in ours:
            cfg = timm.models.get_pretrained_cfg(f'metalayers_{arch}.{tag}')
            ref = timm.models.get_pretrained_cfg(f'{arch}.{tag}')
            assert cfg.hf_hub_id == f'timm/{arch}.{tag}' and cfg.hf_hub_filename == 'model.safetensors'
            assert not cfg.url
            for field in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'num_classes'):
                assert getattr(cfg, field) == getattr(ref, field), (arch, tag, field)
            assert cfg.first_conv == first_conv and cfg.classifier == 'head.fc'


def assert_adapts_in_chans_and_head(arch: str, path: str, size: int = 64, **kwargs) -> nn.Module:
    """Loaded with ``in_chans=1`` and ``num_classes=0``, our twin equals timm's loaded the same way (timm adapts the
    first conv, drops the classifier); with ``num_classes=5`` it gives 5 logits. Returns the 1-channel model."""
    kw = dict(pretrained=True, pretrained_cfg_overlay=dict(file=path), in_chans=1, **kwargs)
    ref1 = timm.create_model(arch, num_classes=0, **kw).eval()
    ours1 = timm.create_model(f'metalayers_{arch}', num_classes=0, **kw).eval()
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        expected = ref1(x)
        torch.testing.assert_close(ours1(x), expected, rtol=1e-4, atol=1e-4 * max(1.0, expected.abs().max().item()))
        assert timm.create_model(f'metalayers_{arch}', num_classes=5, **kw).eval()(x).shape == (1, 5)
    return ours1


def assert_create_model_refuses(model_name: str, state_dict: Dict[str, torch.Tensor], directory, *,
                                 drop_prefix: str, match: str) -> None:
    """``state_dict`` without the keys under ``drop_prefix``, saved as a file and loaded through timm's
    ``create_model`` as a user loads weights, is a ``CheckpointMismatchError`` matching ``match``, not a half-loaded
    model."""
    path = str(directory / 'broken.safetensors')
    save_file({k: v.contiguous() for k, v in state_dict.items() if not k.startswith(drop_prefix)}, path)
    with pytest.raises(CheckpointMismatchError, match=match):
        timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=path))


def assert_filter_rejects(checkpoint_filter_fn: Callable, model: nn.Module, state_dict: Dict[str, torch.Tensor], *,
                          missing: Iterable[str] = (), extra: Iterable[str] = (),
                          wrong: Optional[Dict[str, Sequence[int]]] = None, names: Iterable[str] = ()) -> None:
    """The filter refuses ``state_dict`` broken three ways (the keys ``missing`` left out, the keys ``extra`` added,
    the keys of ``wrong`` given those shapes) with one ``CheckpointMismatchError`` in which each of ``names`` (a regex:
    our key a missing or mis-shaped one maps to, the extra key itself) is found; and it loads the model's own state
    dict unchanged."""
    device = next(iter(state_dict.values())).device
    missing = set(missing)
    broken = {k: v for k, v in state_dict.items() if k not in missing}
    broken.update({k: torch.zeros(1, device=device) for k in extra})
    broken.update({k: torch.zeros(tuple(shape), device=device) for k, shape in (wrong or {}).items()})
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn(broken, model)
    for name in names:
        assert re.search(name, str(err.value)), (name, str(err.value))
    own = model.state_dict()
    assert list(checkpoint_filter_fn(own, model)) == list(own)
