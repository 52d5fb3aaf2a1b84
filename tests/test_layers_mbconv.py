"""dwsep_conv_norm and mbconv: structure, residual / stochastic depth, SE width, and equality with timm's blocks."""
import functools

import pytest
import torch
from torch import nn

from timm.layers import Conv2dSame, make_divisible
from timm.models._efficientnet_blocks import (ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual,
                                              SqueezeExcite)
from timm.models._efficientnet_builder import round_channels

from timm_metalayers.layers import (FusedMBConv, MBConv, SqueezeExcite as OurSE, StochasticDepth, dwsep_conv_norm,
                                    fused_mbconv, mbconv)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared; small convs are faster single-threaded
    yield
    torch.set_num_threads(threads)


def _load_from_timm(ours: nn.Module, ref: nn.Module, parts: dict) -> None:
    """Randomise timm's block and load its weights into ours, renaming each module prefix by ``parts``."""
    _randomize(ref)
    state = {}
    for key, value in ref.state_dict().items():
        prefix, leaf = key.rsplit('.', 1)
        state[f'{parts[prefix]}.{leaf}'] = value
    ours.load_state_dict(state)


# timm's SE of an inverted residual, as MobileNetV3 builds it (our MBCONV_SE_DEFAULTS)
MOBILE_SE = functools.partial(SqueezeExcite, rd_ratio=0.25, gate_layer='hard_sigmoid', force_act_layer=nn.ReLU,
                              rd_round_fn=round_channels)


def _randomize(module: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)


# ------------------------------------------------------------------------------------------ dwsep_conv_norm

def test_dwsep_conv_norm_layout():
    layers = dwsep_conv_norm(3, 16, 32, 'relu6', stride=2, pad=1)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.Conv2d, nn.BatchNorm2d, nn.ReLU6]
    dw, pw = layers[0], layers[3]
    assert dw.groups == 16 and dw.in_channels == dw.out_channels == 16 and dw.stride == (2, 2)
    assert dw.kernel_size == (3, 3) and dw.bias is None
    assert pw.kernel_size == (1, 1) and pw.in_channels == 16 and pw.out_channels == 32 and pw.stride == (1, 1)
    out = nn.Sequential(*layers)(torch.randn(2, 16, 9, 9))
    assert out.shape == (2, 32, 5, 5)


def test_dwsep_conv_norm_options():
    linear = dwsep_conv_norm(3, 8, 8, 'relu', pw_activation=None, pad='same')
    assert [type(m) for m in linear] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert nn.Sequential(*linear)(torch.randn(1, 8, 7, 7)).shape == (1, 8, 7, 7)
    no_norm = dwsep_conv_norm(3, 8, 4, None, norm_layer=None)
    assert [type(m) for m in no_norm] == [nn.Conv2d, nn.Conv2d]
    assert all(m.bias is not None for m in no_norm)
    assert nn.Sequential(*dwsep_conv_norm(3, 8, 4))(torch.randn(1, 8, 7, 7)).shape == (1, 4, 5, 5)  # pad 0


