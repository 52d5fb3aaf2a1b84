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


def test_efficientnet_section_custom_build_runs():
    blocks = section_blocks('efficientnet')
    assert 'invresmodel(table' in blocks[0]
    exec(compile(blocks[0], 'README.md[efficientnet]', 'exec'), {'__name__': '__readme__'})
