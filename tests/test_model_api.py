"""timm's model API, checked the same way on every registered ``metalayers_*`` model.

A new family is covered the day it is registered. Each model is built once per worker at a small input
size (the fixed-size ViTs with a small ``img_size``) and shared by the tests below. The checks that run a
training step twice or convert the model (gradient checkpointing, float64, a pruned model's backward) run
on the smallest model of each family module: they exercise the shared machinery, not the variant's size.
"""
import copy
import math
from typing import Tuple

import pytest
import torch
from torch import nn
import timm
from timm.models._features import FeatureGetterNet

import timm_metalayers  # noqa: F401  (registers the models)
from twins import smallest_per_family
from timm_metalayers.layers import ClassifierHead, PatchEmbedding

MODELS = sorted(timm.list_models('metalayers_*'))


REPRESENTATIVES = smallest_per_family(MODELS)
NUM_CLASSES = 7
SMALL_SIZE = 64


def _input_size(model: nn.Module) -> Tuple[int, int]:
    cfg = model.pretrained_cfg
    side = max(SMALL_SIZE, *(cfg.get('min_input_size') or (0, 0, 0))[1:])
    return side, side


def _build(name: str) -> nn.Module:
    kwargs = dict(num_classes=NUM_CLASSES)
    if timm.models.get_pretrained_cfg(name) and timm.models.get_pretrained_cfg(name).fixed_input_size:
        kwargs['img_size'] = 32
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def _params(names):
    return [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in names]


def _model_and_input(name: str) -> Tuple[nn.Module, torch.Tensor]:
    model = _build(name)
    patch_embed = next((m for m in model.modules() if isinstance(m, PatchEmbedding)), None)  # a fixed-size model
    size = tuple(patch_embed.img_size) if patch_embed is not None else _input_size(model)
    return model, torch.randn(2, model.in_chans, *size)


@pytest.fixture(scope='module', params=_params(MODELS))
def built(request) -> Tuple[nn.Module, torch.Tensor]:
    """(model in eval mode, a batch of 2 images it takes), built once: pytest groups the tests by model
    (one model alive at a time) and ``--dist loadgroup`` keeps a model's tests on one worker."""
    return _model_and_input(request.param)


@pytest.fixture(scope='module', params=_params(REPRESENTATIVES))
def representative(request) -> Tuple[nn.Module, torch.Tensor]:
    """As ``built``, for the smallest model of each family."""
    return _model_and_input(request.param)


def test_registered_models_exist():
    assert len(MODELS) >= 24
    assert len(REPRESENTATIVES) >= 6 and set(REPRESENTATIVES) <= set(MODELS)


@torch.no_grad()
def test_forward_head_and_widths(built):
    model, x = built
    assert isinstance(model.head, ClassifierHead)
    assert model(x).shape == (2, NUM_CLASSES)
    features = model.forward_features(x)
    assert features.shape[-1 if features.dim() == 3 else 1] == model.num_features
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, model.head_hidden_size)
    torch.testing.assert_close(model.forward_head(features), model(x))
    fc = model.get_classifier()  # a Linear, or a 1x1 conv (SqueezeNet's classifier runs on the map)
    assert fc is model.head.fc and (fc.out_channels if isinstance(fc, nn.Conv2d) else fc.out_features) == NUM_CLASSES
    assert model.num_classes == NUM_CLASSES
    cfg = model.pretrained_cfg
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier'):
        assert key in cfg, key
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert isinstance(model.get_submodule(cfg['first_conv']), nn.Conv2d)