def test_dwsep_conv_norm_matches_timm_ds_block():
    ref = DepthwiseSeparableConv(16, 24, dw_kernel_size=3, stride=2, act_layer=nn.ReLU).eval()
    ours = nn.Sequential(*dwsep_conv_norm(3, 16, 24, 'relu', pw_activation=None, stride=2, pad='symmetric')).eval()
    _randomize(ref)
    mapping = {'conv_dw': '0', 'bn1': '1', 'conv_pw': '3', 'bn2': '4'}
    state = {mapping[k.split('.')[0]] + k[k.index('.'):]: v for k, v in ref.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(2, 16, 16, 16)  # even: TF's SAME would pad asymmetrically here
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_dwsep_conv_norm_errors():
    with pytest.raises(ValueError, match='inplanes'):
        dwsep_conv_norm(3, 0, 8)
    with pytest.raises(ValueError, match='activation'):
        dwsep_conv_norm(3, 8, 8, 'no_such_act')


# ------------------------------------------------------------------------------------------------ mbconv

def test_mbconv_named_parts():
    block = mbconv(5, 24, 72, 40, 'hard_swish', stride=2, reduction=4)
    assert isinstance(block, MBConv) and not block.has_skip
    assert [type(m) for m in block.expand] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardswish]
    assert [type(m) for m in block.dw] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardswish]
    assert block.dw[0].groups == 72 and block.dw[0].stride == (2, 2) and block.dw[0].padding == (2, 2)
    assert isinstance(block.se, OurSE)
    assert [type(m) for m in block.project] == [nn.Conv2d, nn.BatchNorm2d]  # linear bottleneck
    assert isinstance(block.drop_path, nn.Identity)
    assert block(torch.randn(2, 24, 16, 16)).shape == (2, 40, 8, 8)
    keys = {k.rsplit('.', 1)[0] for k in block.state_dict()}
    assert keys == {'expand.0', 'expand.1', 'dw.0', 'dw.1', 'se.reduce.0', 'se.expand.0', 'project.0', 'project.1'}


def test_mbconv_without_expansion_or_se():
    block = mbconv(3, 16, 16, 16, 'relu')
    assert isinstance(block.expand, nn.Identity) and isinstance(block.se, nn.Identity)
    assert block.has_skip and isinstance(block.drop_path, StochasticDepth) and block.drop_path.p == 0.0


@pytest.mark.parametrize('drop_path_prob', [None, 0.0, 0.3])
def test_mbconv_keys_do_not_depend_on_drop_path(drop_path_prob):
    base = mbconv(3, 24, 72, 24, 'relu', reduction=4).state_dict()
    block = mbconv(3, 24, 72, 24, 'relu', reduction=4, drop_path_prob=drop_path_prob)
    assert list(block.state_dict()) == list(base)
    assert block.drop_path.p == (drop_path_prob or 0.0)


def test_mbconv_residual_and_stochastic_depth():
    block = mbconv(3, 8, 24, 8, 'relu', drop_path_prob=1.0)
    x = torch.randn(2, 8, 6, 6)
    block.train()
    torch.testing.assert_close(block(x), x)  # the branch is always dropped: only the skip is left
    block.eval()
    branch = block.project(block.se(block.dw(block.expand(x))))
    torch.testing.assert_close(block(x), branch + x)
    assert not mbconv(3, 8, 24, 8, 'relu', no_skip=True).has_skip
    assert not mbconv(3, 8, 24, 16, 'relu').has_skip
    assert not mbconv(3, 8, 24, 8, 'relu', stride=2).has_skip


def test_mbconv_se_width_as_timm():
    for planes in (16, 64, 72, 88, 96, 120, 144, 240, 288, 480, 576, 672, 960):
        block = mbconv(3, 24, planes, 24, 'relu', reduction=4)
        ref = SqueezeExcite(planes, rd_ratio=0.25, rd_round_fn=round_channels)
        assert block.se.reduce[0].out_channels == ref.conv_reduce.out_channels, planes
    block = mbconv(3, 24, 96, 24, reduction=4, se_kwargs=dict(gate_layer='sigmoid', rd_planes=10))
    assert block.se.reduce[0].out_channels == 10 and type(block.se.expand[-1]).__name__ == 'Sigmoid'


