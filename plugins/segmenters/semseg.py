"""``semseg``: CSAIL's ADE20K scene-parsing checkpoints (CSAILVision/semantic-segmentation-pytorch, the
models netdissect's ``SemanticSegmenter`` loads), in plain PyTorch on the CPU or a GPU.

Facts read from CSAILVision/semantic-segmentation-pytorch:

- ``train.py`` ``checkpoint``: a model folder holds ``encoder_epoch_N.pth`` and ``decoder_epoch_N.pth``,
  plain state dicts; ``config/ade20k-*.yaml``: the published pairs (encoder-decoder, epoch):
  resnet18dilated-ppm_deepsup (20), resnet50dilated-ppm_deepsup (20), resnet101dilated-ppm_deepsup
  (25), resnet50-upernet (30), resnet101-upernet (50), hrnetv2-c1 (30), mobilenetv2dilated-c1_deepsup
  (20, not supported here), all with 150 classes;
- ``mit_semseg/models/models.py``: ``Resnet``, ``ResnetDilated`` (``_nostride_dilate``), ``C1``,
  ``C1DeepSup``, ``PPM``, ``PPMDeepsup``, ``UPerNet`` (average-pooled PPM), and inference: logits
  bilinearly resized to the output size, then softmax; the deep-supervision branch is training only;
- ``mit_semseg/models/resnet.py`` (deep-stem ResNet), ``mit_semseg/models/hrnet.py`` (HRNetV2-W48);
- ``mit_semseg/dataset.py``: images are RGB in [0, 1] normalised with mean (0.485, 0.456, 0.406) and
  std (0.229, 0.224, 0.225);
- ``data/object150_info.csv``: the 150 ADE20K classes; decoder channel k is class k + 1 (class 0,
  "other", is ignored in training). Shipped as ``ade20k_labels.json`` (the full names; gandid's label
  is the first one).

From CSAILVision/gandissect ``netdissect/segmenter.py`` ``SemanticSegmenter`` / ``load_segmentation_model``:
the folder name ``VOCAB-ENCODER-DECODER`` gives the architecture (netdissect's older names
``resnet50_dilated8`` and ``ppm_bilinear_deepsup`` are accepted too), ``segsizes`` default [256], each
size resized with ``AdaptiveAvgPool2d`` and the softmax outputs summed; an optional ``labels.json``
there lists the labels (``labels``: [{name, category}]) and the image format (``imageformat``:
byteorder, mean, stdev); label 0 is "no label" and class k is label k + 1.

``segment`` returns (N, H/downsample, W/downsample) int64 labels; ``labels[0]`` is ``unlabelled``
(never predicted). ``class_scores(images, c)`` is class c's mean softmax probability over the pixels
(multi-size outputs averaged), differentiable. All labels are of category ``object``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gandid import hookimpl
from gandid.errors import CheckpointError

from . import segnets
from .segnets import classifier, conv_bn

NAME = "semseg"
ADE20K_LABELS = Path(__file__).resolve().parent / "ade20k_labels.json"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BACKGROUND = ("wall", "floor", "ceiling", "sky", "earth", "road", "grass", "sidewalk", "field", "land")

# architecture name -> (depth, dilate_scale); netdissect/segmodel's older names included
ENCODERS = {"resnet18": ("resnet18", None), "resnet18dilated": ("resnet18", 8),
            "resnet50": ("resnet50", None), "resnet50dilated": ("resnet50", 8),
            "resnet101": ("resnet101", None), "resnet101dilated": ("resnet101", 8),
            "resnet50_dilated8": ("resnet50", 8), "resnet50_dilated16": ("resnet50", 16),
            "resnet101_dilated8": ("resnet101", 8), "resnet101_dilated16": ("resnet101", 16),
            "hrnetv2": ("hrnetv2", None)}
DECODERS = {"ppm_deepsup": "ppm_deepsup", "ppm": "ppm", "c1": "c1", "c1_deepsup": "c1_deepsup",
            "upernet": "upernet", "upernet_lite": "upernet_lite",
            "ppm_bilinear_deepsup": "ppm_deepsup", "ppm_bilinear": "ppm", "c1_bilinear": "c1",
            "c1_bilinear_deepsup": "c1_deepsup"}
UNSUPPORTED = {"mobilenetv2dilated": "MobileNetV2", "resnext101": "ResNeXt-101", "resnet34": "ResNet-34",
               "resnet34dilated": "ResNet-34"}
# where each decoder keeps its final classifier (mit_semseg/models/models.py)
CLASSIFIER = {"ppm": "conv_last.4", "ppm_deepsup": "conv_last.4", "c1": "conv_last", "c1_deepsup": "conv_last",
              "upernet": "conv_last.1", "upernet_lite": "conv_last.1"}


def parse_arch(arch: str | None, folder: Path) -> tuple[str, str]:
    """(encoder, decoder) names from ``arch`` ("resnet50dilated-ppm_deepsup") or the folder's name
    ("ade20k-resnet50dilated-ppm_deepsup")."""
    source = f"arch={arch!r}" if arch else f"the folder name {folder.name!r}"
    text = arch if arch else folder.name
    tokens = text.split("-")
    if len(tokens) < 2:
        raise CheckpointError(f"semseg: cannot tell the architecture from {source}: name the folder "
                              "ade20k-ENCODER-DECODER as published (e.g. ade20k-resnet50dilated-ppm_deepsup) or give "
                              "the segmenter option arch='ENCODER-DECODER'")
    encoder, decoder = tokens[-2].lower(), tokens[-1].lower()
    for name in (encoder,):
        if name in UNSUPPORTED:
            raise CheckpointError(f"semseg: the {UNSUPPORTED[name]} encoder ({name}, from {source}) is not "
                                  f"supported; supported: {', '.join(sorted(ENCODERS))}")
    if encoder not in ENCODERS:
        raise CheckpointError(f"semseg: unknown encoder {encoder!r} (from {source}); supported: "
                              f"{', '.join(sorted(ENCODERS))}")
    if decoder not in DECODERS:
        raise CheckpointError(f"semseg: unknown decoder {decoder!r} (from {source}); supported: "
                              f"{', '.join(sorted(DECODERS))}")
    return encoder, DECODERS[decoder]


def read_labels(path: Path) -> tuple[list[str], dict]:
    """Label names and the image format from a labels file: gandid's ``{"names": [...]}`` or a list
    (label = the first comma-separated name), or netdissect's ``{"labels": [{"name", "category"}],
    "imageformat": {"byteorder", "mean", "stdev"}, "segsizes": [...]}``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"semseg: labels file {path} is not readable JSON ({exc})") from None
    fmt: dict = {}
    if isinstance(data, dict) and "labels" in data:
        entries = data["labels"]
        if not (isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries)):
            raise CheckpointError(f"semseg: {path}: 'labels' must be a list of {{'name': ..., 'category': ...}}")
        cats = {e.get("category") for e in entries}
        if len(cats) > 1 or any(e.get("internal") for e in entries):
            raise CheckpointError(f"semseg: {path} describes a multi-category model (categories {sorted(map(str, cats))}; "
                                  "netdissect softmaxes each category separately), which this segmenter does not run")
        names = [e["name"] for e in entries]
        fmt = dict(data.get("imageformat") or {})
        if "segsizes" in data:  # top level of the metadata (SemanticSegmenter: meta.segsizes)
            fmt["segsizes"] = data["segsizes"]
    else:
        names = data.get("names") if isinstance(data, dict) else data
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"semseg: {path} must hold a list of label names ({{'names': [...]}} or [...]) "
                                  "or netdissect's {'labels': [{'name': ...}]}")
        names = [n.split(",")[0].strip() for n in names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CheckpointError(f"semseg: {path} names a label more than once: {dupes[:5]}")
    return names, fmt


class SemsegNet(nn.Module):
    """Encoder + decoder -> class logits at the decoder's resolution (stride 4 for UPerNet and HRNet,
    8 for dilated ResNets)."""

    def __init__(self, encoder: dict, decoder: dict, enc: str, dec: str):
        super().__init__()
        depth, dilate = ENCODERS[enc]
        self.hrnet = depth == "hrnetv2"
        self.encoder = segnets.HRNetEncoder(encoder) if self.hrnet else segnets.ResNetEncoder(encoder, depth, dilate)
        self.kind = dec
        if dec in ("ppm", "ppm_deepsup"):
            self.ppm = nn.ModuleList([conv_bn(decoder, f"ppm.{i}.1", f"ppm.{i}.2") for i in range(len(segnets.PPM_SCALES))])
            self.hidden = conv_bn(decoder, "conv_last.0", "conv_last.1")
        elif dec in ("c1", "c1_deepsup"):
            self.hidden = conv_bn(decoder, "cbr.0", "cbr.1")
        else:
            self.body = segnets.UPerNetBody(decoder, "conv_last.0", segnets.adaptive_pool)
        self.classifier = classifier(decoder, CLASSIFIER[dec])

    def forward(self, x):
        feats = self.encoder(x)
        feats = [feats] if self.hrnet else feats
        if self.kind.startswith("upernet"):
            return self.classifier(self.body(feats)[1])
        c5 = feats[-1]
        if self.kind.startswith("ppm"):
            # PPM.forward: pool -> conv -> BN -> ReLU, then upsampled to C5's size (ReLU before resizing)
            size = c5.shape[-2:]
            c5 = torch.cat([c5] + [F.interpolate(F.relu(conv(F.adaptive_avg_pool2d(c5, s))), size=size,
                                                 mode="bilinear", align_corners=False)
                                   for s, conv in zip(segnets.PPM_SCALES, self.ppm)], 1)
        return self.classifier(F.relu(self.hidden(c5)))  # Dropout2d before the classifier: identity in eval


class SemsegSegmenter(segnets.NetSegmenter):
    """A CSAIL ADE20K scene-parsing model (see the module docstring).

    Options: ``weights`` the folder (``--seg-weights``); ``arch`` "ENCODER-DECODER" when the folder is
    not named as published; ``epoch`` (default the last with both files); ``labels`` a labels file
    (default FOLDER/labels.json if present, else the 150 ADE20K classes); ``sizes`` network input sizes,
    outputs averaged (default [256]); ``downsample`` the label maps' size divisor; ``batch_size``;
    ``background`` the classes an ablated object uncovers (default: wall, floor, ceiling, sky, ...).
    """

    def __init__(self, weights: str | None = None, arch: str | None = None, epoch: int | None = None,
                 labels: str | None = None, sizes: list[int] | None = None, downsample: int = 1,
                 batch_size: int = 8, device: str = "cpu", dtype: str = "float32",
                 background: list[str] | None = None):
        self.dtype = segnets.check_dtype(dtype, NAME)
        self.downsample = segnets.check_positive(downsample, "downsample", NAME)
        self.batch_size = segnets.check_positive(batch_size, "batch_size", NAME)
        enc_path, dec_path, epoch = segnets.find_checkpoints(weights, epoch, NAME)
        folder = Path(weights)
        enc_name, dec_name = parse_arch(arch, folder)
        if labels:
            label_path = Path(labels)
            if not label_path.is_file():
                raise CheckpointError(f"semseg: labels file {label_path} does not exist")
        else:
            label_path = folder / "labels.json" if (folder / "labels.json").is_file() else ADE20K_LABELS
        names, fmt = read_labels(label_path)

        encoder = segnets.load_plain(enc_path)
        decoder = segnets.load_plain(dec_path)
        depth, dilate = ENCODERS[enc_name]
        found = segnets.encoder_kind(encoder)
        if found != depth:
            raise CheckpointError(f"semseg: {enc_path} holds a {found} encoder but the architecture is {enc_name} "
                                  f"({'arch option' if arch else 'folder name ' + repr(folder.name)})")
        found = segnets.decoder_kind(decoder)
        if found == "upp-upernet":
            raise CheckpointError(f"semseg: {dec_path} is a Unified Perceptual Parsing decoder (object/part/material "
                                  "heads): use the `upp` segmenter for it")
        if found != dec_name.replace("_lite", ""):
            raise CheckpointError(f"semseg: {dec_path} holds a {found} decoder but the architecture is {dec_name} "
                                  f"({'arch option' if arch else 'folder name ' + repr(folder.name)})")
        if dec_name.startswith("upernet") and depth not in ("resnet50", "resnet101"):
            raise CheckpointError(f"semseg: UPerNet reads ResNet-50/101 feature widths; {enc_name}-{dec_name} is not "
                                  "a published pair")
        div = segnets.width_divisor(encoder, "conv1.weight", 64, enc_path, NAME)
        key = f"{CLASSIFIER[dec_name]}.weight"
        if key in decoder and decoder[key].shape[0] != len(names):
            raise CheckpointError(f"semseg: {label_path} lists {len(names)} labels but {dec_path}'s classifier {key} "
                                  f"outputs {decoder[key].shape[0]} classes: the labels file does not belong to "
                                  "these weights (give the right one with labels=FILE)")
        if depth == "hrnetv2":
            enc_layout, fc_dim = segnets.hrnet_layout(div), segnets.hrnet_channels(div)
        else:
            enc_layout = segnets.resnet_layout(depth, div)
            fc_dim = (512 if depth == "resnet18" else 2048) // div
        encoder, enc_info = segnets.checked(encoder, enc_layout, f"semseg encoder {enc_name} ({enc_path})")
        decoder, dec_info = segnets.checked(decoder, decoder_layout(dec_name, fc_dim, len(names), div),
                                            f"semseg decoder {dec_name} ({dec_path})")
        self.net = SemsegNet(encoder, decoder, enc_name, dec_name).eval()
        self.sizes = segnets.check_sizes(sizes if sizes is not None else fmt.get("segsizes"), NAME)
        self.bgr = str(fmt.get("byteorder", "RGB")).upper() == "BGR"
        self.mean = tuple(fmt.get("mean", IMAGENET_MEAN))
        self.std = tuple(fmt.get("stdev", IMAGENET_STD))
        self.labels = ["unlabelled"] + names
        self.categories = {name: "object" for name in self.labels}
        self.background = segnets.scene_background(BACKGROUND, names, background, NAME)
        self.weights_info = segnets.weights_info(folder, encoder=enc_path, decoder=dec_path, labels=label_path,
                                                 epoch=epoch, enc_info=enc_info, dec_info=dec_info, dtype=self.dtype,
                                                 div=div, arch=f"{enc_name}-{dec_name}")
        self.device = torch.device("cpu")
        self.to(device)

    def _preprocess(self, images):
        x = images.to(self.device, self.dtype)
        if self.bgr:
            x = torch.flip(x, (1,))
        mean = torch.tensor(self.mean, dtype=self.dtype, device=self.device)[None, :, None, None]
        std = torch.tensor(self.std, dtype=self.dtype, device=self.device)[None, :, None, None]
        return ((x + 1) / 2 - mean) / std

    def probabilities(self, images):
        """(N, classes, H/downsample, W/downsample) softmax outputs averaged over ``sizes``; channel k is
        label k + 1. Differentiable."""
        x = self._preprocess(images)
        shape = (images.shape[-2] // self.downsample, images.shape[-1] // self.downsample)
        total = 0
        for size in self.sizes:
            logits = self.net(segnets.netdissect_resize(x, size))
            total = total + F.interpolate(logits, size=shape, mode="bilinear", align_corners=False).softmax(1)
        return total / len(self.sizes)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> int64 labels (N, H/downsample, W/downsample), 1..classes."""
        with torch.no_grad():
            out = [self.probabilities(images[i:i + self.batch_size]).argmax(1) + 1
                   for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).to(images.device)

    def class_scores(self, images: torch.Tensor, c: int) -> torch.Tensor:
        """Differentiable (N,): label ``c``'s mean probability over the pixels (0 for ``unlabelled``)."""
        c = int(c)
        if not 0 <= c < len(self.labels):
            raise ValueError(f"semseg: label index {c} out of range (0..{len(self.labels) - 1})")
        if c == 0:
            return torch.zeros(len(images), device=images.device, dtype=self.dtype)
        return torch.cat([self.probabilities(images[i:i + self.batch_size])[:, c - 1].flatten(1).mean(1)
                          for i in range(0, len(images), self.batch_size)])


def decoder_layout(dec: str, fc_dim: int, classes: int, div: int) -> dict:
    """Expected decoder keys and shapes (mit_semseg/models/models.py)."""
    layout: dict = {}
    if dec in ("ppm", "ppm_deepsup"):
        segnets.ppm_layout(layout, fc_dim, div)
        layout["conv_last.4.weight"] = (classes, 512 // div, 1, 1)
        layout["conv_last.4.bias"] = (classes,)
    elif dec in ("c1", "c1_deepsup"):
        segnets.conv_bn_layout(layout, "cbr.0", "cbr.1", fc_dim // 4, fc_dim, 3)
        layout["conv_last.weight"] = (classes, fc_dim // 4, 1, 1)
        layout["conv_last.bias"] = (classes,)
    else:
        fpn_dim = (256 if dec == "upernet_lite" else 512) // div
        segnets.upernet_body_layout(layout, fc_dim, fpn_dim, div, "conv_last.0")
        layout["conv_last.1.weight"] = (classes, fpn_dim, 1, 1)
        layout["conv_last.1.bias"] = (classes,)
    if dec.endswith("deepsup"):
        segnets.deepsup_layout(layout, fc_dim, classes)
    return layout


def semseg(weights: str | None = None, arch: str | None = None, epoch: int | None = None, labels: str | None = None,
           sizes: list[int] | None = None, downsample: int = 1, batch_size: int = 8,
           device: str = "cpu", dtype: str = "float32", background: list[str] | None = None) -> SemsegSegmenter:
    """The ``semseg`` segmenter factory (options: :class:`SemsegSegmenter`)."""
    return SemsegSegmenter(weights=weights, arch=arch, epoch=epoch, labels=labels, sizes=sizes,
                           downsample=downsample, batch_size=batch_size, device=device, dtype=dtype,
                           background=background)


@hookimpl
def gandid_register_segmenters(register):
    register(NAME, semseg, description="CSAIL ADE20K scene parsing (semantic-segmentation-pytorch: ResNet-PPM, "
                                       "UPerNet, HRNetV2), 150 classes; --seg-weights FOLDER")
