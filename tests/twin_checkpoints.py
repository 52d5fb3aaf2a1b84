"""Random-weight timm checkpoints for the parity tests of the twins, written once per test session."""
import functools
from typing import Tuple

import timm
from safetensors.torch import save_file
from torch import nn

from random_weights import randomize_weights


@functools.lru_cache(maxsize=None)
def random_timm_checkpoint(name: str, root: str) -> Tuple[nn.Module, str]:
    """timm's ``name`` with random weights (eval mode) and the safetensors file of its state dict in ``root``."""
    ref = randomize_weights(timm.create_model(name))
    path = f'{root}/{name}.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    return ref, path


def load_twin(name: str, path: str, **kwargs) -> nn.Module:
    """Our ``metalayers_<name>`` with the checkpoint at ``path``, through its filter (timm's pretrained path)."""
    return timm.create_model(f'metalayers_{name}', pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)
