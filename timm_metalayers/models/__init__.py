"""Reference model families built from ``timm_metalayers.layers``, registered with timm on import."""
from . import resnet
from . import vision_transformer
from . import mobilenetv3
