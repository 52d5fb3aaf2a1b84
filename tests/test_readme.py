"""The Python examples of the README's Layers and model-machinery sections run and their assertions hold."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def section_blocks(section: str):
    text = README.read_text(encoding='utf-8')
    match = re.search(rf'<!-- section:{section} -->(.*?)<!-- /section:{section} -->', text, re.S)
    assert match, f'README.md has no <!-- section:{section} --> ... <!-- /section:{section} --> section'
    return re.findall(r'^```python\n(.*?)^```', match.group(1), re.S | re.M)


def layers_section_blocks():
    return section_blocks('layers')


def test_layers_section_has_the_guide_examples():
    code = '\n'.join(layers_section_blocks())
    for example in ['conv_norm((3, 3), 32, 64)', '*conv_norm((3, 3), 32, 64)', 'conv_norm((3, 3), 32, 64, "sigmoid")',
                    'norm_layer=lambda planes: nn.GroupNorm(4, planes)',
                    'norm_layer=lambda planes: nn.BatchNorm2d(planes, eps=1e-3)',
                    'create_classifier(512, 1000,', 'create_classifier(512, 1280, 1000,',
                    'DropBlock(', 'StochasticDepth(', 'linear_scheduler(', 'AdaptiveMeanMaxPool(']:
        assert example in code, example


def test_layers_section_has_code_blocks():
    assert len(layers_section_blocks()) >= 4


@pytest.mark.parametrize('index', range(len(layers_section_blocks())))
def test_layers_section_block_runs(index):
    block = layers_section_blocks()[index]
    exec(compile(block, f'README.md[layers block {index}]', 'exec'), {'__name__': '__readme__'})


def test_machinery_section_family_runs():
    blocks = section_blocks('machinery')
    assert len(blocks) == 1 and 'class TinyNet(TimmModel)' in blocks[0]
    exec(compile(blocks[0], 'README.md[machinery]', 'exec'), {'__name__': '__readme__'})


def test_torchvision_twins_section_runs():
    blocks = section_blocks('torchvision')
    assert 'squeezenet((3, 32' in blocks[0] and 'load_weights(' in blocks[1]
    for i, block in enumerate(blocks):
        exec(compile(block, f'README.md[torchvision block {i}]', 'exec'), {'__name__': '__readme__'})


def test_unet_section_fine_tunes_on_synthetic_shapes():
    blocks = section_blocks('unet')
    assert len(blocks) == 1 and 'create_unet(' in blocks[0] and len(blocks[0].splitlines()) <= 35
    exec(compile(blocks[0], 'README.md[unet]', 'exec'), {'__name__': '__readme__'})


@pytest.mark.parametrize('section, call', [('convnext', 'convnext((2, 2, 4, 2)'), ('mlp-mixer', 'mlpmixer(resmlp_block')])
def test_family_section_custom_build_runs(section, call):
    """The one-call custom ConvNeXt and custom mixer of their README sections build and run."""
    blocks = section_blocks(section)
    assert len(blocks) == 1 and call in blocks[0]
    exec(compile(blocks[0], f'README.md[{section}]', 'exec'), {'__name__': '__readme__'})


def test_efficientnet_section_custom_build_runs():
    blocks = section_blocks('efficientnet')
    assert 'invresmodel(table' in blocks[0]
    exec(compile(blocks[0], 'README.md[efficientnet]', 'exec'), {'__name__': '__readme__'})
