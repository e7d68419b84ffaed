"""``upp``: GAN Dissection's default segmenter, the Unified Perceptual Parsing network
(``upp-resnet50-upernet``: a deep-stem ResNet-50 encoder and a UPerNet decoder with object, part,
material and scene heads, Xiao et al. 2018), in plain PyTorch on the CPU or a GPU.

Facts read from CSAILVision/gandissect:

- ``netdissect/segmenter.py``: ``ensure_upp_segmenter_downloaded`` (the folder
  ``upp-resnet50-upernet`` holds ``encoder_epoch_40.pth``, ``decoder_epoch_40.pth``, ``labels.json``);
  ``load_unified_parsing_segmentation_model`` (labels.json has ``object``, ``material``, ``scene``
  lists and ``object_part`` {object: [part, ...]}; the part head has one channel per entry of every
  part list; ``fc_dim`` 2048); ``UnifiedParsingSegmenter`` (the label vocabulary, parts only for
  sky, building and person, a part that is also an object counted as that object, ``segsizes``
  default [256], the ``quad`` division, ``predict_single_class``); ``raw_seg_prediction`` (RGB [-1, 1]
  -> [0, 255], flipped to BGR, minus the BGR means 102.9801, 115.9465, 122.7717, no scaling; each size
  resized with ``AdaptiveAvgPool2d``; per-size softmax outputs summed); ``segment_batch`` (the planes).
- ``netdissect/upsegmodel/models.py``: ``Resnet`` (encoder), ``UPerNet`` (PPM pooled with
  ``PrRoIPool2D(scale, scale, 1.)`` over whole-map RoIs, FPN, fusion, heads: material from P2, object
  and part from the fusion, scene from the PPM output; at inference the logits are bilinearly
  resized to the output size and softmaxed, parts per object separately, in the order of the sorted
  object numbers of ``object_part``'s keys, ``SegmentationModule.__init__``).
- ``netdissect/upsegmodel/resnet.py``: the deep-stem ResNet (see :mod:`gandid_plugins.segmenters.segnets`).
- ``netdissect/upsegmodel/prroi_pool/src/prroi_pooling_gpu_impl.cu``: PrRoIPool's math
  (:func:`gandid_plugins.segmenters.segnets.prroi_pool_whole`).

What ``segment`` returns: (N, K, H/downsample, W/downsample) int64 labels, K = 5 planes with the quad
division (GAN Dissection's ``segdiv='quad'``, the default) or 3 without: 0 the object, 1 the material,
2 the part of a sky, building or person pixel (0 elsewhere), 3 and 4 the object's top/bottom and
left/right half (quad only). 0 is "unlabelled" in the object plane; the other planes hold -1 where
they have no label (gandid's multi-label convention; gandissect writes 0 there). ``labels`` is the merged vocabulary:
``unlabelled``, the objects, with quad ``OBJECT-t``, ``-l``, ``-b``, ``-r`` for each object, the
materials, then the parts that are not objects; ``categories`` maps each to object, part or material.

Where this differs from gandissect, on purpose:

- parts are read from the part head's block of each owner object by name; gandissect takes blocks
  0, 1, 2 for sky, building, person, the same blocks when those are the three lowest-numbered
  objects with parts (as in CSAILVision/unifiedparsing data/object_part.csv: sky 2, building 5,
  person 6).
- quad: gandissect's ``component_masks`` iterates ``range(1, num)`` over skimage's components
  1..num, so the last component of every image is never divided and its pixels get 0 in planes 3-4;
  here every component is divided.
- a label name used twice in the merged vocabulary (object "glass" and material "glass"; material
  "hair" and person part "hair") gets its category in parentheses on the material or part:
  ``glass (material)``, ``hair (part)``; label 0 is ``unlabelled`` (gandissect: ``-``).
- ``class_scores`` is the per-image mean over pixels of a soft version of what ``segment`` counts:
  P(object c), plus P(owner) * P(part c | owner) where c is a part of an owner (gandissect adds the
  part probability without the owner's); a material's probability; a quad label's object
  probability inside that quarter of its (hard) segment. Multi-size outputs are averaged, not summed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gandid import hookimpl
from gandid.errors import CheckpointError

from . import segnets
from .segnets import classifier, conv_bn

NAME = "upp"
# raw_seg_prediction: [-1, 1] -> [0, 255], RGB -> BGR, minus these BGR means (no division)
BGR_MEAN = (102.9801, 115.9465, 122.7717)
PART_OBJECTS = ("sky", "building", "person")  # UnifiedParsingSegmenter: parts only for these
QUAD_SUFFIXES = ("t", "l", "b", "r")
SEGDIV = ("quad", "undivided")
BACKGROUND = ("wall", "floor", "ceiling", "sky", "ground", "earth", "road", "grass", "sidewalk", "field")


def read_labels(path: Path) -> dict:
    """labels.json: {"object": [...], "material": [...], "scene": [...], "object_part": {object: [part]}}."""
    if not path.is_file():
        raise CheckpointError(f"upp: the label vocabulary {path} is missing. It comes with the weights "
                              "(upp-resnet50-upernet/labels.json next to encoder_epoch_40.pth); give it with "
                              "segmenter option labels=FILE if it lives elsewhere"
                              + (". This looks like a semantic-segmentation-pytorch folder: use --segmenter semseg"
                                 if path.parent.name.startswith(("ade20k-", "baseline-")) else ""))
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"upp: {path} is not readable JSON ({exc})") from None
    problems = []
    if not isinstance(data, dict):
        raise CheckpointError(f"upp: {path} must be a JSON object with object, material and object_part entries")
    for key in ("object", "material"):
        value = data.get(key)
        if not (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) for v in value)):
            problems.append(f"{key!r} must be a list of names, the first meaning 'no label'")
    parts = data.get("object_part")
    if not (isinstance(parts, dict) and all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                           for v in parts.values())):
        problems.append("'object_part' must map object names to lists of part names")
    elif isinstance(data.get("object"), list):
        unknown = [k for k in parts if k not in data["object"]]
        if unknown:
            problems.append(f"'object_part' names objects not in 'object': {unknown[:5]}")
    if "scene" in data and not isinstance(data["scene"], list):
        problems.append("'scene' must be a list of names")
    if problems:
        raise CheckpointError(f"upp: {path} is not a UPP label vocabulary: " + "; ".join(problems))
    return data


class UPPNet(nn.Module):
    """Encoder + UPerNet with PrRoIPool; ``forward(x, heads)`` -> {head: logits (N, classes, H/4, W/4)}
    for the heads asked for (object and part need the fusion conv, material only P2)."""

    def __init__(self, encoder: dict, decoder: dict, depth: str):
        super().__init__()
        self.encoder = segnets.ResNetEncoder(encoder, depth)
        self.body = segnets.UPerNetBody(decoder, "conv_fusion", segnets.prroi_pool_whole)
        # heads: conv3x3_bn_relu(fpn_dim) then a 1x1 classifier (UPerNet.__init__); the scene head is
        # never used for segmentation and is not built
        self.heads = nn.ModuleDict({
            head: nn.Sequential(conv_bn(decoder, f"{head}_head.0.0", f"{head}_head.0.1"), nn.ReLU(),
                                classifier(decoder, f"{head}_head.1"))
            for head in ("object", "part", "material")})

    def forward(self, x, heads=("object", "part", "material")):
        p2, fused = self.body(self.encoder(x), fuse="object" in heads or "part" in heads)
        return {head: self.heads[head](p2 if head == "material" else fused) for head in heads}


class UPPSegmenter(segnets.NetSegmenter):
    """GAN Dissection's Unified Perceptual Parsing segmenter (see the module docstring).

    Options: ``weights`` the folder (``--seg-weights``); ``labels`` the vocabulary file (default
    FOLDER/labels.json); ``sizes`` the network input sizes, outputs averaged (gandissect ``segsizes``,
    default [256]); ``downsample`` the label maps' size divisor (GAN Dissection used 2); ``segdiv``
    "quad" (default, as GAN Dissection) or "undivided"; ``part_objects`` the objects whose parts are
    labelled (default sky, building, person); ``batch_size`` images per forward; ``epoch`` the
    checkpoint epoch (default the last in the folder, 40 in the published one); ``background`` the
    classes an ablated object uncovers (default: wall, floor, ceiling, sky, ... where labelled).
    """

    def __init__(self, weights: str | None = None, labels: str | None = None, sizes: list[int] | None = None,
                 downsample: int = 1, segdiv: str = "quad", part_objects: list[str] | None = None,
                 batch_size: int = 4, epoch: int | None = None, device: str = "cpu", dtype: str = "float32",
                 background: list[str] | None = None):
        self.dtype = segnets.check_dtype(dtype, NAME)
        self.sizes = segnets.check_sizes(sizes, NAME)
        self.downsample = segnets.check_positive(downsample, "downsample", NAME)
        self.batch_size = segnets.check_positive(batch_size, "batch_size", NAME)
        if segdiv not in SEGDIV:
            raise ValueError(f"upp: segdiv must be one of {SEGDIV}, got {segdiv!r}")
        self.segdiv = segdiv
        enc_path, dec_path, epoch = segnets.find_checkpoints(weights, epoch, NAME)
        label_path = Path(labels) if labels else Path(weights) / "labels.json"
        vocab = read_labels(label_path)
        self._vocabulary(vocab, list(PART_OBJECTS if part_objects is None else part_objects), label_path)
        objects = tuple(b for b in BACKGROUND if self.categories.get(b) == "object")  # not a same-named material
        self.background = segnets.scene_background(objects, self.labels, background, NAME)

        encoder = segnets.load_plain(enc_path)
        decoder = segnets.load_plain(dec_path)
        depth = segnets.encoder_kind(encoder)
        if depth not in ("resnet50", "resnet101"):
            raise CheckpointError(f"upp: {enc_path} is not a UPP encoder: it looks like {depth} (UPP's is the "
                                  "deep-stem ResNet-50 of netdissect/upsegmodel, keys conv1..conv3, layer1..layer4)")
        kind = segnets.decoder_kind(decoder)
        if kind != "upp-upernet":
            raise CheckpointError(f"upp: {dec_path} is not a UPP decoder: it holds a {kind} decoder (no object_head/"
                                  "part_head/material_head keys); a semantic-segmentation-pytorch checkpoint "
                                  "folder is the `semseg` segmenter's")
        div = segnets.width_divisor(encoder, "conv1.weight", 64, enc_path, NAME)
        self._check_heads(decoder, vocab, dec_path, label_path)
        encoder, enc_info = segnets.checked(encoder, segnets.resnet_layout(depth, div), f"upp encoder ({enc_path})")
        layout = self._decoder_layout(decoder, vocab, div)
        decoder, dec_info = segnets.checked(decoder, layout, f"upp decoder ({dec_path})")
        self.net = UPPNet(encoder, decoder, depth).eval()
        self.weights_info = segnets.weights_info(Path(weights), encoder=enc_path, decoder=dec_path,
                                                 labels=label_path, epoch=epoch, enc_info=enc_info,
                                                 dec_info=dec_info, dtype=self.dtype, div=div, encoder_arch=depth)
        self.device = torch.device("cpu")
        self.to(device)

    # --- vocabulary -------------------------------------------------------------------------------

    def _vocabulary(self, vocab: dict, part_objects: list[str], label_path: Path) -> None:
        """The merged label list and the tables ``segment`` and ``class_scores`` use
        (UnifiedParsingSegmenter.__init__ and get_label_and_category_names)."""
        objects, materials = vocab["object"], vocab["material"]
        object_number = {name: i for i, name in enumerate(objects)}
        missing = [o for o in part_objects if o not in vocab["object_part"]]
        if missing:
            raise ValueError(f"upp: part_objects {missing} have no part list in {label_path} "
                                  f"(objects with parts: {sorted(vocab['object_part'])[:20]})")
        n, mult = len(objects) - 1, (5 if self.segdiv == "quad" else 1)
        self.num_objects, self.mult = n, mult
        # owners in the part head's channel order: sorted object numbers (SegmentationModule.__init__)
        owners = sorted(vocab["object_part"], key=lambda o: object_number[o])
        offsets, start = {}, 0
        for owner in owners:
            offsets[owner] = (start, len(vocab["object_part"][owner]))
            start += len(vocab["object_part"][owner])
        self.part_channels = start
        first_part = n * mult + 1 + (len(materials) - 1)
        part_names: list[str] = []
        part_number: dict[str, int] = {}
        self.owners = []  # (object label, part-head channel slice, label of each of its parts)
        for owner in part_objects:
            translate = []
            for part in vocab["object_part"][owner]:
                if part in object_number:  # a part that is also an object counts as that object ('-' -> 0)
                    translate.append(object_number[part])
                else:
                    if part not in part_number:
                        part_number[part] = first_part + len(part_names)
                        part_names.append(part)
                    translate.append(part_number[part])
            begin, length = offsets[owner]
            self.owners.append((object_number[owner], slice(begin, begin + length), torch.tensor(translate)))

        entries = [("unlabelled", "object")] + [(o, "object") for o in objects[1:]]
        if mult == 5:
            entries += [(f"{o}-{s}", "part") for s in QUAD_SUFFIXES for o in objects[1:]]
        entries += [(m, "material") for m in materials[1:]] + [(p, "part") for p in part_names]
        counts: dict[str, int] = {}
        for name, _ in entries:
            counts[name] = counts.get(name, 0) + 1
        names = [name if counts[name] == 1 or cat == "object" else f"{name} ({cat})" for name, cat in entries]
        if len(set(names)) != len(names):
            dupes = sorted({x for x in names if names.count(x) > 1})
            raise CheckpointError(f"upp: {label_path} names a label twice within one category: {dupes[:5]}")
        self.labels = names
        self.categories = {name: cat for name, (_, cat) in zip(names, entries)}
        self.material_offset = n * mult  # material m (1..) is label m + n * mult
        self.num_materials = len(materials)
        self.num_classes = len(names)

    def _check_heads(self, decoder, vocab, dec_path, label_path) -> None:
        """Each head's classifier width against the vocabulary, before the generic layout check, so the
        message says which list does not match."""
        expected = {"object": len(vocab["object"]), "material": len(vocab["material"]),
                    "part": sum(len(v) for v in vocab["object_part"].values())}
        if "scene" in vocab:
            expected["scene"] = len(vocab["scene"])
        what = {"object": "objects", "material": "materials", "part": "parts (all object_part lists together)",
                "scene": "scenes"}
        for head, count in expected.items():
            key = f"{head}_head.2.weight" if head == "scene" else f"{head}_head.1.weight"
            if key in decoder and decoder[key].shape[0] != count:
                raise CheckpointError(f"upp: {label_path} lists {count} {what[head]} but {dec_path}'s {key} "
                                      f"outputs {decoder[key].shape[0]} classes: the labels file does not belong "
                                      "to these weights")

    @staticmethod
    def _decoder_layout(decoder, vocab, div) -> dict:
        fc_dim, fpn_dim = 2048 // div, 512 // div
        layout: dict = {}
        segnets.upernet_body_layout(layout, fc_dim, fpn_dim, div, "conv_fusion")
        scenes = len(vocab["scene"]) if "scene" in vocab else (
            decoder["scene_head.2.weight"].shape[0] if "scene_head.2.weight" in decoder else 0)
        classes = {"object": len(vocab["object"]), "material": len(vocab["material"]),
                   "part": sum(len(v) for v in vocab["object_part"].values()), "scene": scenes}
        for head, count in classes.items():
            segnets.conv_bn_layout(layout, f"{head}_head.0.0", f"{head}_head.0.1", fpn_dim, fpn_dim, 3)
            last = f"{head}_head.2" if head == "scene" else f"{head}_head.1"  # scene: conv, pool, conv
            layout[f"{last}.weight"] = (count, fpn_dim, 1, 1)
            layout[f"{last}.bias"] = (count,)
        return layout

    # --- running ----------------------------------------------------------------------------------

    def _preprocess(self, images):
        x = (images.to(self.device, self.dtype) + 1) / 2 * 255
        x = torch.flip(x, (1,))  # RGB -> BGR
        return x - torch.tensor(BGR_MEAN, dtype=self.dtype, device=self.device)[None, :, None, None]

    def probabilities(self, images, heads=("object", "part", "material")) -> dict:
        """Softmax outputs at the label size, averaged over ``sizes``: ``object`` (N, objects, h, w),
        ``material`` (N, materials, h, w) and ``part``: one (N, parts, h, w) per ``part_objects``
        entry (each softmaxed over its own parts). Differentiable; one forward per size."""
        x = self._preprocess(images)
        shape = (images.shape[-2] // self.downsample, images.shape[-1] // self.downsample)
        total: dict = {}
        for size in self.sizes:
            logits = self.net(segnets.netdissect_resize(x, size), heads)
            for head, value in logits.items():
                value = F.interpolate(value, size=shape, mode="bilinear", align_corners=False)
                if head == "part":
                    probs = [value[:, sl].softmax(1) for _, sl, _ in self.owners]
                    total["part"] = probs if "part" not in total else [a + b for a, b in zip(total["part"], probs)]
                else:
                    probs = value.softmax(1)
                    total[head] = probs if head not in total else total[head] + probs
        k = len(self.sizes)
        return {head: ([p / k for p in v] if head == "part" else v / k) for head, v in total.items()}

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> int64 labels (N, 5 or 3, H/downsample, W/downsample)."""
        with torch.no_grad():
            out = [self._segment(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).to(images.device)

    def _segment(self, images):
        p = self.probabilities(images)
        objects = p["object"].argmax(1)
        planes = [objects]
        material = p["material"].argmax(1)
        planes.append(torch.where(material == 0, material, material + self.material_offset))
        part = torch.zeros_like(objects)
        for (owner, _, translate), probs in zip(self.owners, p["part"]):
            labels = translate.to(objects.device)[probs.argmax(1)]
            part = torch.where(objects == owner, labels, part)  # parts only inside their owner object
        planes.append(part)
        if self.segdiv == "quad":
            planes += list(quad_planes(objects, self.num_objects).unbind(1))
        labels = torch.stack(planes, 1)
        # gandid's multi-label convention: -1 where a plane has no label (no material, no part, no quad);
        # the object plane keeps 0, 'unlabelled', a prediction of its own
        labels[:, 1:][labels[:, 1:] == 0] = -1
        return labels

    def class_scores(self, images: torch.Tensor, c: int) -> torch.Tensor:
        """Differentiable (N,) score of label ``c``: its soft pixel fraction (module docstring)."""
        c = int(c)
        if not 0 <= c < self.num_classes:
            raise ValueError(f"upp: label index {c} out of range (0..{self.num_classes - 1})")
        out = [self._score(images[i:i + self.batch_size], c) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out)

    def _score(self, images, c):
        n, mult = self.num_objects, self.mult
        if c == 0:  # 'unlabelled' is what no head predicts
            return torch.zeros(len(images), device=images.device, dtype=self.dtype)
        if self.material_offset < c < self.material_offset + self.num_materials:
            return self.probabilities(images, ("material",))["material"][:, c - self.material_offset].flatten(1).mean(1)
        if n < c <= n * mult:  # quad label: object o in quarter q of its own segment
            q, o = (c - 1) // n, (c - 1) % n + 1
            probs = self.probabilities(images, ("object",))["object"]
            with torch.no_grad():
                quads = quad_planes(probs.argmax(1), n)
            inside = (quads[:, 0 if q in (1, 3) else 1] == c).to(probs.dtype)
            return (probs[:, o] * inside).flatten(1).mean(1)
        as_part = [(owner, sl, (translate == c).nonzero()) for owner, sl, translate in self.owners]
        as_part = [(i, owner, int(where[0, 0])) for i, (owner, sl, where) in enumerate(as_part) if len(where)]
        p = self.probabilities(images, ("object", "part") if as_part else ("object",))
        score = p["object"][:, c] if c <= n else torch.zeros_like(p["object"][:, 0])
        for i, owner, local in as_part:
            score = score + p["object"][:, owner] * p["part"][i][:, local]
        return score.flatten(1).mean(1)


def quad_planes(objects: torch.Tensor, n: int) -> torch.Tensor:
    """(N, H, W) object labels -> (N, 2, H, W): the quad division (gandissect segmenter.py
    ``expand_segment_quad``). Every connected component (8-connected, one label value, 0 excluded,
    as skimage's ``label``) is split at the middle of its bounding box, ``vmid = (top + bottom + 1) // 2``
    and ``hmid`` likewise with inclusive bounds: plane 0 is ``o + n`` above vmid and ``o + 3n`` from
    it down, plane 1 ``o + 2n`` left of hmid and ``o + 4n`` from it rightwards (labels OBJECT-t,
    -b, -l, -r); 0 outside components."""
    from scipy import ndimage

    eight = np.ones((3, 3), dtype=int)
    labels = objects.detach().cpu().numpy()
    out = np.zeros((labels.shape[0], 2) + labels.shape[1:], dtype=np.int64)
    for i, seg in enumerate(labels):
        for value in np.unique(seg):
            if value == 0:
                continue
            comps, count = ndimage.label(seg == value, structure=eight)
            for k, box in enumerate(ndimage.find_objects(comps), start=1):
                rows, cols = box
                vmid = (rows.start + rows.stop) // 2  # (top + bottom + 1) // 2 with bottom = stop - 1
                hmid = (cols.start + cols.stop) // 2
                mask = comps[box] == k
                r = np.arange(rows.start, rows.stop)[:, None]
                c = np.arange(cols.start, cols.stop)[None, :]
                out[i, 0][box][mask] = np.where(r < vmid, value + n, value + 3 * n).repeat(c.shape[1], 1)[mask]
                out[i, 1][box][mask] = np.where(c < hmid, value + 2 * n, value + 4 * n).repeat(r.shape[0], 0)[mask]
    return torch.from_numpy(out).to(objects.device)


def upp(weights: str | None = None, labels: str | None = None, sizes: list[int] | None = None, downsample: int = 1,
        segdiv: str = "quad", part_objects: list[str] | None = None, batch_size: int = 4,
        epoch: int | None = None, device: str = "cpu", dtype: str = "float32",
        background: list[str] | None = None) -> UPPSegmenter:
    """The ``upp`` segmenter factory (options: :class:`UPPSegmenter`)."""
    return UPPSegmenter(weights=weights, labels=labels, sizes=sizes, downsample=downsample, segdiv=segdiv,
                        part_objects=part_objects, batch_size=batch_size, epoch=epoch, device=device,
                        dtype=dtype, background=background)


@hookimpl
def gandid_register_segmenters(register):
    register(NAME, upp, description="Unified Perceptual Parsing (upp-resnet50-upernet), GAN Dissection's default: "
                                    "objects, parts, materials; quad division; --seg-weights FOLDER")
