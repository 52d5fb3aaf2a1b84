"""Xception (timm's legacy_xception): parity through the checkpoint filter, the blocks, wiring and errors."""
import pytest
import timm
import torch
from torch import nn

from twin_checks import (assert_adapts_in_chans_and_head, assert_filter_rejects, assert_tags_are_timms, assert_twin,
                         timm_checkpoint)
from timm_metalayers.models.xception import XceptionBlock, checkpoint_filter_fn, xception, xception_block


@pytest.fixture(scope='module')
def xception_file(tmp_path_factory):
    return timm_checkpoint('legacy_xception', tmp_path_factory.mktemp('xception'), gain=1.0)


def test_parity_with_timm_through_filter(xception_file):
    ref, path = xception_file
    assert_twin('legacy_xception', ref, path, (64, 64), (80, 72))


def test_pretrained_tags_are_timms():
    assert_tags_are_timms(['legacy_xception'])
    assert timm.data.resolve_data_config(model=timm.create_model('metalayers_legacy_xception.tf_in1k'))[
        'input_size'] == (3, 299, 299)


def test_pretrained_adapts_in_chans_and_head(xception_file):
    _, path = xception_file
    assert_adapts_in_chans_and_head('legacy_xception', path)


def test_filter_names_broken_keys(xception_file):
    ref, _ = xception_file
    assert_filter_rejects(checkpoint_filter_fn, timm.create_model('metalayers_legacy_xception'), ref.state_dict(),
                          missing=['block1.rep.4.running_var', 'block5.rep.4.pointwise.weight'],
                          extra=['block13.skip.weight'],
                          names=[r'entry_flow\.0\.rep\.6\.running_var', r'middle_flow\.1\.rep\.6\.weight',
                                 r'block13\.skip\.weight'])


def test_flows_and_features(xception_file):
    ref, path = xception_file
    model = timm.create_model('metalayers_legacy_xception', features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=path)).eval()
    assert model.feature_info.channels() == [64, 128, 256, 728, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        outs = model(x)
        theirs = ref.forward_intermediates(x, intermediates_only=True)
    assert [o.shape[1] for o in outs] == [64, 128, 256, 728, 2048]
    for ours, tap in zip(outs, theirs):  # timm takes the blocks' outputs after the next block's ReLU
        torch.testing.assert_close(torch.relu(ours), tap, rtol=1e-4, atol=1e-4 * max(1.0, tap.abs().max().item()))
    full = timm.create_model('metalayers_legacy_xception')
    assert len(full.entry_flow) == 3 and len(full.middle_flow) == 8 and len(full.exit_flow) == 3


def test_group_matcher_groups_per_block_as_timms():
    """One group per block, as timm's legacy_xception: every timm parameter and its equivalent here (through the
    filter's names) fall in the same group, and timm's layer-wise LR decay gives both models the same scales."""
    from timm.models import group_parameters
    from timm.optim import create_optimizer_v2
    from timm_metalayers.models.xception import _timm_rename
    ref = timm.create_model('legacy_xception', device='meta')
    ours = timm.create_model('metalayers_legacy_xception', device='meta')
    theirs = group_parameters(ref, ref.group_matcher(coarse=False), reverse=True)
    mine = group_parameters(ours, ours.group_matcher(coarse=False), reverse=True)
    assert len(set(mine.values())) == len(set(theirs.values())) == 15  # stem, 12 blocks, exit convs, head
    assert {_timm_rename(name): group for name, group in theirs.items()} == mine
    assert len(group_parameters(ours, ours.group_matcher(coarse=True))) == 5  # stem, three flows, head

    def scales(model):
        optimizer = create_optimizer_v2(model, 'sgd', lr=1.0, layer_decay=0.5)
        return sorted((round(g['lr_scale'], 8), sum(p.numel() for p in g['params'])) for g in optimizer.param_groups)
    assert scales(timm.create_model('metalayers_legacy_xception')) == scales(timm.create_model('legacy_xception'))
    shallow = xception(middle_repeats=2)  # the groups follow the model's own blocks
    assert len(group_parameters(shallow, shallow.group_matcher())) == 9


def test_xception_block_skip_and_first_activation():
    block = xception_block(16, 32, 2, stride=2).eval()
    assert isinstance(block, XceptionBlock) and isinstance(block.skip, nn.Sequential)
    assert not block.rep[0].inplace and block.rep[4].inplace  # the skip reads the input the first act sees
    assert isinstance(block.rep[-1], nn.MaxPool2d)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        kept = x.clone()
        assert block(x).shape == (1, 32, 4, 4)
        torch.testing.assert_close(x, kept)
    same = xception_block(16, 16, 3, start_with_relu=False)
    assert isinstance(same.skip, nn.Identity) and isinstance(same.rep[0], nn.Conv2d)
    narrow_last = xception_block(16, 32, 2, grow_first=False)
    assert narrow_last.rep[2].out_channels == 16 and narrow_last.rep[6].out_channels == 32


def test_act_norm_and_regularisers():
    model = xception(middle_repeats=2, act_layer='silu', norm_layer=lambda c: nn.GroupNorm(8, c), drop_rate=0.3,
                     global_pool='max', num_classes=4)
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d)) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == 2 + 1 + 2 + 2 + 3 * 2 + 2 + 2
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 2 + 3 * 3 + 3 * 2 + 2 + 1 + 2
    assert model.head.drop.p == 0.3
    plain = xception(middle_repeats=2, act_layer='silu', norm_layer=lambda c: nn.GroupNorm(8, c), num_classes=4)
    assert list(model.state_dict()) == list(plain.state_dict())
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_builder_errors():
    with pytest.raises(ValueError, match='middle_repeats'):
        xception(middle_repeats=0)
    with pytest.raises(ValueError, match='drop_rate'):
        xception(drop_rate=2.0)
    with pytest.raises(ValueError, match='nrepeats'):
        xception_block(8, 8, 0)
    with pytest.raises(TypeError, match='start_with_relu'):
        xception_block(8, 8, 1, start_with_relu='yes')
