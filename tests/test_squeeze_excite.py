"""squeeze_excite / SqueezeExcite against timm's SEModule, with copied weights."""
import pytest
import torch
from torch import nn
from timm.layers import SEModule

from timm_metalayers.layers import SqueezeExcite, squeeze_excite


def copy_from_timm(ours: SqueezeExcite, theirs: SEModule) -> None:
    with torch.no_grad():
        ours.reduce[0].weight.copy_(theirs.fc1.weight)
        ours.reduce[0].bias.copy_(theirs.fc1.bias)
        ours.expand[0].weight.copy_(theirs.fc2.weight)
        ours.expand[0].bias.copy_(theirs.fc2.bias)
        if not isinstance(theirs.bn, nn.Identity):
            ours.reduce[1].load_state_dict(theirs.bn.state_dict())


@pytest.mark.parametrize('channels,reduction', [(16, 16), (64, 4), (40, 8), (24, 0.25 ** -1)])
def test_matches_timm_semodule(channels, reduction):
    torch.manual_seed(channels)
    theirs = SEModule(channels, rd_ratio=1 / reduction).eval()
    ours = squeeze_excite(channels, reduction).eval()
    assert ours.reduce[0].out_channels == theirs.fc1.out_channels  # same make_divisible rounding
    copy_from_timm(ours, theirs)
    x = torch.randn(2, channels, 5, 7)
    y = ours(x)
    assert torch.allclose(y, theirs(x), atol=1e-6)
    assert not torch.allclose(y, x)  # it really gates


def test_matches_timm_with_hard_sigmoid_gate_and_norm():
    torch.manual_seed(1)
    theirs = SEModule(32, rd_channels=8, act_layer=nn.SiLU, gate_layer='hard_sigmoid',
                      norm_layer=nn.BatchNorm2d).eval()
    ours = squeeze_excite(32, rd_planes=8, act_layer=nn.SiLU, gate_layer='hard_sigmoid',
                          norm_layer=nn.BatchNorm2d).eval()
    assert ours.reduce[0].bias is not None  # the squeeze conv keeps its bias, as in timm
    with torch.no_grad():
        theirs.bn.running_mean.uniform_(-1, 1)
        theirs.bn.running_var.uniform_(0.5, 2)
    copy_from_timm(ours, theirs)
    x = torch.randn(2, 32, 4, 4)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_structure_and_gate_range():
    se = squeeze_excite(64)
    assert isinstance(se, SqueezeExcite)
    assert (se.reduce[0].in_channels, se.reduce[0].out_channels) == (64, 8)
    assert (se.expand[0].in_channels, se.expand[0].out_channels) == (8, 64)
    assert se.expand[0].kernel_size == (1, 1)
    x = torch.rand(2, 64, 3, 3) + 0.1
    ratio = se(x) / x
    assert ((ratio > 0) & (ratio < 1)).all()  # a sigmoid gate per channel ...
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))  # ... constant over the map
    assert squeeze_excite(64, rd_planes=10).reduce[0].out_channels == 10


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(inplanes=0), ValueError, r'inplanes must be > 0, got 0'),
    (dict(inplanes=16, reduction=0), ValueError, r'reduction must be a number > 0, got 0'),
    (dict(inplanes=16, reduction='4'), ValueError, r"reduction must be a number > 0, got '4'"),
    (dict(inplanes=16, rd_planes=0), ValueError, r'rd_planes must be > 0, got 0'),
    (dict(inplanes=16, act_layer='nosuch'), ValueError, r"act_layer='nosuch'"),
    (dict(inplanes=16, gate_layer='nosuch'), ValueError, r"gate_layer='nosuch'"),
])
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        squeeze_excite(**kwargs)
