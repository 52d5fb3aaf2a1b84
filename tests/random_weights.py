"""The one weight randomiser of the tests: random values in every tensor of a state dict, so that a
mis-mapped or lost key (norm statistics included) always shows in the outputs."""
import math

import torch
from torch import nn


def randomize_weights(model: nn.Module, seed: int = 0, gain: float = 1.0) -> nn.Module:
    """Fill every floating-point tensor of ``model``'s state dict in place and return the model in eval mode.

    Weights of rank >= 2 are normal with variance ``gain / fan_in`` (``gain=2`` keeps activations O(1)
    through long ReLU stacks); norm scales are near 1; biases, running means, tokens and position embeddings
    are small; running variances lie in [0.5, 1.5].
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith('running_var'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith('.weight') and tensor.dim() == 1:  # norm scales
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.dim() <= 1 or tensor.shape[0] == 1:  # biases, running means, class token, pos embed
                tensor.copy_(0.2 * noise)
            else:
                tensor.copy_(noise * math.sqrt(gain / tensor[0].numel()))
    return model.eval()