@torch.no_grad()
def test_forward_intermediates(built):
    model, x = built
    n = len(model.feature_info)
    final, taps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(taps) == n
    for tap, info in zip(taps, model.feature_info):
        assert tap.shape[1] == info['num_chs'], info
        expected = x.shape[-1] / info['reduction']
        assert expected / 2 <= tap.shape[-1] <= math.ceil(expected), (info, tap.shape)
    only = model.forward_intermediates(x, indices=[0, n - 1], intermediates_only=True)
    torch.testing.assert_close(only, [taps[0], taps[-1]])
    torch.testing.assert_close(model.forward_intermediates(x, indices=2, intermediates_only=True), taps[-2:])
    torch.testing.assert_close(model.forward_intermediates(x, indices=[-1], intermediates_only=True), taps[-1:])
    early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early, taps[:1])
    final_early, _ = model.forward_intermediates(x, indices=[n - 1], stop_early=True)
    assert final_early.shape[1:] == taps[-1].shape[1:] or final_early.shape == final.shape
    other_fmt = [f for f in model.output_fmts if f != 'NCHW'][0]
    other = model.forward_intermediates(x, indices=[n - 1], output_fmt=other_fmt, intermediates_only=True)[0]
    if other_fmt == 'NHWC':
        torch.testing.assert_close(other, taps[-1].permute(0, 2, 3, 1))
    else:
        torch.testing.assert_close(other, taps[-1].flatten(2).transpose(1, 2))
    model.forward_intermediates(x, indices=[n - 1], norm=True, intermediates_only=True)
    with pytest.raises(ValueError, match=r"output_fmt must be one of .*'NDHW'"):
        model.forward_intermediates(x, output_fmt='NDHW')
    with pytest.raises((ValueError, AssertionError, IndexError)):
        model.forward_intermediates(x, indices=[n])


@torch.no_grad()
def test_prune_intermediate_layers(built):
    model, x = built
    n = len(model.feature_info)
    taps = model.forward_intermediates(x, intermediates_only=True)
    expected = model(x)

    kept = copy.deepcopy(model)
    kept.prune_intermediate_layers([n - 1], prune_head=False)
    torch.testing.assert_close(kept(x), expected)

    for index in sorted({0, n // 2}):
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([index])
        assert take == [index]
        torch.testing.assert_close(pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0],
                                   taps[index])
        assert pruned.num_classes == 0 and not list(pruned.head.parameters())
        out = pruned(x)
        assert out.shape[-1 if out.dim() == 3 else 1] == pruned.num_features
        assert all(not m.training for m in pruned.modules())
        pruned.reset_classifier(3, 'avg')
        assert pruned(x).shape == (2, 3)


def test_pruned_model_trains_every_parameter(representative):
    model, x = representative
    pruned = copy.deepcopy(model).train()
    take = pruned.prune_intermediate_layers([0], prune_norm=True)
    features = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
    sum(f.float().sum() for f in features).backward()
    unused = [name for name, p in pruned.named_parameters() if p.grad is None]
    assert not unused


def test_reset_classifier_device_dtype_and_mode(representative):
    model, x = representative
    model = copy.deepcopy(model).to(torch.float64).train()
    model.reset_classifier(5)
    assert all(p.dtype == torch.float64 and p.requires_grad for p in model.head.parameters())
    assert all(m.training for m in model.head.modules())
    assert model(x.double()).shape == (2, 5) and model.num_classes == 5
    model.eval().reset_classifier(0)
    assert model.num_classes == 0 and not any(m.training for m in model.head.modules())
    with torch.no_grad():
        assert model(x.double()).shape == (2, model.head_hidden_size)
    with pytest.raises(ValueError, match='num_classes'):
        model.reset_classifier(-1)


def test_grad_checkpointing_same_output_and_gradients(representative):
    model, x = representative
    model = copy.deepcopy(model)
    plain = model(x)
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    checkpointed.sum().backward()
    torch.testing.assert_close(checkpointed, plain)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


def test_group_matcher_covers_every_parameter(built):
    model, _ = built
    from timm.models import group_parameters
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = [name for names in groups.values() for name in names]
        assert sorted(grouped) == sorted(name for name, _ in model.named_parameters())
        assert len(groups) > 2
    assert set(model.no_weight_decay()) <= set(dict(model.named_parameters()))


@torch.no_grad()
def test_feature_getter(built):
    model, x = built
    n = len(model.feature_info)
    taps = model.forward_intermediates(x, intermediates_only=True)
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=(0, n - 1))
    features = getter(x)
    assert getter.feature_info.channels() == [model.feature_info[0]['num_chs'], model.feature_info[-1]['num_chs']]
    torch.testing.assert_close(features, [taps[0], taps[-1]])


def test_xdist_workers_share_the_cores():
    """`pytest -n N` (the README's command) gives each worker cores // N torch threads by itself."""
    import os
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0') or 0)
    cores = len(os.sched_getaffinity(0))
    expected = max(1, cores // workers) if workers else torch.get_num_threads()
    assert torch.get_num_threads() == expected
    if workers:
        assert os.environ['OMP_NUM_THREADS'] == str(expected)
