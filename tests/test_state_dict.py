"""The one state-dict comparison (timm_metalayers.state_dict) used by filters, Hub loading and resume."""
import pytest
import torch
from torch import nn

from timm_metalayers import hub
from timm_metalayers.models import _helpers
from timm_metalayers.state_dict import (CheckpointMismatchError, HubLoadError, check_state_dict, key_listing,
                                        state_dict_problems)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_one_error_class_everywhere():
    assert hub.CheckpointMismatchError is CheckpointMismatchError
    assert hub.HubLoadError is HubLoadError
    assert _helpers.CheckpointMismatchError is CheckpointMismatchError
    assert issubclass(CheckpointMismatchError, ValueError) and issubclass(CheckpointMismatchError, HubLoadError)


def test_fitting_state_dict_has_no_problems():
    model = _model()
    assert state_dict_problems(model.state_dict(), model.state_dict()) == []
    check_state_dict(model.state_dict(), model)


def test_every_kind_of_problem_is_named():
    model = _model()
    sd = dict(model.state_dict())
    sd.pop('1.running_var')
    sd['9.weight'] = torch.zeros(1)
    sd['3.weight'] = torch.zeros(5, 4)
    with pytest.raises(CheckpointMismatchError) as err:
        check_state_dict(sd, model, source='file.safetensors')
    msg = str(err.value)
    assert msg.startswith('file.safetensors does not fit Sequential: ')
    assert '1 checkpoint key(s) with no place in the model: 9.weight' in msg
    assert '1 model key(s) the checkpoint does not provide: 1.running_var' in msg
    assert '1 shape mismatch(es): 3.weight: checkpoint (5, 4) vs model (2, 4)' in msg


def test_allowances():
    model = _model()
    target = model.state_dict()
    sd = dict(target)
    sd.pop('3.bias')
    sd['3.weight'] = torch.zeros(5, 4)
    sd['extra'] = torch.zeros(1)
    assert len(state_dict_problems(sd, target)) == 3
    assert state_dict_problems(sd, target, may_miss=lambda k: k.startswith('3.'),
                               may_differ=lambda k: k.startswith('3.'),
                               may_be_extra=lambda k: k == 'extra') == []
    assert state_dict_problems(target, target, unmapped=['a -> b']) == [
        '1 checkpoint key(s) with no place in the model: a -> b']


def test_listing_is_bounded():
    assert key_listing(['a', 'b']) == 'a, b'
    assert key_listing([str(i) for i in range(20)], limit=3) == '0, 1, 2, ... (17 more)'


def test_remap_rejects_a_non_mapping():
    with pytest.raises(CheckpointMismatchError, match='expected a state dict, got list'):
        _helpers.remap_checkpoint([1, 2], _model(), lambda k: k)
