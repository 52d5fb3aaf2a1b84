"""The MLP mixers (MLP-Mixer, ResMLP, gMLP): parity with timm's ``mlp_mixer`` through the checkpoint filter,
the fixed token count, intermediates as maps or tokens, argument wiring, the one builder."""
from collections import OrderedDict
from functools import partial

import pytest
import timm
import torch
from torch import nn
from timm.models import mlp_mixer as timm_mixer

import timm_metalayers  # noqa: F401  (registers the models)
from timm_metalayers.layers import Affine, LayerScale, SkipConnection, linear_scheduler, mlp_block
from timm_metalayers.models.mlp_mixer import (MlpMixer, checkpoint_filter_fn, mixer_block, mlpmixer, resmlp_block,
                                              spatial_gating_block)
from twin_checks import assert_filter_rejects
from twins import (assert_full_mapping, assert_same_outputs, load_through_filter, max_diff,  # noqa: F401
                   one_thread, ours_pretrained, save_timm_checkpoint, timm_checkpoint)

ARCHS = ['mixer_s16_224', 'mixer_b16_224', 'mixer_l16_224', 'resmlp_12_224', 'resmlp_24_224', 'resmlp_36_224',
         'resmlp_big_24_224', 'gmlp_ti16_224', 'gmlp_s16_224', 'gmlp_b16_224']
# A small model of each kind, at 64x64 (16 tokens): (timm's MlpMixer arguments, our block function, block_kwargs).
KINDS = {
    'mixer': (dict(), mixer_block, {}),
    'resmlp': (dict(mlp_ratio=4, block_layer=partial(timm_mixer.ResBlock, init_values=0.1),
                    norm_layer=timm_mixer.Affine), resmlp_block, dict(mlp_ratio=4, init_values=0.1)),
    'gmlp': (dict(mlp_ratio=6, block_layer=timm_mixer.SpatialGatingBlock, mlp_layer=timm.layers.GatedMlp),
             spatial_gating_block, dict(mlp_ratio=6)),
}


def _small_pair(kind: str, **kwargs):
    timm_args, block, block_kwargs = KINDS[kind]
    ref = timm_mixer.MlpMixer(img_size=64, patch_size=16, num_blocks=2, embed_dim=32, num_classes=5, **timm_args,
                              **kwargs)
    save_timm_checkpoint(ref, '/dev/null')
    ours = mlpmixer(block, 64, patch_size=16, depth=2, embed_dim=32, num_classes=5, block_kwargs=block_kwargs,
                    **kwargs)
    return ref, load_through_filter(ours, ref)


@pytest.fixture(scope='module', params=list(KINDS))
def small(request):
    return _small_pair(request.param)


@pytest.mark.parametrize('arch', ARCHS)
def test_every_timm_key_maps_at_full_size(arch):
    assert_full_mapping(arch, checkpoint_filter_fn)


