"""Reference model families built from ``timm_metalayers.layers``, registered with timm on import."""
from . import resnet
from . import vision_transformer
from . import inception_v3, inception_v4, inception_resnet_v2
from . import mobilenetv3
from . import googlenet, squeezenet, alexnet
from . import convnext, convmixer, mlp_mixer
from . import efficientnet
from . import vgg
from . import densenet
from . import xception
