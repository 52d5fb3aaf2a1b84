"""What the twins of torchvision's models share (GoogLeNet, SqueezeNet, AlexNet): their pretrained configs
(torchvision's preprocessing, no weights to download), the table naming each one's torchvision twin, and
``ConvStagesNet``, a plain ``stem → stages → head`` network on the shared ``TimmModel``.

torchvision's ImageNet weights are not on the Hub as safetensors, so these models have no pretrained tags:
a torchvision state dict loads through the family's ``checkpoint_filter_fn`` (``hub.load_weights``,
``scripts/convert_torchvision.py``).
"""
from typing import Any, Dict, List, Tuple

from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..layers.classifier import ClassifierHead
from ._base import ModelArgs, TimmModel

__all__ = ['TORCHVISION_TWINS', 'torchvision_pretrained_cfgs', 'create_torchvision_twin', 'ConvStagesNet']

# metalayers model name -> (torchvision builder name, the arguments that make it our twin)
TORCHVISION_TWINS: Dict[str, Tuple[str, Dict[str, Any]]] = {}


def torchvision_pretrained_cfgs(twins: Dict[str, Tuple[str, Dict[str, Any], Tuple[int, int]]], *, first_conv: str,
                                classifier: str = 'head.fc') -> Dict:
    """``default_cfgs`` for twins of torchvision models: ``{our name: (torchvision name, its arguments,
    pool_size)}``. torchvision's preprocessing (ImageNet mean / std, 224, crop 0.875, bilinear), no weights
    (no ``hf_hub_id`` / ``url``); every entry also lands in ``TORCHVISION_TWINS``."""
    cfgs = {}
    for name, (tv_name, tv_kwargs, pool_size) in twins.items():
        TORCHVISION_TWINS[name] = (tv_name, dict(tv_kwargs))
        cfgs[name] = dict(
            num_classes=1000, input_size=(3, 224, 224), pool_size=pool_size, crop_pct=0.875,
            interpolation='bilinear', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
            first_conv=first_conv, classifier=classifier, license='bsd-3-clause',
            origin_url='https://github.com/pytorch/vision', notes=(f'twin of torchvision.models.{tv_name}',))
    return generate_default_cfgs(cfgs)


def create_torchvision_twin(name: str, **kwargs) -> nn.Module:
    """torchvision's model that ``name`` (a registered ``metalayers_*`` model) is the twin of, random weights."""
    import torchvision
    if name not in TORCHVISION_TWINS:
        raise ValueError(f'{name!r} has no torchvision twin; those that do: {sorted(TORCHVISION_TWINS)}')
    tv_name, tv_kwargs = TORCHVISION_TWINS[name]
    return torchvision.models.get_model(tv_name, weights=None, **{**tv_kwargs, **kwargs})


class ConvStagesNet(TimmModel):
    """A plain convnet: ``stem`` → ``stages`` → ``head``, the modules a family's builder made.

    ``feature_info`` names the stem and the stages whose outputs are the features; ``args`` are timm's arguments
    the family's builder took (``ModelArgs``). Build it in ``args.device_context()``.
    """
    block_pattern = r'^stages\.(\d+)\.(\d+)'
    block_pattern_coarse = r'^stages\.(\d+)'

    def __init__(self, stem: nn.Module, stages: nn.Sequential, head: ClassifierHead,
                 feature_info: List[Dict[str, Any]], args: ModelArgs):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.attach_head(feature_info[-1]['num_chs'], feature_info, args, head=head)
