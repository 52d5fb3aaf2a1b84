"""Metalhead.jl's model constructors, one table each: the values of Metalhead's arguments → the registered
``metalayers_*`` model (see ``_spec`` for how a call reads its table). Fixed ``timm.create_model`` arguments
are Metalhead's built-in dropout / stochastic-depth rates where they differ from the registered model's."""
from ._spec import ANY, Arg, Constructor, rows

__all__ = ['AlexNet', 'VGG', 'SqueezeNet', 'GoogLeNet', 'Inceptionv3', 'Inceptionv4', 'InceptionResNetv2',
           'Xception', 'ResNet', 'WideResNet', 'ResNeXt', 'SEResNet', 'SEResNeXt', 'Res2Net', 'Res2NeXt',
           'DenseNet', 'EfficientNet', 'EfficientNetv2', 'MobileNetv1', 'MobileNetv2', 'MobileNetv3', 'MNASNet',
           'ConvNeXt', 'ConvMixer', 'MLPMixer', 'ResMLP', 'gMLP', 'ViT']

_DEPTH = Arg('depth', positional=True)
_CONFIG = Arg('config', kind='symbol', positional=True)
_WIDTH = Arg('width_mult', 1.0, 'real')
_CARDINALITY, _BASE_WIDTH = Arg('cardinality', 32), Arg('base_width', 4)
_IMSIZE = Arg('imsize', (224, 224), 'dims', timm_name='img_size')
_MIXER_IMSIZE = Arg('imsize', (224, 224), 'dims', timm_name='img_size', weights_fixed=True)  # token MLPs
_PATCH = Arg('patch_size', (16, 16), 'dims')
_P16, _P8 = (16, 16), (8, 8)

# -- classic CNNs ---------------------------------------------------------------------------------------------
AlexNet = Constructor('AlexNet', [], rows({(): 'alexnet'}), 'AlexNet (torchvision\'s twin; no pretrained weights).')
VGG = Constructor('VGG', [_DEPTH, Arg('batchnorm', False, 'bool')], rows(
    {(d, bn): f'vgg{d}{"_bn" if bn else ""}' for d in (11, 13, 16, 19) for bn in (False, True)}, drop_rate=0.5),
    'VGG of ``depth`` 11, 13, 16 or 19, with a batch norm after each conv when ``batchnorm``.')
SqueezeNet = Constructor('SqueezeNet', [], rows({(): 'squeezenet1_1'}),
                         'SqueezeNet 1.1 (Metalhead\'s table; torchvision\'s twin, no pretrained weights).')
GoogLeNet = Constructor(
    'GoogLeNet', [Arg('batchnorm', False, 'bool'), Arg('bias', True, 'bool')],
    rows({(True, False): 'googlenet'}, drop_rate=0.4),
    'GoogLeNet (Inception-v1): torchvision\'s network, so ``batchnorm=True, bias=False``.',
    note='metalayers_googlenet is torchvision\'s GoogLeNet, a batch norm after every bias-free conv; Metalhead.jl\'s '
         'default batchnorm=false, bias=true network is not built here')

# -- Inception family -------------------------------------------------------------------------------------------
Inceptionv3 = Constructor('Inceptionv3', [], rows({(): 'inception_v3'}, drop_rate=0.2), 'Inception-v3.')
Inceptionv4 = Constructor('Inceptionv4', [], rows({(): 'inception_v4'}), 'Inception-v4.')
InceptionResNetv2 = Constructor('InceptionResNetv2', [], rows({(): 'inception_resnet_v2'}), 'Inception-ResNet-v2.')
Xception = Constructor('Xception', [], rows({(): 'legacy_xception'}), 'Xception (the 2017 network, timm\'s '
                       '``legacy_xception``).')

# -- ResNet family ----------------------------------------------------------------------------------------------
ResNet = Constructor('ResNet', [_DEPTH], rows({18: ('resnet18', 'tv_in1k'), 34: ('resnet34', 'tv_in1k'),
                                               50: ('resnet50', 'tv2_in1k'), 101: ('resnet101', 'tv2_in1k'),
                                               152: ('resnet152', 'tv2_in1k')}), 'ResNet of ``depth`` layers.')
