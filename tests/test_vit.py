"""ViT family: parity with timm's ViTs through the checkpoint filter, argument wiring, timm's model API."""

import pytest
import timm
import timm.optim
import torch
from safetensors.torch import save_file
from torch import nn

import timm_metalayers  # noqa: F401  (registers the models)
from random_weights import randomize_weights
from twin_checks import assert_adapts_in_chans_and_head
from twins import assert_full_mapping
from timm_metalayers.layers import LayerScale, StochasticDepth, linear_scheduler
from timm_metalayers.state_dict import CheckpointMismatchError
from timm_metalayers.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

ARCHS = ['vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_base_patch16_224', 'vit_base_patch32_224',
         'vit_large_patch16_224', 'vit_base_patch16_384']
# Numerical parity runs these with fewer blocks (the full-depth key mapping is checked on the meta device).
PARITY_DEPTH = {'vit_large_patch16_224': 3, 'vit_base_patch16_384': 4}
TINY = 'vit_tiny_patch16_224'


def _timm_checkpoint(arch: str, path, **kwargs):
    ref = randomize_weights(timm.create_model(arch, device='meta', **kwargs).to_empty(device='cpu'))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, str(path)


def _ours(arch: str, path: str, **kwargs) -> VisionTransformer:
    return timm.create_model(f'metalayers_{arch}', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory):
    """timm's ViT-Ti/16 with random weights, saved as safetensors."""
    return _timm_checkpoint(TINY, tmp_path_factory.mktemp('vit') / 'tiny.safetensors')


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- parity with timm

@pytest.mark.parametrize('arch', ARCHS)
def test_every_timm_key_maps_at_full_depth(arch):
    """The filter maps every key of timm's full-size model onto ours, shapes included (no weights allocated)."""
    assert_full_mapping(arch, checkpoint_filter_fn)


@pytest.mark.parametrize('arch', ARCHS)
def test_parity_with_timm_through_filter(arch, tmp_path):
    depth = PARITY_DEPTH.get(arch)
    kwargs = {} if depth is None else dict(depth=depth)
    ref, path = _timm_checkpoint(arch, tmp_path / 'ckpt.safetensors', **kwargs)
    ours = _ours(arch, path, **kwargs)
    x = torch.randn(1, 3, *ours.pretrained_cfg['input_size'][1:])
    with torch.no_grad():
        expected, got = ref(x), ours(x)
        assert got.shape == (1, 1000)
        assert _max_diff(got, expected) <= 1e-4


def test_parity_at_another_img_size(tiny_ckpt):
    """A 224 checkpoint loaded at (192, 256): our filter resamples pos_embed exactly as timm's does."""
    _, path = tiny_ckpt
    ref = timm.create_model(TINY, img_size=(192, 256), pretrained=True,
                            pretrained_cfg_overlay=dict(file=path)).eval()
    ours = _ours(TINY, path, img_size=(192, 256))
    assert ours.patch_embed.grid_size == (12, 16) and ours.pos_embed.weight.shape == (1, 1 + 12 * 16, 192)
    x = torch.randn(2, 3, 192, 256)
    with torch.no_grad():
        assert _max_diff(ours(x), ref(x)) <= 1e-4