@pytest.mark.parametrize('arch', ['mixer_s16_224', 'resmlp_12_224', 'gmlp_ti16_224'])
def test_parity_registered_through_pretrained_file(arch, tmp_path):
    ref, path = timm_checkpoint(arch, tmp_path / 'm.safetensors')
    ours = ours_pretrained(arch, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= 1e-4


def test_parity_small_of_each_kind(small):
    ref, ours = small
    x = torch.randn(2, 3, 64, 64)
    assert_same_outputs(ours, ref, x)


def test_forward_intermediates_maps_and_tokens_match_timm(small):
    ref, ours = small
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for fmt, shape in (('NCHW', (2, 32, 4, 4)), ('NLC', (2, 16, 32))):
            final, inter = ours.forward_intermediates(x, indices=[0, 1], norm=True, output_fmt=fmt)
            ref_final, ref_inter = ref.forward_intermediates(x, indices=[0, 1], norm=True, output_fmt=fmt)
            assert [t.shape for t in inter] == [shape] * 2
            assert max(max_diff(a, b) for a, b in zip(inter, ref_inter)) <= 1e-4
            assert max_diff(final, ref_final) <= 1e-4
    with pytest.raises(ValueError, match='output_fmt'):
        ours.forward_intermediates(x, output_fmt='NHWC')


def test_unpooled_head_classifies_every_token_like_timm():
    ref, ours = _small_pair('mixer', global_pool='')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert ours(x).shape == (1, 16, 5)
        assert max_diff(ours(x), ref(x)) <= 1e-4
    ours.reset_classifier(3, 'avg')
    assert ours(x).shape == (1, 3)


def test_pretrained_in_chans_and_num_classes(tmp_path):
    """timm adapts the patch projection to in_chans (sum over the RGB filters for 1) and drops the classifier."""
    ref, path = save_timm_checkpoint(timm_mixer.MlpMixer(num_blocks=2, embed_dim=128, mlp_ratio=6,
                                                         block_layer=timm_mixer.SpatialGatingBlock,
                                                         mlp_layer=timm.layers.GatedMlp), tmp_path / 'g.safetensors')
    ours = timm.create_model('metalayers_gmlp_ti16_224', depth=2, in_chans=1, num_classes=7, pretrained=True,
                             pretrained_cfg_overlay=dict(file=path)).eval()
    torch.testing.assert_close(ours.stem.proj.weight, ref.stem.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(ours.blocks[1].channel_mix.branch.mlp.gate.proj.weight,
                               ref.blocks[1].mlp_channels.gate.proj.weight)
    assert ours(torch.randn(1, 1, 224, 224)).shape == (1, 7)


def test_filter_names_broken_keys(small):
    ref, ours = small
    sd = ref.state_dict()
    key = next(k for k in sd if k.startswith('blocks.1.') and k.endswith('fc1.weight'))
    assert_filter_rejects(checkpoint_filter_fn, ours, sd, extra=['blocks.0.extra.weight'],
                          wrong={key: (sd[key].shape[0], 3)}, names=['fc1.weight', 'blocks.0.extra.weight'])


# ---------------------------------------------------------------- the fixed token count

def test_other_input_size_names_the_size_needed():
    model = timm.create_model('metalayers_mixer_s16_224', depth=1)
    with pytest.raises(ValueError, match=r'needs images of size \(224, 224\).*img_size=\(160, 160\)'):
        model(torch.randn(1, 3, 160, 160))


def test_img_size_sets_the_token_count():
    model = timm.create_model('metalayers_resmlp_12_224', img_size=96, depth=1).eval()
    assert model.stem.num_patches == 36
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)
    with pytest.raises(ValueError, match='divisible by patch_size'):
        timm.create_model('metalayers_resmlp_12_224', img_size=100, depth=1)


# ---------------------------------------------------------------- argument wiring and the builder

def test_drop_path_rate_schedule_and_keys_independent_of_regularisers():
    model = mlpmixer(mixer_block, 32, patch_size=8, depth=3, embed_dim=16, drop_path_rate=0.3, drop_rate=0.1,
                     proj_drop_rate=0.2)
    rates = [block.token_mix.drop_path.p for block in model.blocks]
    assert rates == [block.channel_mix.drop_path.p for block in model.blocks] == linear_scheduler(0.3, depth=3)
    assert model.head.drop.p == 0.1 and model.blocks[0].channel_mix.branch.mlp.drop1.p == 0.2
    plain = mlpmixer(mixer_block, 32, patch_size=8, depth=3, embed_dim=16)
    assert list(plain.state_dict()) == list(model.state_dict())


def test_act_and_norm_layer_reach_every_block():
    model = mlpmixer(mixer_block, 32, patch_size=8, depth=2, embed_dim=16, act_layer='relu', norm_layer='rmsnorm')
    assert all(isinstance(b.token_mix.branch.mlp.act, nn.ReLU) and isinstance(b.channel_mix.branch.mlp.act, nn.ReLU)
               for b in model.blocks)
    norms = [type(m).__name__ for m in model.modules() if 'Norm' in type(m).__name__]
    assert norms == ['RmsNorm'] * 5
    res = timm.create_model('metalayers_resmlp_12_224', depth=2)
    assert isinstance(res.norm, Affine) and isinstance(res.blocks[0].token_mix.branch.ls, LayerScale)


def test_custom_block_function():
    """Metalhead's ``mlpmixer(block, imsize; ...)``: any block function of (planes, npatches, drop_path)."""
    def channel_only(planes, npatches, drop_path, *, act_layer, norm_layer, proj_drop):
        return SkipConnection(nn.Sequential(OrderedDict(norm=nn.LayerNorm(planes),
                                                        mlp=mlp_block(planes, 2 * planes, activation=act_layer))),
                              drop_path)
    model = mlpmixer(channel_only, (32, 48), patch_size=16, depth=2, embed_dim=8, num_classes=3)
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 3)
    assert model.forward_intermediates(torch.randn(1, 3, 32, 48), intermediates_only=True)[0].shape == (1, 8, 2, 3)


@pytest.mark.parametrize('kwargs, match', [
    (dict(block='mixer'), 'block'),
    (dict(img_size=60, patch_size=16), 'divisible'),
    (dict(depth=0), 'depth'),
    (dict(global_pool='catavgmax'), 'global_pool'),
])
def test_builder_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MlpMixer(**{'img_size': 64, 'embed_dim': 16, 'depth': 1, **kwargs})
