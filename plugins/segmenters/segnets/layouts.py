"""The expected layout of every supported encoder and decoder as ``{key: shape}``, written from the upstream
constructors, so that a file is checked key by key before anything runs; and which encoder or decoder a
state dict holds.

Widths: the published files are at the published widths (ResNet stem 64, PPM 512, ...). A file whose
every width is the published one divided by the same integer ``div`` (read from the stem) is accepted
too, with all names and every other dimension as published: the tests use such files (``div`` 16) to
stay fast. ``weights_info`` records ``div`` when it is not 1.
"""
from __future__ import annotations

import re

PPM_SCALES = (1, 2, 3, 6)  # pool_scales of PPM, PPMDeepsup and UPerNet in both repositories
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def bn_layout(layout: dict, prefix: str, channels: int) -> None:
    for field in BN_FIELDS:
        layout[f"{prefix}.{field}"] = (channels,)


def conv_bn_layout(layout: dict, conv: str, bn: str, cout: int, cin: int, k: int) -> None:
    layout[f"{conv}.weight"] = (cout, cin, k, k)
    bn_layout(layout, bn, cout)


RESNET_DEPTHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3)),
                 "resnet101": ("bottleneck", (3, 4, 23, 3))}


def resnet_layout(depth: str, div: int = 1) -> dict:
    """The encoder of ``Resnet``/``ResnetDilated`` around CSAIL's deep-stem ResNet (mit_semseg/models/
    resnet.py and netdissect/upsegmodel/resnet.py ``ResNet``): three 3x3 stem convs (3->64 stride 2,
    64->64, 64->128) each with a BN, then ``layer1..4`` of planes 64, 128, 256, 512 starting from 128
    input channels, a 1x1 ``downsample`` conv + BN on the first block of every layer (its stride or
    its width changes). ``avgpool``/``fc`` are not part of the encoder (``Resnet.__init__`` drops them)."""
    kind, counts = RESNET_DEPTHS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    layout: dict = {}
    conv_bn_layout(layout, "conv1", "bn1", 64 // div, 3, 3)
    conv_bn_layout(layout, "conv2", "bn2", 64 // div, 64 // div, 3)
    conv_bn_layout(layout, "conv3", "bn3", 128 // div, 64 // div, 3)
    inplanes = 128 // div
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        planes //= div
        for b in range(blocks):
            p = f"layer{li}.{b}"
            if kind == "bottleneck":
                conv_bn_layout(layout, f"{p}.conv1", f"{p}.bn1", planes, inplanes, 1)
                conv_bn_layout(layout, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
                conv_bn_layout(layout, f"{p}.conv3", f"{p}.bn3", planes * 4, planes, 1)
            else:
                conv_bn_layout(layout, f"{p}.conv1", f"{p}.bn1", planes, inplanes, 3)
                conv_bn_layout(layout, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
            if b == 0 and (li > 1 or inplanes != planes * expansion):
                conv_bn_layout(layout, f"{p}.downsample.0", f"{p}.downsample.1", planes * expansion, inplanes, 1)
            inplanes = planes * expansion
    return layout


# HRNetV2-W48 as configured in mit_semseg/models/hrnet.py HRNetV2.__init__ (``extra``): stages of
# (modules, channels per branch); every branch is 4 BasicBlocks.
HRNET_STAGES = ((1, (48, 96)), (4, (48, 96, 192)), (3, (48, 96, 192, 384)))


def hrnet_layout(div: int = 1) -> dict:
    """HRNetV2 (mit_semseg/models/hrnet.py): stem conv1/conv2 (3x3 stride 2, 64) with BN, ``layer1`` of
    4 Bottlenecks (64 -> 256), then transitions and stages 2-4 with multi-resolution fusion."""
    layout: dict = {}
    conv_bn_layout(layout, "conv1", "bn1", 64 // div, 3, 3)
    conv_bn_layout(layout, "conv2", "bn2", 64 // div, 64 // div, 3)
    inplanes, planes = 64 // div, 64 // div
    for b in range(4):
        p = f"layer1.{b}"
        conv_bn_layout(layout, f"{p}.conv1", f"{p}.bn1", planes, inplanes, 1)
        conv_bn_layout(layout, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
        conv_bn_layout(layout, f"{p}.conv3", f"{p}.bn3", planes * 4, planes, 1)
        if b == 0:
            conv_bn_layout(layout, f"{p}.downsample.0", f"{p}.downsample.1", planes * 4, inplanes, 1)
        inplanes = planes * 4
    previous = [inplanes]
    for s, (modules, channels) in enumerate(HRNET_STAGES, start=2):
        channels = [c // div for c in channels]
        t = f"transition{s - 1}"
        for i, c in enumerate(channels):  # _make_transition_layer
            if i < len(previous):
                if c != previous[i]:
                    conv_bn_layout(layout, f"{t}.{i}.0", f"{t}.{i}.1", c, previous[i], 3)
            else:
                for j in range(i + 1 - len(previous)):
                    cout = c if j == i - len(previous) else previous[-1]
                    conv_bn_layout(layout, f"{t}.{i}.{j}.0", f"{t}.{i}.{j}.1", cout, previous[-1], 3)
        for m in range(modules):  # HighResolutionModule: branches, then fuse_layers
            p = f"stage{s}.{m}"
            for br, c in enumerate(channels):
                for b in range(4):
                    q = f"{p}.branches.{br}.{b}"
                    conv_bn_layout(layout, f"{q}.conv1", f"{q}.bn1", c, c, 3)
                    conv_bn_layout(layout, f"{q}.conv2", f"{q}.bn2", c, c, 3)
            for i, ci in enumerate(channels):
                for j, cj in enumerate(channels):
                    f = f"{p}.fuse_layers.{i}.{j}"
                    if j > i:
                        conv_bn_layout(layout, f"{f}.0", f"{f}.1", ci, cj, 1)
                    elif j < i:
                        for k in range(i - j):
                            cout = ci if k == i - j - 1 else cj
                            conv_bn_layout(layout, f"{f}.{k}.0", f"{f}.{k}.1", cout, cj, 3)
        previous = channels
    return layout


def hrnet_channels(div: int = 1) -> int:
    """Channels of HRNetV2's output: its four branches concatenated (720 published)."""
    return sum(HRNET_STAGES[-1][1]) // div


def ppm_layout(layout: dict, fc_dim: int, div: int, prefix: str = "ppm") -> None:
    """PPM / PPMDeepsup (mit_semseg/models/models.py): ``ppm.i`` = [AdaptiveAvgPool2d, conv 1x1 fc_dim->512,
    BN, ReLU]; ``conv_last`` = [conv 3x3 (fc_dim + 4*512)->512, BN, ReLU, Dropout2d, conv 1x1 -> classes]."""
    width = 512 // div
    for i in range(len(PPM_SCALES)):
        conv_bn_layout(layout, f"{prefix}.{i}.1", f"{prefix}.{i}.2", width, fc_dim, 1)
    conv_bn_layout(layout, "conv_last.0", "conv_last.1", width, fc_dim + len(PPM_SCALES) * width, 3)


def deepsup_layout(layout: dict, fc_dim: int, classes: int) -> None:
    """The deep-supervision branch (training only, but in the file): ``cbr_deepsup`` 3x3 fc_dim/2 ->
    fc_dim/4 + BN, ``conv_last_deepsup`` 1x1 -> classes (mit_semseg ``PPMDeepsup``, ``C1DeepSup``)."""
    conv_bn_layout(layout, "cbr_deepsup.0", "cbr_deepsup.1", fc_dim // 4, fc_dim // 2, 3)
    layout["conv_last_deepsup.weight"] = (classes, fc_dim // 4, 1, 1)
    layout["conv_last_deepsup.bias"] = (classes,)


def upernet_body_layout(layout: dict, fc_dim: int, fpn_dim: int, div: int, fusion: str) -> None:
    """UPerNet's PPM + FPN + fusion conv (netdissect/upsegmodel/models.py and mit_semseg/models/models.py
    ``UPerNet``): ``ppm_conv.i`` = [conv 1x1 fc_dim->512, BN, ReLU]; ``ppm_last_conv`` = conv3x3_bn_relu
    (fc_dim + 4*512 -> fpn_dim); ``fpn_in.i`` = [conv 1x1 (256, 512, 1024 of ResNet's layers 1-3) ->
    fpn_dim, BN, ReLU]; ``fpn_out.i.0`` = conv3x3_bn_relu(fpn_dim); ``fusion`` (``conv_fusion`` in UPP,
    ``conv_last.0`` in mit_semseg) = conv3x3_bn_relu(4*fpn_dim -> fpn_dim)."""
    width = 512 // div
    for i in range(len(PPM_SCALES)):
        conv_bn_layout(layout, f"ppm_conv.{i}.0", f"ppm_conv.{i}.1", width, fc_dim, 1)
    conv_bn_layout(layout, "ppm_last_conv.0", "ppm_last_conv.1", fpn_dim, fc_dim + len(PPM_SCALES) * width, 3)
    for i, inplanes in enumerate((256, 512, 1024)):
        conv_bn_layout(layout, f"fpn_in.{i}.0", f"fpn_in.{i}.1", fpn_dim, inplanes // div, 1)
        conv_bn_layout(layout, f"fpn_out.{i}.0.0", f"fpn_out.{i}.0.1", fpn_dim, fpn_dim, 3)
    conv_bn_layout(layout, f"{fusion}.0", f"{fusion}.1", fpn_dim, 4 * fpn_dim, 3)


def decoder_kind(state: dict) -> str:
    """Which decoder a state dict holds, from its key names (to name a wrong file's architecture)."""
    if "object_head.1.weight" in state or "part_head.1.weight" in state:
        return "upp-upernet"  # Unified Perceptual Parsing: object/part/material/scene heads
    if any(k.startswith("ppm_conv.") for k in state):
        return "upernet"
    if any(k.startswith("ppm.") for k in state):
        return "ppm_deepsup" if "conv_last_deepsup.weight" in state else "ppm"
    if "cbr.0.weight" in state:
        return "c1_deepsup" if "conv_last_deepsup.weight" in state else "c1"
    return "unknown"


def encoder_kind(state: dict) -> str:
    """Which encoder a state dict holds: resnet18/50/101 (from block type and count) or hrnetv2."""
    if any(k.startswith("transition1.") for k in state):
        return "hrnetv2"
    if "layer1.0.conv1.weight" not in state:
        return "unknown"
    if "layer1.0.conv3.weight" in state:
        blocks = {int(m.group(1)) for k in state for m in [re.match(r"layer3\.(\d+)\.", k)] if m}
        return "resnet101" if len(blocks) > 6 else "resnet50"
    return "resnet18"