def test_parity_dynamic_img_size(tiny_ckpt):
    _, path = tiny_ckpt
    ref = timm.create_model(TINY, dynamic_img_size=True, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    ours = _ours(TINY, path, dynamic_img_size=True)
    with torch.no_grad():
        for size in ((224, 224), (160, 240)):
            x = torch.randn(1, 3, *size)
            assert _max_diff(ours(x), ref.eval()(x)) <= 1e-4
    fixed = _ours(TINY, path)
    with pytest.raises(ValueError, match='dynamic_img_size'):
        fixed(torch.randn(1, 3, 160, 240))


def test_parity_mean_pooling_and_fc_norm(tmp_path):
    """timm's global_pool='avg' ViT keeps its final norm as fc_norm (after pooling): it maps onto our norm."""
    ref, path = _timm_checkpoint(TINY, tmp_path / 'avg.safetensors', depth=2, global_pool='avg')
    assert 'fc_norm.weight' in ref.state_dict()
    ours = _ours(TINY, path, depth=2, global_pool='avg')
    assert ours.norm_after_pool
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert _max_diff(ours(x), ref(x)) <= 1e-4
        feats = ours.forward_features(x)
        torch.testing.assert_close(ours.forward_head(feats, pre_logits=True), ours.norm(feats[:, 1:].mean(1)))


def test_parity_in_chans_and_num_classes(tiny_ckpt):
    """timm adapts the pretrained patch projection to in_chans and drops the classifier for other num_classes."""
    _, path = tiny_ckpt
    assert_adapts_in_chans_and_head(TINY, path, size=224)


def test_forward_intermediates_match_timm(tiny_ckpt):
    _, path = tiny_ckpt
    ref = timm.create_model(TINY, pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    ours = _ours(TINY, path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for fmt, shape in (('NCHW', (2, 192, 14, 14)), ('NLC', (2, 196, 192))):
            final, inter = ours.forward_intermediates(x, indices=[1, 5, -1], output_fmt=fmt)
            ref_final, ref_inter = ref.forward_intermediates(x, indices=[1, 5, -1], output_fmt=fmt)
            assert [t.shape for t in inter] == [shape] * 3
            assert max(_max_diff(a, b) for a, b in zip(inter, ref_inter)) <= 1e-4
            assert _max_diff(final, ref_final) <= 1e-4
        normed = ours.forward_intermediates(x, indices=2, norm=True, output_fmt='NLC', intermediates_only=True,
                                            return_prefix_tokens=True)
        ref_normed = ref.forward_intermediates(x, indices=2, norm=True, output_fmt='NLC', intermediates_only=True,
                                               return_prefix_tokens=True)
        for (tokens, prefix), (ref_tokens, ref_prefix) in zip(normed, ref_normed):
            assert prefix.shape == (2, 1, 192)
            assert _max_diff(tokens, ref_tokens) <= 1e-4 and _max_diff(prefix, ref_prefix) <= 1e-4


# ---------------------------------------------------------------- argument wiring

def _tiny(**kwargs) -> VisionTransformer:
    return timm.create_model(f'metalayers_{TINY}', **{'depth': 4, **kwargs})


def test_drop_path_rate_schedules_stochastic_depth():
    model = _tiny(drop_path_rate=0.2)
    sds = [m for m in model.modules() if isinstance(m, StochasticDepth)]
    assert len(sds) == 2 * 4
    expected = linear_scheduler(0.2, depth=4)
    for i, block in enumerate(model.blocks):
        assert block.drop_path1.p == block.drop_path2.p == expected[i]
    assert [m.p for m in _tiny().modules() if isinstance(m, StochasticDepth)] == [0.0] * 8


def test_init_values_turn_layer_scale_on():
    model = _tiny(init_values=1e-5)
    gammas = [m.gamma for m in model.modules() if isinstance(m, LayerScale) and m.gamma is not None]
    assert len(gammas) == 2 * 4 and all(torch.all(g == 1e-5) for g in gammas)
    off = _tiny()
    assert all(m.gamma is None for m in off.modules() if isinstance(m, LayerScale))
    assert not any('.ls' in k for k in off.state_dict())


def test_drop_rate_is_head_dropout():
    model = _tiny(drop_rate=0.3)
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.3
    assert 'drop' not in dict(_tiny().head.named_children())


def test_state_dict_keys_independent_of_regularisers_and_pool():
    keys = set(_tiny().state_dict())
    for kwargs in (dict(drop_path_rate=0.3), dict(drop_rate=0.5), dict(global_pool='avg'),
                   dict(pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1)):
        assert set(_tiny(**kwargs).state_dict()) == keys, kwargs
    assert {'cls_token.token', 'pos_embed.weight', 'head.fc.weight', 'norm.weight'} <= keys


def test_global_pool_token_avg_and_none():
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        token = _tiny(num_classes=0).eval()
        feats = token.forward_features(x)
        assert feats.shape == (2, 197, 192)
        torch.testing.assert_close(token(x), feats[:, 0])
        avg = _tiny(num_classes=0, global_pool='avg').eval()
        feats = avg.forward_features(x)
        torch.testing.assert_close(avg(x), avg.norm(feats[:, 1:].mean(1)))
        assert _tiny(num_classes=0, global_pool='').eval()(x).shape == (2, 197, 192)


def test_num_classes_zero_and_reset_classifier():
    model = _tiny(num_classes=0).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, 192) and model.num_features == model.head_hidden_size == 192
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
        model.reset_classifier(10)
        assert model.num_classes == 10 and model.global_pool == 'token' and model(x).shape == (2, 10)
        assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 10
        model.reset_classifier(5, 'avg')
        assert model.global_pool == 'avg' and model(x).shape == (2, 5)
        model.reset_classifier(0, '')
        assert model(x).shape == (2, 197, 192)


def test_model_errors():
    with pytest.raises(ValueError, match='global_pool'):
        _tiny(global_pool='catavgmax')
    with pytest.raises(ValueError, match='class_token=False'):
        _tiny(class_token=False)
    with pytest.raises(ValueError, match='num_classes'):
        _tiny(num_classes=-1)
    with pytest.raises(ValueError, match='num_heads=5'):
        _tiny(num_heads=5)
    with pytest.raises(ValueError, match='drop_path_rate|drop_prob'):
        _tiny(drop_path_rate=2.0)
    with pytest.raises(TypeError):
        _tiny(not_an_arg=1)
    model = _tiny()
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(0, 'map')
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(torch.randn(1, 3, 224, 224), output_fmt='NHWC')


def test_no_class_token_mean_pooling():
    model = _tiny(class_token=False, global_pool='avg', num_classes=3).eval()
    assert model.num_prefix_tokens == 0 and model.pos_embed.weight.shape == (1, 196, 192)
    x = torch.randn(1, 3, 224, 224)
    assert model.forward_features(x).shape == (1, 196, 192) and model(x).shape == (1, 3)
    assert model.forward_intermediates(x, indices=1, intermediates_only=True)[0].shape == (1, 192, 14, 14)


# ---------------------------------------------------------------- timm's model API

def test_features_only():
    model = _tiny(features_only=True).eval()
    assert model.feature_info.channels() == [192] * 3 and model.feature_info.reduction() == [16] * 3
    outs = model(torch.randn(1, 3, 224, 224))
    assert [o.shape for o in outs] == [(1, 192, 14, 14)] * 3
    picked = _tiny(features_only=True, out_indices=(0, 2))
    assert len(picked.model.blocks) == 3 and len(picked(torch.randn(1, 3, 224, 224))) == 2


def test_prune_stop_early_and_grad_checkpointing():
    model = _tiny().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], taps[1])
        out = model(x)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out)
        torch.testing.assert_close(model.forward_intermediates(x, intermediates_only=True)[3], taps[3])
        assert model.prune_intermediate_layers([1]) == [1]
        assert len(model.blocks) == 2 and model.num_classes == 0 and model.global_pool == ''
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], taps[1])


