"""effective_squeeze_excite (eSE of VoVNetV2 / CenterMask) against timm's EffectiveSEModule."""
import pytest
import torch
from torch import nn
from timm.layers import EffectiveSEModule

from timm_metalayers.layers import EffectiveSqueezeExcite, effective_squeeze_excite


@pytest.mark.parametrize('gate', ['hard_sigmoid', 'sigmoid'])
def test_matches_timm_effective_se(gate):
    torch.manual_seed(0)
    ref = EffectiveSEModule(24, gate_layer=gate)
    ours = effective_squeeze_excite(24, gate_activation=gate)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.5)
    ours.load_state_dict(ref.state_dict())  # fc.weight, fc.bias: timm's names
    x = torch.randn(2, 24, 7, 9)
    torch.testing.assert_close(ours(x), ref(x))


def test_structure_and_default_gate():
    se = effective_squeeze_excite(16)
    assert isinstance(se, EffectiveSqueezeExcite)
    conv = se.fc
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (16, 16, (1, 1)) and conv.bias is not None
    x = torch.randn(2, 16, 5, 5)
    gate = torch.sigmoid(conv(x.mean((2, 3), keepdim=True)))  # Metalhead's default gate: sigmoid
    torch.testing.assert_close(se(x), x * gate)
    ungated = effective_squeeze_excite(16, gate_activation=None)
    ungated.load_state_dict(se.state_dict())
    torch.testing.assert_close(ungated(x), x * conv(x.mean((2, 3), keepdim=True)))


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(inplanes=0), ValueError, r'inplanes must be > 0, got 0'),
    (dict(inplanes=8, gate_activation='nosuch'), ValueError, r"gate_activation='nosuch'"),
])
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        effective_squeeze_excite(**kwargs)