WideResNet = Constructor('WideResNet', [_DEPTH], rows({50: ('wide_resnet50_2', 'tv2_in1k'),
                                                       101: ('wide_resnet101_2', 'tv2_in1k')}),
                         'Wide ResNet: a ResNet with twice the bottleneck width.')
ResNeXt = Constructor('ResNeXt', [_DEPTH, _CARDINALITY, _BASE_WIDTH],
                      rows({(50, 32, 4): ('resnext50_32x4d', 'tv2_in1k'), (101, 32, 8): ('resnext101_32x8d', 'tv2_in1k')}),
                      'ResNeXt: ``cardinality`` groups of ``base_width`` channels in each 3x3 conv.')
SEResNet = Constructor('SEResNet', [_DEPTH], rows({50: 'seresnet50'}), 'ResNet with squeeze-excite blocks.')
SEResNeXt = Constructor('SEResNeXt', [_DEPTH, _CARDINALITY, _BASE_WIDTH],
                        rows({(50, 32, 4): 'seresnext50_32x4d', (101, 32, 8): 'seresnext101_32x8d'}),
                        'ResNeXt with squeeze-excite blocks.')
Res2Net = Constructor('Res2Net', [_DEPTH, Arg('scale', 4), Arg('base_width', 26)], rows(
    {(50, 4, 26): 'res2net50_26w_4s', (50, 8, 14): 'res2net50_14w_8s', (50, 6, 26): 'res2net50_26w_6s',
     (50, 8, 26): 'res2net50_26w_8s', (50, 2, 48): 'res2net50_48w_2s', (101, 4, 26): 'res2net101_26w_4s'}),
    'Res2Net: ``scale`` groups of ``base_width`` channels in the multi-scale block.')
Res2NeXt = Constructor('Res2NeXt', [_DEPTH, Arg('scale', 4), Arg('base_width', 4), Arg('cardinality', 8)],
                       rows({(50, 4, 4, 8): 'res2next50'}), 'Res2Net with grouped 3x3 convs (``cardinality``).')

# -- DenseNet ---------------------------------------------------------------------------------------------------
DenseNet = Constructor(
    'DenseNet', [Arg('config', positional=True), Arg('growth_rate', 32), Arg('reduction', 0.5, 'real')],
    rows({(121, 32, 0.5): 'densenet121', (161, 48, 0.5): 'densenet161', (169, 32, 0.5): 'densenet169',
          (201, 32, 0.5): 'densenet201'}),
    'DenseNet-121, -161, -169 or -201 (``config``).',
    note='DenseNet-161 as published (torchvision, timm) has growth_rate=48, hence a 96-wide stem; Metalhead.jl\'s '
         'default growth_rate=32 makes another network')

# -- inverted-residual families ---------------------------------------------------------------------------------
EfficientNet = Constructor('EfficientNet', [_CONFIG], rows({f'b{i}': f'efficientnet_b{i}' for i in range(8)},
                                                           drop_path_rate=0.2),
                           'EfficientNet ``"b0"`` ... ``"b7"`` (PyTorch padding: timm\'s ``efficientnet_b*``).')
EfficientNetv2 = Constructor('EfficientNetv2', [_CONFIG], rows(
    {size: f'tf_efficientnetv2_{size[0] if size != "xlarge" else "xl"}' for size in ('small', 'medium', 'large', 'xlarge')},
    drop_path_rate=0.2), 'EfficientNetV2 ``"small"``, ``"medium"``, ``"large"`` or ``"xlarge"`` (timm\'s '
    '``tf_efficientnetv2_*``, TensorFlow padding).')
MobileNetv1 = Constructor('MobileNetv1', [Arg('width_mult', 1.0, 'real', positional=True)],
                          rows({1.0: 'mobilenetv1_100', 1.25: 'mobilenetv1_125'}), 'MobileNet-v1.')
MobileNetv2 = Constructor('MobileNetv2', [Arg('width_mult', 1.0, 'real', positional=True)],
                          rows({0.5: 'mobilenetv2_050', 1.0: 'mobilenetv2_100', 1.4: 'mobilenetv2_140'}, drop_rate=0.2),
                          'MobileNet-v2.')
MobileNetv3 = Constructor('MobileNetv3', [_CONFIG, _WIDTH], rows(
    {('small', 0.5): 'mobilenetv3_small_050', ('small', 0.75): 'mobilenetv3_small_075',
     ('small', 1.0): 'mobilenetv3_small_100', ('large', 1.0): 'mobilenetv3_large_100'}),
    'MobileNet-v3 ``"small"`` or ``"large"``.')
