"""Building blocks of CSAIL's scene-parsing networks, shared by the ``upp`` and ``semseg`` segmenters.

Both families (CSAILVision/gandissect ``netdissect/upsegmodel/`` and CSAILVision/semantic-segmentation-
pytorch ``mit_semseg/models/``) save an encoder and a decoder as two plain state dicts
(``encoder_epoch_N.pth``, ``decoder_epoch_N.pth``; ``checkpoint()`` in semantic-segmentation-pytorch's
train.py saves ``net_encoder.state_dict()`` and ``net_decoder.state_dict()``). This module has:

* the expected layout of every supported encoder and decoder as ``{key: shape}``, written from the
  upstream constructors, so that a file is checked key by key before anything runs;
* the networks built from a checked state dict, with every eval-mode batch norm folded into the
  convolution before it (one pass over each feature map instead of two; BN's eps is 1e-5 in both
  ``torch.nn.BatchNorm2d`` and ``SynchronizedBatchNorm2d``, mit_semseg/lib/nn/modules/batchnorm.py);
* precise RoI pooling (PrRoIPool) over whole-image RoIs in plain PyTorch.

Widths: the published files are at the published widths (ResNet stem 64, PPM 512, ...). A file whose
every width is the published one divided by the same integer ``div`` (read from the stem) is accepted
too, with all names and every other dimension as published: the tests use such files (``div`` 16) to
stay fast. ``weights_info`` records ``div`` when it is not 1.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError

BN_EPS = 1e-5
PPM_SCALES = (1, 2, 3, 6)  # pool_scales of PPM, PPMDeepsup and UPerNet in both repositories
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


# ---------------------------------------------------------------------------------------------------
# Files


def find_checkpoints(folder, epoch: int | None, what: str) -> tuple[Path, Path, int]:
    """The ``encoder_epoch_N`` / ``decoder_epoch_N`` pair (``.pth`` or ``.safetensors``) in ``folder``:
    epoch ``epoch``, or the last epoch that has both files (netdissect's ``load_segmentation_model``
    also picks the last epoch available)."""
    if folder is None:
        raise CheckpointError(f"{what} needs a weights folder: give --seg-weights FOLDER (the folder holding "
                              "encoder_epoch_N.pth and decoder_epoch_N.pth)")
    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(f"{what}: --seg-weights {str(folder)!r} is a file; give the folder that holds "
                              "encoder_epoch_N.pth and decoder_epoch_N.pth")
    if not folder.is_dir():
        raise CheckpointError(f"{what}: weights folder {str(folder)!r} does not exist")
    found: dict[str, dict[int, Path]] = {"encoder": {}, "decoder": {}}
    for path in folder.iterdir():
        m = re.fullmatch(r"(encoder|decoder)_epoch_(\d+)\.(pth|safetensors)", path.name)
        if m:
            found[m.group(1)][int(m.group(2))] = path
    listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    if epoch is not None:
        for part in ("encoder", "decoder"):
            if epoch not in found[part]:
                raise CheckpointError(f"{what}: {folder} has no {part}_epoch_{epoch}.pth (it holds: {listing})")
        return found["encoder"][epoch], found["decoder"][epoch], epoch
    for part in ("encoder", "decoder"):
        if not found[part]:
            raise CheckpointError(f"{what}: {folder} has no {part} checkpoint {part}_epoch_N.pth "
                                  f"(it holds: {listing})")
    both = sorted(set(found["encoder"]) & set(found["decoder"]))
    if not both:
        raise CheckpointError(f"{what}: the encoder and decoder files in {folder} are from different epochs "
                              f"(encoder {sorted(found['encoder'])}, decoder {sorted(found['decoder'])}); "
                              "they must be a pair")
    epoch = both[-1]
    return found["encoder"][epoch], found["decoder"][epoch], epoch


def load_plain(path: Path) -> dict:
    """A checkpoint's tensors, without BN's ``num_batches_tracked`` counters (absent from files written
    before PyTorch 0.4.1 and meaningless in eval mode) and without a ``module.`` prefix on every key
    (a state dict saved from ``nn.DataParallel``)."""
    state = load_state_dict_file(path)
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def checked(state: dict, layout: dict, what: str) -> tuple[dict, dict]:
    """``state`` checked against ``layout`` (every key, every shape, floating point) and converted to
    float32 (float16 files run in float32); returns it and the dtype record."""
    check_state_dict(state, layout, what)
    return to_float(state)


def stored_dtypes(*infos: dict) -> dict:
    """The encoder's and decoder's ``to_float`` records merged: {dtype name: tensor count}."""
    total: dict = {}
    for info in infos:
        for name, count in info["stored_dtypes"].items():
            total[name] = total.get(name, 0) + count
    return total


def weights_info(folder: Path, *, encoder: Path, decoder: Path, labels: Path, epoch, enc_info: dict,
                 dec_info: dict, dtype: torch.dtype, div: int, **arch) -> dict:
    """What an encoder/decoder segmenter loaded, for run.json: its files, epoch, ``arch`` entries, the
    stored dtypes (tensor counts), the dtype used, and the width divisor when the file is narrowed."""
    info = {"folder": str(folder), "encoder": str(encoder), "decoder": str(decoder), "labels": str(labels),
            "epoch": epoch, **arch, "stored_dtypes": stored_dtypes(enc_info, dec_info),
            "loaded_as": str(dtype).removeprefix("torch.")}
    if div != 1:
        info["width_divisor"] = div
    return info


def width_divisor(state: dict, key: str, published: int, path: Path, what: str) -> int:
    """``div`` such that the file's width at ``key`` (dim 0) is ``published / div``."""
    if key not in state:
        return 1  # the layout check names the missing key
    have = int(state[key].shape[0])
    if have <= 0 or published % have:
        raise CheckpointError(f"{what} ({path}): {key} has {have} output channels; the published model has "
                              f"{published} (or {published} divided by a whole number at reduced width)")
    return published // have


