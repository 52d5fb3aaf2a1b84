"""Metalhead's small utilities: inputscale, addact / actadd (connections), flatten_chains, swapdims."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timm_metalayers.layers import (ActAdd, AddAct, InputScale, SwapDims, actadd, addact, conv_norm, flatten_chains,
                                    inputscale, swapdims)


# ---------------------------------------------------------------- inputscale

def test_inputscale_is_activation_of_scaled_input():
    x = torch.randn(2, 3, 4, 4)
    layer = inputscale(0.17, activation='relu')
    assert isinstance(layer, InputScale) and not list(layer.parameters())
    torch.testing.assert_close(layer(x), F.relu(0.17 * x))
    torch.testing.assert_close(inputscale(-2)(x), -2 * x)  # no activation: a plain scale
    torch.testing.assert_close(nn.Sequential(nn.Identity(), inputscale(0.5, activation=torch.tanh))(x),
                               torch.tanh(0.5 * x))


@pytest.mark.parametrize('scale,exc,match', [
    ('0.5', TypeError, r"scale must be a number, got '0\.5'"),
    (float('nan'), ValueError, r'scale must be a finite number, got nan'),
    (True, TypeError, r'scale must be a number, got True'),
])
def test_inputscale_errors(scale, exc, match):
    with pytest.raises(exc, match=match):
        inputscale(scale)


# ---------------------------------------------------------------- addact / actadd

def test_addact_and_actadd_as_functions():
    a, b, c = torch.randn(3, 2, 5)
    torch.testing.assert_close(addact('relu', a, b), F.relu(a + b))
    torch.testing.assert_close(addact(torch.tanh, a, b, c), torch.tanh(a + b + c))
    torch.testing.assert_close(actadd('relu', a, b), F.relu(a) + F.relu(b))
    torch.testing.assert_close(actadd(torch.sigmoid, a, b, c), torch.sigmoid(a) + torch.sigmoid(b) + torch.sigmoid(c))
    torch.testing.assert_close(addact(None, a, b), a + b)
    a_before = a.clone()
    actadd(nn.ReLU, a, b)
    assert torch.equal(a, a_before)  # the inputs are not activated in place


def test_addact_and_actadd_as_modules():
    a, b = torch.randn(2, 2, 5)
    join = addact('relu')  # Metalhead's addact$relu
    assert isinstance(join, AddAct) and isinstance(addact(), AddAct)
    torch.testing.assert_close(join(a, b), F.relu(a + b))
    join = actadd('gelu')
    assert isinstance(join, ActAdd)
    torch.testing.assert_close(join(a, b), F.gelu(a) + F.gelu(b))
    torch.testing.assert_close(addact()(a, b), F.relu(a + b))  # ReLU by default, as Metalhead


class Residual(nn.Module):
    """A residual block that takes its join as an argument, as Metalhead's resnet takes `connection`."""

    def __init__(self, planes: int, connection: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*conv_norm(3, planes, planes, None, pad=1))
        self.connection = connection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.connection(self.body(x), x)


@pytest.mark.parametrize('make', [lambda: addact('relu'), lambda: actadd('relu')])
def test_connection_in_a_residual_block_scripts_and_compiles(make):
    torch.manual_seed(0)
    block = Residual(4, make()).eval()
    x = torch.randn(2, 4, 6, 6)
    expected = (F.relu(block.body(x) + x) if isinstance(block.connection, AddAct)
                else F.relu(block.body(x)) + F.relu(x))
    torch.testing.assert_close(block(x), expected)
    torch.testing.assert_close(torch.jit.script(block)(x), expected)
    torch.testing.assert_close(torch.compile(block, fullgraph=True, backend='aot_eager')(x), expected)


def test_connection_errors():
    with pytest.raises(TypeError, match=r'addact adds tensors; argument 2 after the activation is 3'):
        addact('relu', torch.ones(1), 3)
    with pytest.raises(ValueError, match=r"activation='nosuch'"):
        actadd('nosuch')


# ---------------------------------------------------------------- flatten_chains

def test_flatten_chains_opens_nested_sequentials_and_drops_identities():
    conv, bn, act, fc = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Linear(4, 2)
    model = nn.Sequential(nn.Sequential(conv, nn.Identity(), nn.Sequential(bn, act)), nn.Identity(), fc)
    layers = flatten_chains(model)
    assert layers == [conv, bn, act, fc] and layers[0] is conv  # the same modules, not copies
    assert flatten_chains(fc) == [fc] and flatten_chains(nn.Identity()) == []
    assert [type(m) for m in flatten_chains([*conv_norm(3, 4, 8), nn.Sequential(nn.Flatten())])] == \
        [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Flatten]
    x = torch.randn(2, 3, 5, 5)
    flat = nn.Sequential(*layers[:3]).eval()
    torch.testing.assert_close(flat(x), model[0].eval()(x))


def test_flatten_chains_errors():
    with pytest.raises(TypeError, match=r"flatten_chains takes an nn.Module or a list of them, got 'relu'"):
        flatten_chains('relu')
    with pytest.raises(TypeError, match=r'flatten_chains takes modules, got an entry 3'):
        flatten_chains([nn.ReLU(), 3])


# ---------------------------------------------------------------- swapdims

def test_swapdims_permutes_and_composes():
    x = torch.randn(2, 3, 4, 5)
    layer = swapdims((0, 2, 3, 1))
    assert isinstance(layer, SwapDims) and torch.equal(layer(x), x.permute(0, 2, 3, 1))
    # the ConvNeXt pattern: channels last for a LayerNorm over C, then back
    seq = nn.Sequential(swapdims([0, 2, 3, 1]), nn.LayerNorm(3), swapdims((0, 3, 1, 2)))
    torch.testing.assert_close(seq(x), F.layer_norm(x.permute(0, 2, 3, 1), [3]).permute(0, 3, 1, 2))
    torch.testing.assert_close(torch.jit.script(seq)(x), seq(x))


@pytest.mark.parametrize('call,exc,match', [
    (lambda: swapdims((0, 0, 1)), ValueError, r'perm must be a permutation of 0..2, got \(0, 0, 1\)'),
    (lambda: swapdims((1, 2)), ValueError, r'perm must be a permutation of 0..1, got \(1, 2\)'),
    (lambda: swapdims('021'), TypeError, r"perm must be a tuple of dimension indices, got '021'"),
    (lambda: swapdims((0, 1.0)), TypeError, r'perm must be a tuple of dimension indices'),
    (lambda: swapdims((0, 2, 1))(torch.randn(2, 3)), ValueError, r'SwapDims\(perm=\[0, 2, 1\]\) expects a 3-D input, '
                                                                  r'got shape \[2, 3\]'),
])
def test_swapdims_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
