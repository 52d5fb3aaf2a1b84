"""Helpers the family parity tests share: timm's model with random weights saved as safetensors, ours
loaded from that file through ``pretrained=True``, and the full key mapping on the meta device."""
import importlib
from typing import Callable, Sequence, Tuple

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from random_weights import randomize_weights


def smallest_per_family(names: Sequence[str]) -> list:
    """The model with the fewest parameters of each family module (counted on the meta device)."""
    from timm.models import model_entrypoint
    best = {}
    for name in names:
        count = sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
        module = model_entrypoint(name).__module__
        if module not in best or count < best[module][0]:
            best[module] = (count, name)
    return sorted(name for _, name in best.values())


def save_timm_checkpoint(ref: nn.Module, path) -> Tuple[nn.Module, str]:
    """``ref`` with random weights (eval mode), saved as safetensors at ``path``."""
    randomize_weights(ref)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, str(path)


def timm_checkpoint(arch: str, path, **kwargs) -> Tuple[nn.Module, str]:
    """timm's registered ``arch`` (``kwargs`` to ``create_model``) with random weights, saved at ``path``."""
    return save_timm_checkpoint(timm.create_model(arch, **kwargs), path)


def ours_pretrained(arch: str, path: str, **kwargs) -> nn.Module:
    """Our twin of ``arch`` loaded from ``path`` the way users load timm's Hub weights, in eval mode."""
    return timm.create_model(f'metalayers_{arch}', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


def load_through_filter(ours: nn.Module, ref: nn.Module) -> nn.Module:
    """``ref``'s state dict loaded into ``ours`` through ``ours``'s family checkpoint filter (eval mode)."""
    family = importlib.import_module(type(ours).__module__)
    ours.load_state_dict(family.checkpoint_filter_fn(ref.state_dict(), ours))
    return ours.eval()


def assert_full_mapping(arch: str, checkpoint_filter_fn: Callable) -> None:
    """Every key of timm's full-size ``arch`` maps onto ours with its shape; equal parameter counts (meta
    device: nothing allocated)."""
    with torch.device('meta'):
        ref = timm.create_model(arch)
        ours = timm.create_model(f'metalayers_{arch}')
    mapped = checkpoint_filter_fn(ref.state_dict(), ours)
    target = ours.state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One torch thread for the module's tests (import it into a test module to use it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same_outputs(ours: nn.Module, ref: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> None:
    """Equal logits and equal pre-logits features (``forward_head(..., pre_logits=True)``)."""
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= tol
        assert max_diff(ours.forward_head(ours.forward_features(x), pre_logits=True),
                        ref.forward_head(ref.forward_features(x), pre_logits=True)) <= tol