# ---------------------------------------------------------------------------------------------------
# Layouts: {key: shape} written from the upstream constructors


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


# ---------------------------------------------------------------------------------------------------
# Modules built from a checked state dict (BN folded)


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


# ---------------------------------------------------------------------------------------------------
# Precise RoI pooling


def tent_integrals(size: int, bins: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(bins, size): entry [k, i] = the integral over bin k = [k*size/bins, (k+1)*size/bins] of pixel
    i's bilinear-interpolation weight ``max(0, 1 - |t - i|)``.

    PrRoIPool (netdissect/upsegmodel/prroi_pool/src/prroi_pooling_gpu_impl.cu) treats the feature map
    as the bilinear interpolation of its pixels placed at integer coordinates, zero outside the map
    (``PrRoIPoolingGetData`` returns 0 for an index outside [0, size)); each output is the exact
    integral of that surface over its bin divided by the bin's area. The interpolation is a sum of
    separable tents, so the 2-D integral is a product of these 1-D ones. With ``T(u)`` the integral of
    the tent up to ``u`` (0 below -1, (u+1)^2/2 up to 0, 1 - (1-u)^2/2 up to 1, then 1), the entry is
    ``T(end - i) - T(start - i)``.
    """
    edges = torch.arange(bins + 1, dtype=torch.float64, device=device) * (size / bins)
    u = edges[:, None] - torch.arange(size, dtype=torch.float64, device=device)[None, :]  # (bins+1, size)
    t = torch.where(u <= -1, torch.zeros_like(u),
                    torch.where(u <= 0, (u + 1) ** 2 / 2, torch.where(u <= 1, 1 - (1 - u) ** 2 / 2, torch.ones_like(u))))
    return (t[1:] - t[:-1]).to(dtype)


def prroi_pool_whole(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``PrRoIPool2D(bins, bins, 1.0)(x, rois)`` with every image's RoI the whole map, as UPP's UPerNet
    calls it (netdissect/upsegmodel/models.py: ``roi = [i, 0, 0, W, H]``, x0, y0, x1, y1 in feature
    pixels, spatial scale 1): (N, C, H, W) -> (N, C, bins, bins).

    Not adaptive average pooling: the RoI's edges are at 0 and W with pixel centres at integers, so
    half of the first row's and column's interpolation tents lies outside it while the last ones lie
    wholly inside; for bins = 1 the result is ``(sum of all pixels - half the first row and column +
    a quarter of the corner) / (H W)``. Differentiable (a linear map), any device and dtype.
    """
    h, w = x.shape[-2:]
    rows = tent_integrals(h, bins, x.dtype, x.device)  # (bins, H)
    cols = tent_integrals(w, bins, x.dtype, x.device)  # (bins, W)
    area = (h / bins) * (w / bins)
    return torch.einsum("ih,nchw,jw->ncij", rows, x, cols) / area


def adaptive_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, bins)


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


def netdissect_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize as netdissect's segmenters do before the network (segmenter.py ``raw_seg_prediction``):
    ``AdaptiveAvgPool2d((size, size))``, skipped when the image already has that size (also for
    upsizing, where adaptive pooling repeats pixels)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.adaptive_avg_pool2d(x, (size, size))


def check_sizes(sizes, what: str) -> list[int]:
    sizes = [256] if sizes is None else list(sizes)
    if not sizes or any(not isinstance(s, int) or s < 32 for s in sizes):
        raise ValueError(f"{what}: sizes must be a non-empty list of whole numbers >= 32 (the network's input "
                         f"sizes, e.g. [256]), got {sizes!r}")
    return sizes


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_dtype(dtype: str, what: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"{what}: dtype must be one of {sorted(DTYPES)} (float64 is for checking), got {dtype!r}")
    return DTYPES[dtype]


def scene_background(default: tuple, labels: list[str], chosen: list[str] | None, what: str) -> tuple[str, ...]:
    """The segmenter's background classes (what an ablated object uncovers): those of ``default`` that
    are labels, or the ``chosen`` ones (the ``background`` option), each of which must be a label."""
    if chosen is None:
        return tuple(b for b in default if b in labels)
    from gandid.errors import UnknownNameError

    for name in chosen:
        if name not in labels:
            raise UnknownNameError(f"{what} background class", name, labels)
    return tuple(chosen)


def check_positive(value, name: str, what: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: {name} must be a whole number >= 1, got {value!r}")
    return value


class NetSegmenter:
    """What the segmenters built on these networks share: ``self.net`` on ``self.device`` in ``self.dtype``."""

    def to(self, device=None, dtype=None):
        """Move (and cast) the network. A float64 run that must match float64 arithmetic throughout is
        built with the option ``dtype="float64"``: casting a float32 segmenter keeps its rounded weights."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self.net.to(device=self.device, dtype=self.dtype)
        return self