def test_set_input_size_resamples_and_keeps_frozen():
    model = _tiny().eval()
    model.requires_grad_(False)
    model.set_input_size(img_size=(256, 320))
    assert model.patch_embed.grid_size == (16, 20) and model.pos_embed.weight.shape == (1, 321, 192)
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.randn(1, 3, 256, 320)).shape == (1, 1000)


def test_pretrained_cfgs_follow_timm():
    names = timm.list_pretrained('metalayers_vit_*')
    assert len(names) == 7 and 'metalayers_vit_base_patch16_224.augreg2_in21k_ft_in1k' in names
    for name in names:
        ours = timm.models.get_pretrained_cfg(name).to_dict()
        theirs = timm.models.get_pretrained_cfg(name[len('metalayers_'):]).to_dict()
        assert ours['hf_hub_id'] == 'timm/' + name[len('metalayers_'):]
        for key in ('num_classes', 'input_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std',
                    'fixed_input_size', 'first_conv', 'license'):
            assert ours[key] == theirs[key], (name, key)
        assert ours['classifier'] == 'head.fc'
    with torch.device('meta'):
        model = timm.create_model('metalayers_vit_base_patch16_384')
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg['input_size'] == (3, 384, 384) and cfg['mean'] == (0.5, 0.5, 0.5) and cfg['crop_pct'] == 1.0


