"""ConvMixer family: parity with timm's ConvMixer through the checkpoint filter, argument wiring."""
import weakref

import pytest
import timm
import torch
from torch import nn
from timm.models.convmixer import ConvMixer as TimmConvMixer

import timm_metalayers  # noqa: F401  (registers the models)
from timm_metalayers.layers import StochasticDepth, linear_scheduler
from timm_metalayers.models.convmixer import ConvMixer, checkpoint_filter_fn, convmixer
from twin_checks import assert_filter_rejects
from twins import (assert_full_mapping, assert_same_outputs, load_through_filter, max_diff,  # noqa: F401
                   one_thread, ours_pretrained, save_timm_checkpoint, timm_checkpoint)

ARCHS = ['convmixer_768_32', 'convmixer_1024_20_ks9_p14', 'convmixer_1536_20']


@pytest.fixture(scope='module')
def small():
    """timm's ConvMixer and our ``convmixer`` at a small width, equal weights."""
    ref = save_timm_checkpoint(TimmConvMixer(dim=32, depth=3, kernel_size=5, patch_size=4, num_classes=9),
                               '/dev/null')[0]
    ours = load_through_filter(convmixer(32, 3, kernel_size=5, patch_size=4, num_classes=9), ref)
    return ref, ours


@pytest.mark.parametrize('arch', ARCHS)
def test_every_timm_key_maps_at_full_size(arch):
    assert_full_mapping(arch, checkpoint_filter_fn)


def test_parity_768_32_through_pretrained_file(tmp_path):
    ref, path = timm_checkpoint('convmixer_768_32', tmp_path / 'cm.safetensors')
    ours = ours_pretrained('convmixer_768_32', path)
    assert isinstance(ours.blocks[0].channel[1], nn.ReLU)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= 1e-4


@pytest.mark.parametrize('size', [(32, 32), (40, 56)])
def test_parity_custom_build_any_size(small, size):
    ref, ours = small
    x = torch.randn(2, 3, *size)
    assert_same_outputs(ours, ref, x)
    with torch.no_grad():
        _, inter = ours.forward_intermediates(x, indices=2)
        _, ref_inter = ref.forward_intermediates(x, indices=2)
    assert max(max_diff(a, b) for a, b in zip(inter, ref_inter)) <= 1e-4


def test_pretrained_in_chans_and_num_classes(tmp_path):
    ref = save_timm_checkpoint(TimmConvMixer(dim=32, depth=2, kernel_size=3, patch_size=4), tmp_path / 'c.safetensors')
    path = str(tmp_path / 'c.safetensors')
    kwargs = dict(in_chans=1, num_classes=4, pretrained=True, pretrained_cfg_overlay=dict(file=path),
                  planes=32, depth=2, kernel_size=3, patch_size=4)
    ours = timm.create_model('metalayers_convmixer_1536_20', **kwargs).eval()
    assert ours.stem[0].weight.shape == (32, 1, 4, 4)
    torch.testing.assert_close(ours.stem[0].weight[:, 0], ref[0].stem[0].weight.sum(1))
    assert ours(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_filter_names_broken_keys(small):
    ref, ours = small
    assert_filter_rejects(checkpoint_filter_fn, ours, ref.state_dict(), missing=['blocks.1.3.running_var'],
                          extra=['blocks.0.9.weight'], names=['blocks.1.channel.2.running_var', 'blocks.0.9.weight'])


def test_drop_path_and_keys_independent_of_regularisers():
    model = convmixer(16, 4, kernel_size=3, patch_size=4, drop_path_rate=0.2, drop_rate=0.1, global_pool='max')
    assert [m.p for m in model.modules() if isinstance(m, StochasticDepth)] == linear_scheduler(0.2, depth=4)
    assert model.head.drop.p == 0.1
    plain = convmixer(16, 4, kernel_size=3, patch_size=4)
    assert list(plain.state_dict()) == list(model.state_dict())


def test_act_and_norm_layer_reach_every_conv_norm():
    model = convmixer(64, 2, kernel_size=3, patch_size=4, act_layer='silu', norm_layer='groupnorm')
    acts = [m for m in model.modules() if isinstance(m, (nn.SiLU, nn.GELU, nn.ReLU))]
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(acts) == 5 and all(isinstance(a, nn.SiLU) for a in acts)
    assert len(norms) == 5 and all(isinstance(n, nn.GroupNorm) for n in norms)


def test_timm_argument_names():
    model = timm.create_model('metalayers_convmixer_768_32', dim=24, depth=2)
    assert model.num_features == 24 and len(model.blocks) == 2


@pytest.mark.parametrize('kwargs, match', [
    (dict(planes=16, depth=2, kernel_size=4), 'kernel_size'),
    (dict(planes=0, depth=2), 'planes'),
    (dict(planes=16, depth=2, drop_rate=2.0), 'drop_rate'),
])
def test_builder_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ConvMixer(**kwargs)


def test_block_frees_the_residual_sum_once_the_pointwise_conv_has_read_it(small):
    """In inference the block's residual sum must die after the 1x1 conv (as in timm's flat block): a nested
    ``channel`` Sequential kept it alive through the activation and norm (extra memory, page faults, ~5% of
    ConvMixer-1536/20's CPU time). With a hook on ``channel`` the hook still runs."""
    _, ours = small
    block = ours.blocks[0]
    seen = {}

    def keep_sum(module, args, output):
        seen['sum'] = weakref.ref(output)

    def sum_alive_at_activation(module, args):
        seen['alive'] = seen['sum']() is not None

    handles = [block.spatial.register_forward_hook(keep_sum),
               block.channel[1].register_forward_pre_hook(sum_alive_at_activation)]
    try:
        with torch.inference_mode():
            out = block(torch.randn(2, 32, 8, 8))
        assert seen['alive'] is False
        calls = []
        handles.append(block.channel.register_forward_hook(lambda *a: calls.append(1)))
        with torch.inference_mode():
            torch.testing.assert_close(block(torch.zeros(2, 32, 8, 8)), nn.Sequential(*block)(torch.zeros(2, 32, 8, 8)))
        assert calls == [1, 1]
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (2, 32, 8, 8)
