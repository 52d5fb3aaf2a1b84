"""gated_mlp_block and SpatialGatingUnit (gMLP), against timm's GatedMlp + SpatialGatingUnit; mlp_block's two
argument conventions (the guide's and timm's)."""
import functools

import pytest
import torch
from torch import nn
from timm.layers import GatedMlp, Mlp
from timm.models.mlp_mixer import SpatialGatingUnit as TimmSGU

from timm_metalayers.layers import LayerNormV2, SpatialGatingUnit, gated_mlp_block, mlp_block


def _randomize(module: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


@pytest.mark.parametrize('outplanes', [None, 24])
def test_gated_mlp_block_matches_timm_gated_mlp(outplanes):
    planes, hidden, npatches = 16, 48, 10
    norm = functools.partial(nn.LayerNorm, eps=1e-6)
    ours = gated_mlp_block(lambda p: SpatialGatingUnit(p, npatches, norm_layer=norm), planes, hidden, outplanes,
                           dropout_prob=0.1).eval()
    ref = GatedMlp(planes, hidden, outplanes, gate_layer=functools.partial(TimmSGU, seq_len=npatches, norm_layer=norm),
                   drop=0.1).eval()
    _randomize(ref)
    assert list(ours._modules) == ['fc1', 'act', 'drop1', 'gate', 'fc2', 'drop2']
    ours.load_state_dict(ref.state_dict())  # same names: timm's gMLP weights load as they are
    x = torch.randn(3, npatches, planes)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    assert ours(x).shape == (3, npatches, outplanes or planes) and ours.fc2.in_features == hidden // 2


def test_gated_mlp_block_train_mode_dropout_is_random_and_rescaled():
    block = gated_mlp_block(lambda p: SpatialGatingUnit(p, 8), 4, 8, dropout_prob=0.5).train()
    assert block.drop1.p == block.drop2.p == 0.5 and block.training
    x = torch.randn(2, 8, 4)
    assert not torch.equal(block(x), block(x))


@pytest.mark.parametrize('no_gate', [None, nn.Identity])
def test_gated_mlp_block_without_gate_is_mlp_block(no_gate):
    block = gated_mlp_block(no_gate, 8, 32, 4, activation='relu')
    assert list(block._modules) == ['fc1', 'act', 'drop1', 'fc2', 'drop2']
    assert block.fc2.in_features == 32 and block.fc2.out_features == 4


@pytest.mark.parametrize('call,exc,match', [
    (lambda: gated_mlp_block(lambda p: SpatialGatingUnit(p, 4), 8, 15), ValueError,
     r'hidden_planes must be even .* got 15'),
    (lambda: gated_mlp_block(SpatialGatingUnit(8, 4), 8, 16), TypeError, r'gate_layer must be a callable'),
    (lambda: gated_mlp_block(lambda p: 'gate', 8, 16), TypeError, r"gate_layer returned 'gate' for 16 planes"),
    (lambda: gated_mlp_block(None, 8, 16, dropout_prob=2.0), ValueError, r'dropout_prob must be in \[0, 1\]'),
    (lambda: gated_mlp_block(None, 0, 16), ValueError, r'inplanes must be > 0, got 0'),
    (lambda: SpatialGatingUnit(7, 4), ValueError, r'planes must be even .* got 7'),
    (lambda: SpatialGatingUnit(8, 0), ValueError, r'npatches must be > 0, got 0'),
])
def test_gated_mlp_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_spatial_gating_unit_matches_timm_and_initialisation():
    ours, ref = SpatialGatingUnit(32, 196), TimmSGU(32, 196)
    ref.init_weights()
    assert [k for k in ours.state_dict()] == [k for k in ref.state_dict()]
    # timm's init: weight ~ N(0, 1e-6) over 196 * 196 draws, bias exactly 1
    weight = ours.proj.weight.detach()
    assert abs(weight.mean().item()) < 5 * 1e-6 / 196 and abs(weight.std().item() - 1e-6) < 0.05 * 1e-6
    assert torch.equal(ours.proj.bias, torch.ones(196))
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 196, 32)
    torch.testing.assert_close(ours(x), ref(x))


def test_spatial_gating_unit_starts_close_to_u():
    """With the initial projection (bias 1, tiny weights) the output is the first half of the features."""
    sgu = SpatialGatingUnit(8, 5, norm_layer=LayerNormV2)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(sgu(x), x[..., :4], rtol=1e-4, atol=1e-4)
    assert SpatialGatingUnit(8, 5, norm_layer=None)(x).shape == (3, 5, 4)


# ---------------------------------------------------------------- mlp_block: the guide's names and timm's

def test_mlp_block_guide_signature():
    """mlp_block(inplanes, hidden_planes, outplanes; dropout_prob, activation) as Metalhead's."""
    torch.manual_seed(0)
    block = mlp_block(8, 32, 4, dropout_prob=0.1, activation='relu').eval()
    ref = Mlp(8, 32, 4, act_layer=nn.ReLU, drop=0.1).eval()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(block(x), ref(x))
    assert block.drop1.p == block.drop2.p == 0.1
    default = mlp_block(8, 32)
    assert default.fc2.out_features == 8 and default.drop1.p == 0.0
    torch.testing.assert_close(default.act(x), torch.nn.functional.gelu(x))  # GELU by default
    assert mlp_block(inplanes=8, hidden_planes=16, outplanes=2).fc2.out_features == 2


@pytest.mark.parametrize('call', [
    lambda: mlp_block(8, 32, 'relu', 0.1),                                  # timm's positional act_layer, drop
    lambda: mlp_block(dim=8, hidden_dim=32, act_layer=nn.ReLU, drop=0.1),
    lambda: mlp_block(8, 32, activation=nn.ReLU, drop=0.1),
    lambda: mlp_block(8, 32, 8, 0.1, activation='relu'),
])
def test_mlp_block_timm_names_still_work(call):
    block = call()
    assert block.fc1.in_features == 8 and block.fc1.out_features == 32 and block.fc2.out_features == 8
    assert isinstance(block.act, nn.ReLU) and block.drop1.p == block.drop2.p == 0.1