@pytest.mark.parametrize('stride,inplanes,outplanes', [(1, 24, 24), (2, 24, 40)])
def test_mbconv_matches_timm_inverted_residual(stride, inplanes, outplanes):
    ref = InvertedResidual(inplanes, outplanes, dw_kernel_size=5, stride=stride, exp_ratio=3.0,
                           act_layer=nn.Hardswish, se_layer=MOBILE_SE).eval()
    ours = mbconv(5, inplanes, inplanes * 3, outplanes, 'hard_swish', stride=stride, reduction=4).eval()
    _load_from_timm(ours, ref, {'conv_pw': 'expand.0', 'bn1': 'expand.1', 'conv_dw': 'dw.0', 'bn2': 'dw.1',
                                'se.conv_reduce': 'se.reduce.0', 'se.conv_expand': 'se.expand.0',
                                'conv_pwl': 'project.0', 'bn3': 'project.1'})
    x = torch.randn(2, inplanes, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_mbconv_scriptable():
    block = mbconv(3, 16, 48, 16, 'hard_swish', reduction=4, drop_path_prob=0.1).eval()
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(torch.jit.script(block)(x), block(x))


def test_mbconv_errors():
    with pytest.raises(ValueError, match='drop_path_prob=0.2 needs a residual'):
        mbconv(3, 16, 48, 24, drop_path_prob=0.2)
    with pytest.raises(ValueError, match='drop_path_prob'):
        mbconv(3, 16, 48, 16, drop_path_prob=1.5)
    with pytest.raises(ValueError, match='explanes'):
        mbconv(3, 16, 0, 16)
    with pytest.raises(TypeError, match='no_skip'):
        mbconv(3, 16, 48, 16, no_skip='yes')
    with pytest.raises(ValueError, match='se_kwargs'):
        mbconv(3, 16, 48, 16, se_kwargs=dict(gate_layer='sigmoid'))
    with pytest.raises(TypeError, match='se_kwargs'):
        mbconv(3, 16, 48, 16, reduction=4, se_kwargs='sigmoid')


# ------------------------------------------------------------------------------------------ fused_mbconv

EDGE_RESIDUAL_PARTS = {'conv_exp': 'expand.0', 'bn1': 'expand.1', 'se.conv_reduce': 'se.reduce.0',
                       'se.conv_expand': 'se.expand.0', 'conv_pwl': 'project.0', 'bn2': 'project.1'}


@pytest.mark.parametrize('stride,inplanes,outplanes,pad,with_se', [
    (1, 24, 24, 'same', False), (2, 24, 48, 'same', False), (2, 16, 32, '', True), (1, 16, 24, '', False),
])
def test_fused_mbconv_matches_timm_edge_residual(stride, inplanes, outplanes, pad, with_se):
    """EfficientNetV2's 'er' blocks: timm's EdgeResidual with the same weights gives the same output."""
    ref = EdgeResidual(inplanes, outplanes, exp_kernel_size=3, stride=stride, exp_ratio=4.0, pad_type=pad,
                       act_layer=nn.SiLU, se_layer=MOBILE_SE if with_se else None).eval()
    ours = fused_mbconv(3, inplanes, make_divisible(inplanes * 4), outplanes, 'silu', stride=stride,
                        pad='same' if pad == 'same' else 'symmetric', reduction=4 if with_se else None).eval()
    _load_from_timm(ours, ref, EDGE_RESIDUAL_PARTS)
    assert ours.has_skip == ref.has_skip == (stride == 1 and inplanes == outplanes)
    for size in (15, 16):
        x = torch.randn(2, inplanes, size, size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride,inplanes,outplanes', [(1, 24, 24), (2, 24, 32)])
def test_fused_mbconv_expansion_one_matches_timm_conv_bn_act(stride, inplanes, outplanes):
    """Expansion 1 (explanes == inplanes): one conv_norm to outplanes, as timm's 'cn_..._skip' stage-0 blocks
    of tf_efficientnetv2_* (ConvBnAct with a skip) and Metalhead's fused_mbconv."""
    ref = ConvBnAct(inplanes, outplanes, 3, stride=stride, pad_type='same', skip=True, act_layer=nn.SiLU).eval()
    ours = fused_mbconv(3, inplanes, inplanes, outplanes, 'silu', stride=stride, pad='same').eval()
    _load_from_timm(ours, ref, {'conv': 'expand.0', 'bn1': 'expand.1'})
    assert isinstance(ours.project, nn.Identity) and ours.has_skip == ref.has_skip
    for size in (15, 16):
        x = torch.randn(2, inplanes, size, size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fused_mbconv_named_parts():
    block = fused_mbconv(3, 24, 96, 48, 'silu', stride=2, pad='same', reduction=4)
    assert isinstance(block, FusedMBConv) and isinstance(block, MBConv) and not block.has_skip
    assert [type(m) for m in block.expand] == [Conv2dSame, nn.BatchNorm2d, nn.SiLU]
    assert block.expand[0].groups == 1 and block.expand[0].stride == (2, 2) and block.expand[0].out_channels == 96
    assert isinstance(block.dw, nn.Identity) and isinstance(block.se, OurSE)
    assert block.se.reduce[0].in_channels == 96
    assert [type(m) for m in block.project] == [nn.Conv2d, nn.BatchNorm2d]  # linear projection
    keys = {k.rsplit('.', 1)[0] for k in block.state_dict()}
    assert keys == {'expand.0', 'expand.1', 'se.reduce.0', 'se.expand.0', 'project.0', 'project.1'}
    single = fused_mbconv(3, 24, 24, 24, 'silu', reduction=4)  # SE on the single conv's output
    assert single.se.reduce[0].in_channels == 24 and single.expand[0].out_channels == 24
    assert {k.rsplit('.', 1)[0] for k in single.state_dict()} == {'expand.0', 'expand.1', 'se.reduce.0', 'se.expand.0'}


@pytest.mark.parametrize('drop_path_prob', [None, 0.0, 0.3])
def test_fused_mbconv_keys_do_not_depend_on_drop_path(drop_path_prob):
    base = fused_mbconv(3, 24, 96, 24, 'silu').state_dict()
    block = fused_mbconv(3, 24, 96, 24, 'silu', drop_path_prob=drop_path_prob)
    assert list(block.state_dict()) == list(base)
    assert isinstance(block.drop_path, StochasticDepth) and block.drop_path.p == (drop_path_prob or 0.0)


def test_fused_mbconv_residual_and_stochastic_depth():
    block = fused_mbconv(3, 8, 32, 8, 'silu', drop_path_prob=1.0)
    x = torch.randn(2, 8, 6, 6)
    block.train()
    torch.testing.assert_close(block(x), x)  # the branch is always dropped
    block.eval()
    torch.testing.assert_close(block(x), block.project(block.expand(x)) + x)
    assert not fused_mbconv(3, 8, 32, 8, no_skip=True).has_skip
    assert not fused_mbconv(3, 8, 8, 16).has_skip and not fused_mbconv(3, 8, 32, 8, stride=2).has_skip


def test_fused_mbconv_scriptable():
    block = fused_mbconv(3, 16, 64, 16, 'silu', reduction=4, drop_path_prob=0.1, pad='same').eval()
    x = torch.randn(1, 16, 9, 9)
    torch.testing.assert_close(torch.jit.script(block)(x), block(x))


@pytest.mark.parametrize('kwargs,exc,match', [
    (dict(stride=2, drop_path_prob=0.2), ValueError, r'drop_path_prob=0\.2 needs a residual'),
    (dict(explanes=0), ValueError, r'explanes must be > 0, got 0'),
    (dict(no_skip=1), TypeError, r'no_skip must be True or False, got 1'),
    (dict(se_kwargs=dict(gate_layer='sigmoid')), ValueError, r'se_kwargs=.* given without a reduction'),
    (dict(pad='symmetric', kernel_size=2), ValueError, r'pad="symmetric" needs an odd kernel extent'),
])
def test_fused_mbconv_errors(kwargs, exc, match):
    args = dict(kernel_size=3, inplanes=16, explanes=64, outplanes=16)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fused_mbconv(**args)


def test_mbconv_pad_same_is_tensorflow_and_default_is_symmetric():
    """mbconv's default keeps the symmetric padding MobileNetV3 (timm's pad_type '') uses; pad="same" is TF's."""
    assert mbconv(3, 16, 48, 24, stride=2).dw[0].padding == (1, 1)
    tf_block = mbconv(3, 16, 48, 24, stride=2, pad='same')
    assert isinstance(tf_block.dw[0], Conv2dSame) and tf_block(torch.randn(1, 16, 16, 16)).shape == (1, 24, 8, 8)