@pytest.mark.parametrize('arch', ARCHS)
def test_timm_non_std_default_cfg_checks(arch):
    """timm's test_model_default_cfgs_non_std checks (timm's own ViTs get those; ours are skipped from the
    spatial-output test_model_default_cfgs, see the README), on the meta device."""
    name = f'metalayers_{arch}'
    with torch.device('meta'):
        model = timm.create_model(name).eval()
    cfg = model.default_cfg
    keys = model.state_dict()
    assert cfg['classifier'] + '.weight' in keys and cfg['first_conv'] + '.weight' in keys
    assert model.in_chans == cfg['input_size'][0]
    x = torch.randn(1, *cfg['input_size'], device='meta')
    feats = model.forward_features(x)
    assert feats.shape[-1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape[1] == model.head_hidden_size
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)
    # a new head follows the model's device / dtype / mode
    model.to(dtype=torch.float64)
    model.reset_classifier(2)
    assert model.head.fc.weight.dtype == torch.float64 and model.head.fc.weight.device.type == 'meta'
    # create_model(device=...) puts every tensor there
    placed = timm.create_model(name, device='meta', dtype=torch.float32)
    assert all(t.device.type == 'meta' for t in [*placed.parameters(), *placed.buffers()])


def test_optimizer_groups_and_no_weight_decay():
    model = _tiny()
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert len(opt.param_groups) > 4


def test_scripts_and_traces():
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _tiny(depth=1).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        fx = create_feature_extractor(model, return_nodes=['head'], tracer_kwargs=dict(
            leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
        torch.testing.assert_close(fx(x)['head'], expected)


# ---------------------------------------------------------------- the checkpoint filter

def test_filter_loads_our_naming_unchanged(tiny_ckpt):
    _, path = tiny_ckpt
    ours = _ours(TINY, path)
    sd = ours.state_dict()
    mapped = checkpoint_filter_fn(sd, ours)
    assert set(mapped) == set(sd) and all(mapped[k] is sd[k] for k in sd)


def test_filter_errors_name_the_keys(tiny_ckpt):
    ref, _ = tiny_ckpt
    model = _tiny(depth=12)
    sd = dict(ref.state_dict())
    extra = dict(sd, **{'blocks.0.attn.q_norm.weight': torch.ones(64)})
    with pytest.raises(CheckpointMismatchError, match=r'blocks\.0\.attn\.q_norm\.weight'):
        checkpoint_filter_fn(extra, model)
    missing = {k: v for k, v in sd.items() if k != 'blocks.3.norm2.bias'}
    with pytest.raises(CheckpointMismatchError, match=r'blocks\.3\.mlp\.0\.bias'):
        checkpoint_filter_fn(missing, model)
    wrong = dict(sd, **{'blocks.1.mlp.fc1.weight': torch.zeros(10, 192)})
    with pytest.raises(CheckpointMismatchError, match=r'blocks\.1\.mlp\.1\.fc1\.weight'):
        checkpoint_filter_fn(wrong, model)
    odd_grid = dict(sd, pos_embed=torch.zeros(1, 1 + 7 * 11, 192))
    with pytest.raises(CheckpointMismatchError, match='pos_embed'):
        checkpoint_filter_fn(odd_grid, model)
    assert issubclass(CheckpointMismatchError, ValueError) and not issubclass(CheckpointMismatchError, TypeError)


def test_readme_hand_built_vit_runs():
    """The README's ViT built by hand from prenorm, MultiHeadSelfAttention, mlp_block and LayerScale runs."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text(encoding='utf-8')
    section = re.search(r'<!-- section:vit -->(.*?)<!-- /section:vit -->', text, re.S).group(1)
    blocks = [b for b in re.findall(r'^```python\n(.*?)^```', section, re.S | re.M) if 'prenorm(' in b]
    assert len(blocks) == 1
    for name in ('prenorm(', 'MultiHeadSelfAttention(', 'mlp_block(', 'LayerScale('):
        assert name in blocks[0]
    scope = {'__name__': '__readme__'}
    exec(compile(blocks[0], 'README.md[vit]', 'exec'), scope)
    assert scope['tokens'].shape == (2, 197, 192) and scope['logits'].shape == (2, 10)
