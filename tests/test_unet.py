"""UNet on several encoders: per-pixel logits at the input size, training, compile, backbone weights, errors."""
import functools

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import timm_metalayers  # noqa: F401 (registers the models)
from random_weights import randomize_weights
from timm_metalayers.models.unet import UNet, create_unet, pixel_shuffle_icnr

BACKBONES = ['metalayers_resnet18', 'metalayers_mobilenetv3_small_050', 'metalayers_googlenet']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@functools.lru_cache(maxsize=None)
def _unet(backbone: str, num_classes: int = 4) -> UNet:
    torch.manual_seed(0)
    return create_unet(backbone, num_classes=num_classes)


@pytest.mark.parametrize('backbone', BACKBONES)
def test_logits_at_input_size(backbone):
    model = _unet(backbone).eval()
    assert model.reduction == 32
    with torch.no_grad():
        for size in ((64, 64), (96, 160)):
            out = model(torch.randn(2, 3, *size))
            assert out.shape == (2, 4, *size)
            assert torch.isfinite(out).all()


def test_decoder_follows_the_encoder():
    model = _unet('metalayers_resnet18')
    # skips: the input and the features at strides 2, 4, 8, 16; the stride-32 feature goes through the middle
    assert len(model.decoder) == 5
    assert [block.skip_norm.num_features for block in model.decoder] == [256, 128, 64, 64, 3]
    assert model.middle[0][0].out_channels == 2 * 512
    assert model.final[1].out_channels == 4 and model.final[1].in_channels == 64
    # features every 2x apart: pixel shuffles by 2; with out_indices from stride 4 the last one upsamples by 4
    coarse = create_unet('metalayers_resnet18', num_classes=2, out_indices=(1, 2, 3, 4), head_planes=16).eval()
    assert [b.up[1].upscale_factor for b in coarse.decoder] == [2, 2, 2, 4]
    assert coarse.final[1].in_channels == 16
    with torch.no_grad():
        assert coarse(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)


def test_in_chans_reaches_encoder_and_skip():
    model = create_unet('metalayers_mobilenetv3_small_050', num_classes=1, in_chans=1).eval()
    assert model.decoder[-1].skip_norm.num_features == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_training_step_gives_finite_gradients_everywhere():
    model = create_unet('metalayers_mobilenetv3_small_050', num_classes=3).train()
    x, target = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_compile_fullgraph():
    model = _unet('metalayers_resnet18').eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_pretrained_backbone_weights_from_file(tmp_path):
    ref = randomize_weights(timm.create_model('resnet18'))
    path = str(tmp_path / 'resnet18.safetensors')
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    overlay = dict(file=path)
    model = create_unet('metalayers_resnet18', num_classes=2, pretrained_backbone=True,
                        pretrained_cfg_overlay=overlay)
    backbone = timm.create_model('metalayers_resnet18', pretrained=True, pretrained_cfg_overlay=overlay)
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith('head.')}
    got = {k[len('model.'):]: v for k, v in model.encoder.state_dict().items()}  # FeatureGetterNet's .model
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    torch.testing.assert_close(got['stem.0.weight'], ref.conv1.weight)  # timm's weights, through the filter
    scratch = create_unet('metalayers_resnet18', num_classes=2)
    assert not all(torch.equal(a, b) for a, b in zip(scratch.encoder.state_dict().values(), expected.values()))


def test_icnr_upsampling_starts_as_nearest_neighbour_groups():
    up = pixel_shuffle_icnr(8, 4, r=2)
    weight = up[0][0].weight
    assert weight.shape == (16, 8, 1, 1)
    groups = weight.view(4, 4, 8)  # each output channel's r*r sub-pixel kernels start equal
    assert torch.equal(groups, groups[:, :1].expand_as(groups))
    out = up.eval()(torch.randn(1, 8, 5, 5))
    assert out.shape == (1, 4, 10, 10)
    torch.testing.assert_close(out[..., 0::2, 0::2], out[..., 1::2, 1::2])


def test_errors():
    model = _unet('metalayers_resnet18')
    with pytest.raises(ValueError, match='65x64 must be divisible by the encoder\'s reduction 32'):
        model(torch.randn(1, 3, 65, 64))
    squeeze = create_unet('metalayers_squeezenet1_1', num_classes=2)
    with pytest.raises(ValueError, match='padding does not keep exact output strides'):
        squeeze(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="backbone='no_such_model'"):
        create_unet('no_such_model')
    with pytest.raises(ValueError, match='num_classes'):
        create_unet(num_classes=0)
    with pytest.raises(TypeError, match='features_only'):
        create_unet(features_only=False)
    with pytest.raises(ValueError, match='grow by whole factors'):
        create_unet('metalayers_resnet18', out_indices=(1, 1, 2))
