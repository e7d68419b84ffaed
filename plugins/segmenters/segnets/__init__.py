"""Building blocks of CSAIL's scene-parsing networks, shared by the ``upp`` and ``semseg`` segmenters.

Both families (CSAILVision/gandissect ``netdissect/upsegmodel/`` and CSAILVision/semantic-segmentation-
pytorch ``mit_semseg/models/``) save an encoder and a decoder as two plain state dicts. Modules:
:mod:`.files` (finding, reading and checking them), :mod:`.layouts` (the expected ``{key: shape}`` of every
supported encoder and decoder), :mod:`.networks` (the networks built from a checked state dict, batch norms
folded), :mod:`.pooling` (PrRoIPool over whole-image RoIs, adaptive pooling), :mod:`.segmenter` (what the
two segmenters share: option checks, input resize, the device and dtype).
"""
from .files import checked, find_checkpoints, load_plain, weights_info, width_divisor
from .layouts import (
    PPM_SCALES,
    conv_bn_layout,
    decoder_kind,
    deepsup_layout,
    encoder_kind,
    hrnet_channels,
    hrnet_layout,
    ppm_layout,
    resnet_layout,
    upernet_body_layout,
)
from .networks import HRNetEncoder, ResNetEncoder, UPerNetBody, classifier, conv_bn
from .pooling import adaptive_pool, prroi_pool_whole
from .segmenter import NetSegmenter, check_dtype, check_positive, check_sizes, netdissect_resize, scene_background

__all__ = ["HRNetEncoder", "NetSegmenter", "PPM_SCALES", "ResNetEncoder", "UPerNetBody", "adaptive_pool",
           "check_dtype", "check_positive", "check_sizes", "checked", "classifier", "conv_bn", "conv_bn_layout",
           "decoder_kind", "deepsup_layout", "encoder_kind", "find_checkpoints", "hrnet_channels", "hrnet_layout",
           "load_plain", "netdissect_resize", "ppm_layout", "prroi_pool_whole", "resnet_layout", "scene_background",
           "upernet_body_layout", "weights_info", "width_divisor"]
