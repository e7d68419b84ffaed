"""The networks built from a checked state dict (deep-stem ResNet, HRNetV2, UPerNet's pyramid pooling and
FPN), with every eval-mode batch norm folded into the convolution before it (one pass over each feature map
instead of two; BN's eps is 1e-5 in both ``torch.nn.BatchNorm2d`` and ``SynchronizedBatchNorm2d``,
mit_semseg/lib/nn/modules/batchnorm.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layouts import HRNET_STAGES, PPM_SCALES, RESNET_DEPTHS

BN_EPS = 1e-5


def folded(state: dict, conv: str, bn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with an eval-mode BN after it folded in, in float64:
    ``BN(W*x) = (g / sqrt(v + eps)) W*x + (b - m g / sqrt(v + eps))``. The networks are built in float64
    and cast once to the dtype they run in, so a float64 segmenter is exact to float64 rounding (the
    files' float32 values are exact in float64) and a float32 one is rounded once."""
    w = state[f"{conv}.weight"].double()
    scale = state[f"{bn}.weight"].double() / torch.sqrt(state[f"{bn}.running_var"].double() + BN_EPS)
    bias = state[f"{bn}.bias"].double() - state[f"{bn}.running_mean"].double() * scale
    return w * scale[:, None, None, None], bias


def make_conv(weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A frozen float64 conv with 'same' padding for odd kernels (every conv here pads k//2 * dilation)."""
    cout, cin, k, _ = weight.shape
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=(k // 2) * dilation, dilation=dilation, bias=True,
                     dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    conv.requires_grad_(False)
    return conv


def conv_bn(state, conv, bn, stride=1, dilation=1) -> nn.Conv2d:
    return make_conv(*folded(state, conv, bn), stride=stride, dilation=dilation)


def classifier(state, prefix) -> nn.Conv2d:
    """A final 1x1 conv with its own bias (no BN)."""
    return make_conv(state[f"{prefix}.weight"].double(), state[f"{prefix}.bias"].double())


class Block(nn.Module):
    """Residual block with folded BNs: ReLU after every conv but the last, then ``relu(out + shortcut)``."""

    def __init__(self, convs: list[nn.Conv2d], downsample: nn.Conv2d | None):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.downsample = downsample

    def forward(self, x):
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if i < len(self.convs) - 1:
                out = F.relu(out)
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def block_from(state, p, kind, stride=1, first_dilation=1, dilation=1) -> Block:
    """Block ``p`` of kind basic/bottleneck. ``first_dilation`` is the dilation of its strided 3x3 conv
    (conv1 of a BasicBlock, conv2 of a Bottleneck), ``dilation`` that of its other 3x3 conv."""
    if kind == "bottleneck":
        convs = [conv_bn(state, f"{p}.conv1", f"{p}.bn1"),
                 conv_bn(state, f"{p}.conv2", f"{p}.bn2", stride=stride, dilation=first_dilation),
                 conv_bn(state, f"{p}.conv3", f"{p}.bn3")]
    else:
        convs = [conv_bn(state, f"{p}.conv1", f"{p}.bn1", stride=stride, dilation=first_dilation),
                 conv_bn(state, f"{p}.conv2", f"{p}.bn2", dilation=dilation)]
    down = None
    if f"{p}.downsample.0.weight" in state:
        down = conv_bn(state, f"{p}.downsample.0", f"{p}.downsample.1", stride=stride)
    return Block(convs, down)


class ResNetEncoder(nn.Module):
    """Deep-stem ResNet encoder -> [layer1, layer2, layer3, layer4] outputs.

    ``dilate_scale`` 8 or 16 is ``ResnetDilated`` (mit_semseg/models/models.py ``_nostride_dilate``):
    in each dilated layer the strided convs get stride 1, a strided 3x3 conv gets dilation d/2 and every
    other 3x3 conv dilation d, with d = 2 for layer3 and 4 for layer4 (scale 8), or d = 2 for layer4
    (scale 16). Output strides: 4, 8, 16, 32 undilated; 4, 8, 8, 8 at scale 8.
    """

    def __init__(self, state: dict, depth: str, dilate_scale: int | None = None):
        super().__init__()
        kind, counts = RESNET_DEPTHS[depth]
        self.stem = nn.ModuleList([conv_bn(state, "conv1", "bn1", stride=2), conv_bn(state, "conv2", "bn2"),
                                   conv_bn(state, "conv3", "bn3")])
        dilations = {8: {3: 2, 4: 4}, 16: {4: 2}}.get(dilate_scale, {})
        self.layers = nn.ModuleList()
        for li, blocks in enumerate(counts, start=1):
            d = dilations.get(li)
            stride = 1 if (li == 1 or d) else 2
            layer = []
            for b in range(blocks):
                if d is None:
                    layer.append(block_from(state, f"layer{li}.{b}", kind, stride=stride if b == 0 else 1))
                else:
                    layer.append(block_from(state, f"layer{li}.{b}", kind, stride=1,
                                            first_dilation=d // 2 if b == 0 else d, dilation=d))
            self.layers.append(nn.Sequential(*layer))

    def forward(self, x):
        for conv in self.stem:
            x = F.relu(conv(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class HRNetEncoder(nn.Module):
    """HRNetV2 (mit_semseg/models/hrnet.py) -> one map: its 4 branches bilinearly upsampled to the
    stride-4 branch and concatenated."""

    def __init__(self, state: dict):
        super().__init__()
        self.stem = nn.ModuleList([conv_bn(state, "conv1", "bn1", stride=2), conv_bn(state, "conv2", "bn2", stride=2)])
        self.layer1 = nn.Sequential(*[block_from(state, f"layer1.{b}", "bottleneck") for b in range(4)])
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        previous = 1
        for s, (modules, channels) in enumerate(HRNET_STAGES, start=2):
            t = f"transition{s - 1}"
            trans = nn.ModuleList()
            for i in range(len(channels)):
                if i < previous:  # same resolution: a 3x3 conv where the width changes, else identity
                    trans.append(nn.Sequential(conv_bn(state, f"{t}.{i}.0", f"{t}.{i}.1"), nn.ReLU())
                                 if f"{t}.{i}.0.weight" in state else nn.Identity())
                else:  # a new, coarser branch from the coarsest previous one: strided 3x3 convs
                    trans.append(nn.Sequential(*[nn.Sequential(conv_bn(state, f"{t}.{i}.{j}.0", f"{t}.{i}.{j}.1", stride=2),
                                                               nn.ReLU())
                                                 for j in range(i + 1 - previous)]))
            self.transitions.append(trans)
            self.stages.append(nn.ModuleList([HRModule(state, f"stage{s}.{m}", len(channels)) for m in range(modules)]))
            previous = len(channels)

    def forward(self, x):
        for conv in self.stem:
            x = F.relu(conv(x))
        xs = [self.layer1(x)]
        for trans, stage in zip(self.transitions, self.stages):
            # existing branches pass through (or their width-changing conv); a new branch is made from
            # the last (coarsest) output, as HRNetV2.forward does with y_list[-1]
            xs = [trans[i](xs[i] if i < len(xs) else xs[-1]) for i in range(len(trans))]
            for module in stage:
                xs = module(xs)
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                                    for x in xs[1:]], 1)


class HRModule(nn.Module):
    """HighResolutionModule: 4 BasicBlocks per branch, then every output i = relu(sum over branches j of
    x_j brought to branch i's resolution): j > i by a 1x1 conv then bilinear upsampling, j < i by
    i - j strided 3x3 convs (ReLU between them, not after the last)."""

    def __init__(self, state, p, branches):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(*[block_from(state, f"{p}.branches.{br}.{b}", "basic")
                                                       for b in range(4)]) for br in range(branches)])
        self.fuse = nn.ModuleList()
        for i in range(branches):
            row = nn.ModuleList()
            for j in range(branches):
                f = f"{p}.fuse_layers.{i}.{j}"
                if j > i:
                    row.append(conv_bn(state, f"{f}.0", f"{f}.1"))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = []
                    for k in range(i - j):
                        steps.append(conv_bn(state, f"{f}.{k}.0", f"{f}.{k}.1", stride=2))
                        if k < i - j - 1:
                            steps.append(nn.ReLU())
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            y = xs[i]
            for j, x in enumerate(xs):
                if j > i:
                    y = y + F.interpolate(row[j](x), size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
                elif j < i:
                    y = y + row[j](x)
            out.append(F.relu(y))
        return out


class UPerNetBody(nn.Module):
    """UPerNet's pyramid pooling, FPN and (on demand) fusion: conv_out [C2..C5] -> (P2, fused or None).

    PPM branch i (UPerNet.forward): ``relu(bn(conv1x1(upsample(pool_i(C5)))))``. The 1x1 conv and the BN
    are affine per pixel and bilinear upsampling is a convex combination per pixel (weights summing to
    1), so they commute: we apply the folded conv on the s x s pooled map and upsample its output, then
    ReLU; the same numbers for a fraction of the work (the conv reads 2048 channels).
    """

    def __init__(self, state: dict, fusion: str, pool):
        super().__init__()
        self.pool = pool
        self.ppm = nn.ModuleList([conv_bn(state, f"ppm_conv.{i}.0", f"ppm_conv.{i}.1") for i in range(len(PPM_SCALES))])
        self.ppm_last = conv_bn(state, "ppm_last_conv.0", "ppm_last_conv.1")
        self.fpn_in = nn.ModuleList([conv_bn(state, f"fpn_in.{i}.0", f"fpn_in.{i}.1") for i in range(3)])
        self.fpn_out = nn.ModuleList([conv_bn(state, f"fpn_out.{i}.0.0", f"fpn_out.{i}.0.1") for i in range(3)])
        self.fusion = conv_bn(state, f"{fusion}.0", f"{fusion}.1")

    def forward(self, conv_out, fuse: bool = True):
        c5 = conv_out[-1]
        size = c5.shape[-2:]
        branches = [c5]
        for scale, conv in zip(PPM_SCALES, self.ppm):
            branches.append(F.relu(F.interpolate(conv(self.pool(c5, scale)), size=size, mode="bilinear",
                                                 align_corners=False)))
        f = F.relu(self.ppm_last(torch.cat(branches, 1)))
        pyramid = [f]
        for i in reversed(range(3)):  # top-down: lateral 1x1 + upsampled coarser level, then a 3x3
            lateral = F.relu(self.fpn_in[i](conv_out[i]))
            f = lateral + F.interpolate(f, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.append(F.relu(self.fpn_out[i](f)))
        pyramid.reverse()  # [P2, P3, P4, P5]
        if not fuse:
            return pyramid[0], None
        size = pyramid[0].shape[-2:]
        cat = torch.cat([pyramid[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                                        for p in pyramid[1:]], 1)
        return pyramid[0], F.relu(self.fusion(cat))