MNASNet = Constructor('MNASNet', [_CONFIG, _WIDTH], rows(
    {('B1', 1.0): 'mnasnet_100', ('A1', 1.0): 'semnasnet_100', ('small', 1.0): 'mnasnet_small'}, drop_rate=0.2),
    'MNASNet ``"B1"``, ``"A1"`` (with squeeze-excite) or ``"small"``.')

# -- ConvNeXt, ConvMixer ----------------------------------------------------------------------------------------
ConvNeXt = Constructor('ConvNeXt', [_CONFIG], rows({size: f'convnext_{size}' for size in
                                                    ('tiny', 'small', 'base', 'large', 'xlarge')}),
                       'ConvNeXt ``"tiny"`` ... ``"xlarge"``.')
ConvMixer = Constructor(
    'ConvMixer', [_CONFIG, Arg('patch_size', 7)],
    rows({('small', 7): 'convmixer_768_32', ('base', 7): 'convmixer_1536_20', ('large', 14): 'convmixer_1024_20_ks9_p14'}),
    'ConvMixer ``"small"`` (768/32), ``"base"`` (1536/20) or ``"large"`` (1024/20, which needs ``patch_size=14``).',
    note='patch_size is not an argument of Metalhead.jl\'s ConvMixer, whose configurations all have 7x7 patches; '
         'timm\'s ConvMixer-1024/20 has 14x14')

# -- MLP mixers, ViT --------------------------------------------------------------------------------------------
MLPMixer = Constructor('MLPMixer', [_CONFIG, _MIXER_IMSIZE, _PATCH], rows(
    {(size, ANY, _P16): f'mixer_{size[0]}16_224' for size in ('small', 'base', 'large')}),
    'MLP-Mixer ``"small"``, ``"base"`` or ``"large"``, 16x16 patches of ``imsize`` images.')
ResMLP = Constructor('ResMLP', [_CONFIG, _MIXER_IMSIZE, _PATCH], rows(
    {('S12', ANY, _P16): 'resmlp_12_224', ('S24', ANY, _P16): 'resmlp_24_224', ('S36', ANY, _P16): 'resmlp_36_224',
     ('B24', ANY, _P8): 'resmlp_big_24_224'}),
    'ResMLP ``"S12"``, ``"S24"``, ``"S36"`` (16x16 patches) or ``"B24"`` (8x8 patches): the paper\'s sizes.',
    note='Metalhead.jl\'s ResMLP sizes (:small 8 blocks x 512, :base 12 x 768, :large 24 x 1024, :huge 32 x 1280) '
         'are none of the published ResMLPs; these configs are the paper\'s (timm\'s resmlp_*_224)')
gMLP = Constructor('gMLP', [_CONFIG, _MIXER_IMSIZE, _PATCH], rows(
    {('Ti', ANY, _P16): 'gmlp_ti16_224', ('S', ANY, _P16): 'gmlp_s16_224', ('B', ANY, _P16): 'gmlp_b16_224'}),
    'gMLP ``"Ti"``, ``"S"`` or ``"B"``: the paper\'s sizes, 16x16 patches.',
    note='Metalhead.jl\'s gMLP sizes (:small 8 blocks x 512, :base 12 x 768, :large 24 x 1024, :huge 32 x 1280) '
         'are none of the published gMLPs; these configs are the paper\'s gMLP-Ti, -S and -B (timm\'s gmlp_*16_224)')
ViT = Constructor('ViT', [_CONFIG, _IMSIZE, _PATCH], rows(
    {('tiny', ANY, _P16): 'vit_tiny_patch16_224', ('small', ANY, _P16): 'vit_small_patch16_224',
     ('base', ANY, _P16): 'vit_base_patch16_224', ('base', (384, 384), _P16): 'vit_base_patch16_384',
     ('base', ANY, (32, 32)): 'vit_base_patch32_224', ('large', ANY, _P16): 'vit_large_patch16_224'},
    pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1),
    'Vision Transformer: ``config`` ``"tiny"`` ... ``"large"``, ``patch_size`` patches of ``imsize`` images (another '
    'size than the model\'s own resamples pretrained position embeddings).')
