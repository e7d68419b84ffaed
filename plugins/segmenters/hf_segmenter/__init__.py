"""The ``transformers`` segmenter: any Hugging Face semantic-segmentation model saved in a local folder.

The folder is what ``model.save_pretrained(DIR)`` and ``image_processor.save_pretrained(DIR)`` write:
``config.json`` (architecture and ``id2label``), the weights (``model.safetensors`` or
``pytorch_model.bin``, possibly sharded with an ``.index.json``) and ``preprocessor_config.json``. Every
architecture of ``AutoModelForSemanticSegmentation`` loads: SegFormer, UperNet (ConvNeXt, Swin), DPT, BEiT,
Data2Vec-Vision, MobileNetV2 and MobileViT DeepLab heads.

The image processor is *not* called at run time: it works on PIL images, one at a time, and is not
differentiable. :class:`ImageProcessing` reads its configuration and does the same steps in torch on the
(N, 3, H, W) batch, so gradients flow from ``class_scores`` back to the generator (ACE's screen and alpha
optimisation need them). The steps and their order follow transformers' own code (5.x, read for this):
``image_processing_backends.py`` (``PilBackend._preprocess``, ``PilBackend.resize``: resize, center crop,
rescale, normalize, pad), ``image_transforms.py`` (``resize`` goes through an 8-bit PIL image;
``get_resize_output_image_size``, ``get_size_with_aspect_ratio``), ``image_processing_utils.get_size_dict``
(an int ``size`` means a square unless the class sets ``default_to_square = False``),
``models/dpt/image_processing_pil_dpt.py`` (``keep_aspect_ratio``, ``ensure_multiple_of``, centre padding to
``size_divisor`` after normalising) and ``models/mobilevit`` (``do_flip_channel_order``: RGB to BGR). PIL's
bilinear and bicubic filters widen their support when they shrink an image (antialiasing);
``torch.nn.functional.interpolate(..., antialias=True)`` implements the same filters (Pillow's
``Resample.c``, a = -0.5 for bicubic), and ``tests/segmenters/test_hf_segmenter.py`` checks it against Pillow.

Like transformers' ``post_process_semantic_segmentation``, logits are upsampled bilinearly
(``align_corners=False``) to the image size (or the ``resolution`` option) before the argmax.

``transformers`` is an optional extra (``pip install -e ".[transformers]"``); it does not depend on torch,
so installing it never replaces the torch you have. Helpers shared with the ``onnx`` segmenter
(:class:`PixelSegmenter`, :func:`parse_size`, :func:`scene_background`) live here.
"""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gandid import hookimpl
from gandid.errors import CheckpointError, ConfigError, GandidError, UnknownNameError

INSTALL_HINT = ('pip install -e ".[transformers]" in a gandid checkout, or pip install "transformers>=4.46" '
                "(it does not depend on torch, so the torch you have stays)")

# Classes an ablated object uncovers rather than objects of its own: what a scene is made of behind the
# things in it (ADE20K's, Cityscapes', COCO-Stuff's and PASCAL's names for them). Matched against a label's
# first name, lower case: ADE20K's full names read "floor, flooring", "earth, ground".
SCENE_BACKGROUND = (
    "background", "wall", "floor", "flooring", "ceiling", "sky", "ground", "earth", "road", "sidewalk",
    "pavement", "path", "grass", "field", "land", "terrain", "sand", "snow", "dirt", "dirt track", "gravel",
    "water", "sea", "river", "lake", "mountain", "hill", "rock", "stone", "floor-other", "wall-other",
    "ceiling-other", "sky-other", "ground-other",
)

# Class-score elements upsampled at once (128 MiB in float32): see PixelSegmenter._per_group
PIXEL_BUDGET = 2**25

# PIL's filter codes, as image processors store them in ``resample``
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Steps of an image processor that do not touch the image (labels only) or are no-ops for RGB input
IGNORED_STEPS = {"do_reduce_labels", "reduce_labels", "do_convert_rgb"}


class NotDifferentiableError(GandidError, NotImplementedError):
    """A segmenter whose backend gives no gradients was asked for differentiable class scores."""


# -- shared by the transformers and onnx segmenters ------------------------------------------------

def parse_size(value, what: str) -> tuple[int, int] | None:
    """An option giving a size: None, an int (square) or "HxW" -> (H, W); ValueError naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int or 'HxW', got {value!r}")
    if isinstance(value, int):
        size = (value, value)
    elif isinstance(value, str) and value.lower().count("x") == 1:
        try:
            size = tuple(int(part) for part in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"{what} must be an int or 'HxW' such as '256x384', got {value!r}") from None
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        size = tuple(value)
    else:
        raise ValueError(f"{what} must be an int or 'HxW' such as '256x384', got {value!r}")
    if min(size) < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return size


def unique_labels(names: list[str], source: str) -> list[str]:
    """Label names as gandid shows and looks them up: stripped of surrounding spaces (ADE20K's "bed "),
    made unique by appending the class index to repeats (a name must find one class)."""
    out, seen = [], set()
    for i, name in enumerate(names):
        name = str(name).strip()
        if not name:
            raise CheckpointError(f"{source}: class {i} has an empty name; name every class")
        if name in seen:
            name = f"{name} ({i})"
        seen.add(name)
        out.append(name)
    return out


def scene_background(labels: list[str], chosen: list[str] | None = None) -> tuple[str, ...]:
    """The labels that are scene background (:data:`SCENE_BACKGROUND`), or the ``chosen`` ones, which must
    all be labels of the model."""
    if chosen is not None:
        for name in chosen:
            if name not in labels:
                raise UnknownNameError("background class", name, labels)
        return tuple(chosen)
    return tuple(name for name in labels if name.lower().replace(";", ",").split(",")[0].strip() in SCENE_BACKGROUND)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Differentiable resize of (N, C, H, W) as PIL's filter ``mode`` does it (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # PIL returns a copy of the image too
    if mode == "nearest":
        # PIL samples the nearest pixel centre: torch's "nearest-exact" (plain "nearest" floors)
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


class PixelSegmenter:
    """A segmenter on a network that maps a batch of images to per-pixel class logits (N, K, h, w).

    Subclasses set ``labels`` and implement :meth:`logits`; this class upsamples the logits bilinearly to
    the output size (the image's, or ``resolution``), splits batches into ``batch_size`` chunks, and gives
    ``segment`` (argmax, (N, H, W) int64) and ``class_scores`` (mean softmax probability of class c, (N,)).
    Inputs and outputs stay on the caller's device; the network runs on ``self.device``."""

    differentiable = True
    device = torch.device("cpu")

    def __init__(self, labels: list[str], resolution, batch_size: int, background: list[str] | None,
                 categories: dict[str, str] | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.labels = list(labels)
        self.resolution = parse_size(resolution, "resolution")
        self.batch_size = batch_size
        self.background = scene_background(self.labels, background)
        # gandid's categories group dissection counts (object, part, material): these models name objects
        # and stuff in one flat list, so every label is an object unless the model's files say otherwise
        for name in categories or {}:
            if name not in self.labels:
                raise UnknownNameError("label in categories", name, self.labels)
        self.categories = {name: str((categories or {}).get(name, "object")) for name in self.labels}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [-1, 1] on ``self.device`` -> class logits (n, K, h, w) at the network's
        own output size."""
        raise NotImplementedError

    def output_size(self, images: torch.Tensor) -> tuple[int, int]:
        return self.resolution or tuple(images.shape[-2:])

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (N, 3, H, W) tensor in [-1, 1], got {shape}")

    def _chunks(self, images: torch.Tensor):
        for lo in range(0, len(images), self.batch_size):
            yield images[lo:lo + self.batch_size].to(self.device, torch.float32)

    def _checked_logits(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)
        if logits.shape[1] != len(self.labels):
            raise CheckpointError(f"the model gave {logits.shape[1]} class scores per pixel but has "
                                  f"{len(self.labels)} labels")
        return logits.float()

    @staticmethod
    def _upsample(logits: torch.Tensor, size: tuple[int, int], channels_last: bool = False) -> torch.Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        if channels_last:
            # for the argmax, which reads each pixel's class scores: contiguous in this layout, upsampling and
            # argmax of NCHW logits (150 classes, 64 -> 256 px) ran 2.2x faster on a 2-core CPU (SegFormer's
            # logits already come in it); softmax is faster in the default layout
            logits = logits.contiguous(memory_format=torch.channels_last)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _per_group(self, logits: torch.Tensor, size: tuple[int, int], fn) -> torch.Tensor:
        """``fn(upsampled logits of a few images)`` over groups of images, concatenated.

        Upsampled logits are the largest tensors here (150 ADE20K classes at 256 x 256 are 39 MB per
        image): groups keep them within :data:`PIXEL_BUDGET` elements, and under autograd each group is
        checkpointed, so the backward pass keeps only the network's own logits and recomputes the rest."""
        per = max(1, PIXEL_BUDGET // (logits.shape[1] * size[0] * size[1]))
        grad = torch.is_grad_enabled() and logits.requires_grad
        outs = [checkpoint(fn, logits[lo:lo + per], use_reentrant=False) if grad else fn(logits[lo:lo + per])
                for lo in range(0, len(logits), per)]
        return torch.cat(outs)

    def upsampled_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(n, K, H', W') logits at the output size, as transformers' post-processing upsamples them."""
        return self._upsample(self._checked_logits(images), self.output_size(images))

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> labels (N, H, W) int64 (or (N, *resolution))."""
        self._check_images(images)
        size = self.output_size(images)
        with torch.no_grad():
            out = [self._per_group(self._checked_logits(chunk), size, lambda l: self._upsample(l, size, True).argmax(1))
                   for chunk in self._chunks(images)]
        return torch.cat(out).to(images.device)

    def class_scores(self, images: torch.Tensor, c: int) -> torch.Tensor:
        """Differentiable (N,) mean softmax probability of class ``c`` over the output pixels."""
        self._check_images(images)
        if isinstance(c, bool) or not 0 <= int(c) < len(self.labels):
            raise ValueError(f"class index {c!r} out of range: this segmenter has {len(self.labels)} labels")
        size, c = self.output_size(images), int(c)

        def score(logits):
            return self._upsample(logits, size).softmax(1)[:, c].flatten(1).mean(1)

        out = [self._per_group(self._checked_logits(chunk), size, score) for chunk in self._chunks(images)]
        return torch.cat(out).to(images.device)


# -- the image processor, in torch -------------------------------------------------------------------

def _class_defaults(type_name: str | None) -> dict:
    """The image processor class's own defaults, for keys its saved configuration leaves out (older
    files omit ``do_rescale``, for instance). transformers 5 keeps them as class attributes of the PIL
    backend (``SegformerImageProcessorPil``); when the class cannot be found, generic defaults apply."""
    if not type_name:
        return {}
    import transformers

    base = type_name.removesuffix("Fast").removesuffix("Pil").replace("FeatureExtractor", "ImageProcessor")
    for name in (base + "Pil", base):
        try:
            cls = getattr(transformers, name)
        except Exception:  # absent, or its module needs torchvision
            continue
        keys = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_center_crop", "crop_size", "do_pad", "size_divisor", "keep_aspect_ratio",
                "ensure_multiple_of", "do_flip_channel_order", "default_to_square")
        found = {}
        for key in keys:
            value = getattr(cls, key, None)
            if isinstance(value, (bool, int, float, str, list, tuple, dict)):
                found[key] = value
            elif value is not None and hasattr(value, "value"):  # PILImageResampling enum
                found[key] = int(value.value)
        return found
    return {}


class ImageProcessing:
    """A transformers image processor's configuration, applied in torch to (N, 3, H, W) images in [-1, 1].

    Steps, in the processor's order: [resize] -> [rescale] -> [normalize] -> [flip to BGR] -> [pad].
    Pixel values are taken as an 8-bit image would hold them (0..255, clamped: the processor only ever
    sees 8-bit images, and PIL clamps bicubic overshoot when it resizes one), so ``do_rescale`` with
    1/255 gives 0..1 and a model without rescaling gets 0..255.

    A center crop would leave the borders of the image unlabelled; segmentation needs every pixel, so
    with ``do_center_crop`` the whole image is resized to ``crop_size`` instead (the scale the model was
    trained at, within the crop ratio)."""

    DEFAULTS = {"do_resize": True, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                "do_center_crop": False, "do_pad": False, "size_divisor": None, "keep_aspect_ratio": False,
                "ensure_multiple_of": 1, "do_flip_channel_order": False, "default_to_square": True}

    def __init__(self, config: dict, source: str = "preprocessor_config.json", size_override=None):
        self.source = source
        type_name = config.get("image_processor_type") or config.get("feature_extractor_type")
        cfg = {**self.DEFAULTS, **_class_defaults(type_name), **config}
        unknown = sorted(k for k, v in config.items() if k.startswith("do_") and v is True
                         and k not in self.DEFAULTS and k not in IGNORED_STEPS)
        if unknown:
            raise CheckpointError(f"{source} asks for {', '.join(unknown)}, which the transformers segmenter does "
                                  "not implement; remove those steps from the file if the model does not need them")
        self.type_name = type_name
        self.do_resize = bool(cfg["do_resize"])
        resample = int(cfg["resample"]) if cfg.get("resample") is not None else 2
        if resample not in (0, 2, 3):
            raise CheckpointError(f"{source}: resample = {resample} ({PIL_FILTERS.get(resample, 'unknown')}) is not "
                                  "supported; nearest (0), bilinear (2) and bicubic (3) are. Set \"resample\": 2 or 3")
        self.mode = PIL_FILTERS[resample]
        self.size_spec = self._size_dict(cfg.get("size"), cfg["default_to_square"], "size")
        self.crop = (self._size_dict(cfg.get("crop_size"), True, "crop_size")
                     if cfg.get("do_center_crop") else None)
        if self.crop is not None and not ("height" in self.crop and "width" in self.crop):
            raise CheckpointError(f"{source}: crop_size must have height and width, got {cfg.get('crop_size')!r}")
        self.keep_aspect_ratio = bool(cfg.get("keep_aspect_ratio"))
        self.multiple = int(cfg.get("ensure_multiple_of") or 1)
        self.rescale = float(cfg["rescale_factor"]) if cfg["do_rescale"] else None
        self.normalize = bool(cfg["do_normalize"])
        self.mean = self._channels(cfg["image_mean"], "image_mean") if self.normalize else None
        self.std = self._channels(cfg["image_std"], "image_std") if self.normalize else None
        if self.normalize and any(s <= 0 for s in self.std):
            raise CheckpointError(f"{source}: image_std must be positive, got {cfg['image_std']!r}")
        self.flip = bool(cfg.get("do_flip_channel_order"))
        self.pad_divisor = int(cfg["size_divisor"]) if cfg.get("do_pad") and cfg.get("size_divisor") else None
        self.override = parse_size(size_override, "size")

    def _size_dict(self, size, default_to_square: bool, key: str) -> dict:
        # get_size_dict: an int is a square, or the shortest edge for classes that say so
        if size is None:
            return {}
        if isinstance(size, int):
            return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return {"height": int(size[0]), "width": int(size[1])}
        if isinstance(size, dict) and (("height" in size and "width" in size) or "shortest_edge" in size):
            return {k: int(v) for k, v in size.items() if v is not None}
        raise CheckpointError(f"{self.source}: {key} = {size!r} is not supported; give "
                              "{\"height\": H, \"width\": W} or {\"shortest_edge\": S}")

    def _channels(self, value, key: str) -> list[float]:
        values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != 3:
            raise CheckpointError(f"{self.source}: {key} must have 3 values (R, G, B), got {value!r}")
        return values

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the model sees for an image of (height, width), before padding."""
        if self.override is not None:
            return self.override
        if self.crop is not None:
            return self.crop["height"], self.crop["width"]
        if not self.do_resize or not self.size_spec:
            return height, width
        spec = self.size_spec
        if "height" in spec and "width" in spec:
            if not self.keep_aspect_ratio and self.multiple == 1:
                return spec["height"], spec["width"]
            # models/dpt/image_processing_pil_dpt.py get_resize_output_image_size
            sh, sw = spec["height"] / height, spec["width"] / width
            if self.keep_aspect_ratio:
                if abs(1 - sw) < abs(1 - sh):
                    sh = sw
                else:
                    sw = sh

            def constrain(val):
                x = round(val / self.multiple) * self.multiple
                return math.ceil(val / self.multiple) * self.multiple if x < 0 else x

            return constrain(sh * height), constrain(sw * width)
        short = spec["shortest_edge"]
        if "longest_edge" in spec:  # image_transforms.get_size_with_aspect_ratio
            longest, raw = spec["longest_edge"], None
            lo, hi = float(min(height, width)), float(max(height, width))
            if hi / lo * short > longest:
                raw = longest * lo / hi
                short = int(round(raw))
            if (height <= width and height == short) or (width <= height and width == short):
                return height, width
            if width < height:
                return (int(raw * height / width) if raw is not None else int(short * height / width)), short
            return short, (int(raw * width / height) if raw is not None else int(short * width / height))
        # image_transforms.get_resize_output_image_size with default_to_square=False
        lo, hi = (width, height) if width <= height else (height, width)
        new_long = int(short * hi / lo)
        return (new_long, short) if width <= height else (short, new_long)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> the model's ``pixel_values`` (N, 3, h, w), differentiably."""
        # 8-bit range, as the processor sees an image (clamped: values outside cannot be stored in 8 bits)
        x = ((images.float() + 1) * 127.5).clamp(0, 255)
        size = self.target_size(*images.shape[-2:])
        resizing = self.do_resize or self.crop is not None or self.override is not None
        if resizing and tuple(size) != tuple(x.shape[-2:]):
            if self.mode == "bicubic":
                # Pillow resizes rows first, then columns (Resample.c, ImagingResampleInner), storing each
                # pass in 8 bits: the cubic filter's overshoot at edges is clamped after each pass
                x = resize(x, (x.shape[-2], size[1]), self.mode).clamp(0, 255)
                x = resize(x, size, self.mode).clamp(0, 255)
            else:
                x = resize(x, size, self.mode)  # bilinear and nearest stay within the input's range
        if self.rescale is not None:
            x = x * self.rescale
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
            x = (x - mean) / std
        if self.flip:
            x = x.flip(1)
        if self.pad_divisor:
            h, w = x.shape[-2:]
            ph, pw = -h % self.pad_divisor, -w % self.pad_divisor
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))  # centred, zeros after normalising
        return x

    def unpad(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits of a padded input -> logits of the image region alone, at the unpadded input ``size``."""
        if not self.pad_divisor:
            return logits
        h, w = size
        ph, pw = -h % self.pad_divisor, -w % self.pad_divisor
        if ph == 0 and pw == 0:
            return logits
        full = F.interpolate(logits, size=(h + ph, w + pw), mode="bilinear", align_corners=False)
        return full[:, :, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]

    def describe(self) -> dict:
        """What is applied, for run.json (``weights_info``)."""
        return {"image_processor_type": self.type_name, "resample": self.mode, "size": self.size_spec,
                "size_override": list(self.override) if self.override else None,
                "center_crop_as_resize": dict(self.crop) if self.crop else None,
                "keep_aspect_ratio": self.keep_aspect_ratio, "ensure_multiple_of": self.multiple,
                "rescale_factor": self.rescale, "image_mean": self.mean, "image_std": self.std,
                "flip_to_bgr": self.flip, "pad_to_multiple_of": self.pad_divisor}


# -- the segmenter -------------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a transformers model folder needs {what}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _stored_dtypes(folder: Path) -> dict[str, int] | None:
    """Tensor dtypes as the safetensors files store them (read from their headers, no tensor loaded)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                code = str(f.get_slice(key).get_dtype())
                name = SAFETENSORS_DTYPES.get(code, code.lower())
                counts[name] = counts.get(name, 0) + 1
    return counts


def _unpickling_error(exc: BaseException | None) -> pickle.UnpicklingError | None:
    """The weights-only unpickler's refusal among an exception's causes, if it is one of them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, pickle.UnpicklingError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class HFSegmenter(PixelSegmenter):
    """gandid Segmenter on a local Hugging Face ``AutoModelForSemanticSegmentation`` folder.

    Options: ``weights`` (the folder: ``--seg-weights``), ``size`` (int or "HxW": the size images are
    resized to for the model, overriding the image processor's; smaller is faster and coarser),
    ``resolution`` (int or "HxW": the size of the returned labels; default the image's), ``batch_size``
    (images per forward pass), ``background`` (class names an ablated object uncovers; default the scene
    classes among the labels), ``device``."""

    def __init__(self, weights: str | None = None, size: int | str | None = None, resolution: int | str | None = None,
                 batch_size: int = 16, background: list[str] | None = None, device: str = "cpu"):
        try:
            import transformers
        except ImportError:
            raise ConfigError(f"the transformers segmenter needs the transformers package: {INSTALL_HINT}") from None
        if not weights:
            raise ConfigError("the transformers segmenter needs a model folder: give --seg-weights DIR, a folder "
                              "written by save_pretrained (config.json, model.safetensors, preprocessor_config.json)")
        folder = Path(weights).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder: the transformers segmenter takes the folder that "
                                  "save_pretrained wrote (config.json, model.safetensors, preprocessor_config.json)")
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as ARCHS

        # 1. The folder's files, before loading anything heavy
        config = _read_json(folder / "config.json", "config.json (its architecture and id2label)")
        model_type = config.get("model_type")
        if model_type not in ARCHS:
            raise CheckpointError(f"{folder / 'config.json'}: model_type {model_type!r} is not a semantic-segmentation "
                                  f"architecture of transformers {transformers.__version__} (supported: "
                                  f"{', '.join(sorted(ARCHS))})")
        present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
        if not present:
            raise CheckpointError(f"{folder} has no model weights: expected one of {', '.join(WEIGHT_FILES)} "
                                  "(save_pretrained writes model.safetensors)")
        weights_file = folder / present[0]
        names = self._id2label(config, folder / "config.json")
        processor_path = folder / "preprocessor_config.json"
        self.processing = ImageProcessing(
            _read_json(processor_path, "preprocessor_config.json (how images are resized and normalised)"),
            str(processor_path), size_override=size)
        super().__init__(unique_labels(names, str(folder / "config.json")), resolution, batch_size, background)

        # 2. The model. Weights only: safetensors where the folder has them, else pytorch_model.bin through
        # torch.load(weights_only=True) (transformers' default, asked for explicitly); never remote code.
        self.model = self._load(transformers, folder, weights_file, len(names))
        self.model.requires_grad_(False)  # class_scores needs gradients for the images, never the weights
        self.weights_info = {"file": str(folder), "architecture": type(self.model).__name__,
                             "transformers": transformers.__version__, "loaded_as": "float32",
                             "preprocessing": self.processing.describe()}
        stored = _stored_dtypes(folder)
        if stored:
            self.weights_info["stored_dtypes"] = stored
            if any(name in ("float16", "bfloat16", "float64") for name in stored):
                self.weights_info["converted"] = True
        self.to(device)
        self._probe(folder)

    @staticmethod
    def _id2label(config: dict, path: Path) -> list[str]:
        id2label = config.get("id2label")
        if not isinstance(id2label, dict) or not id2label:
            raise CheckpointError(f"{path} has no id2label: the segmenter needs the name of every class "
                                  '(e.g. "id2label": {"0": "wall", "1": "floor"})')
        try:
            ids = sorted(int(k) for k in id2label)
        except ValueError:
            raise CheckpointError(f"{path}: id2label keys must be class indices, got {sorted(id2label)[:5]}") from None
        if ids != list(range(len(ids))):
            missing = sorted(set(range(max(ids) + 1)) - set(ids))
            raise CheckpointError(f"{path}: id2label must name classes 0..{len(ids) - 1} without gaps; "
                                  f"missing {missing[:10]}")
        num = config.get("num_labels")
        if num is not None and num != len(ids):
            raise CheckpointError(f"{path}: num_labels = {num} but id2label names {len(ids)} classes; make them agree")
        return [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids]

    def _load(self, transformers, folder: Path, weights_file: Path, classes: int):
        from transformers import AutoModelForSemanticSegmentation
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        # transformers prints its own load report and progress bars; gandid reports problems itself, below
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model, info = AutoModelForSemanticSegmentation.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True,
                use_safetensors=weights_file.name.startswith("model.safetensors"), weights_only=True,
                ignore_mismatched_sizes=True)
        except GandidError:
            raise
        except Exception as exc:
            refused = _unpickling_error(exc)  # transformers 4 wraps it in an OSError
            if refused is not None:
                from gandid.checkpoints import refusal_reason

                raise CheckpointError(f"{weights_file}: refusing to load: {refusal_reason(refused)}, and gandid "
                                      "never unpickles code or arbitrary objects. Convert the model to "
                                      "model.safetensors in an environment you trust (save_pretrained writes one)"
                                      ) from None
            raise CheckpointError(f"{folder}: transformers could not load the model ({type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        mismatched = sorted(info.get("mismatched_keys") or [], key=lambda t: str(t[0]))
        if mismatched:
            shown = "; ".join(f"{key}: {list(file_shape)} in the file, {list(model_shape)} from config.json"
                              for key, file_shape, model_shape in mismatched[:6])
            width = [file_shape[0] for _, file_shape, model_shape in mismatched
                     if len(model_shape) and model_shape[0] == classes and len(file_shape)]
            hint = (f"config.json's id2label names {classes} classes but the classifier in {weights_file.name} has "
                    f"{width[0]} outputs; " if width else "")
            raise CheckpointError(f"{weights_file} does not fit {folder / 'config.json'}: {hint}{shown}")
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            more = f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
            raise CheckpointError(f"{weights_file} lacks {len(missing)} weights that {folder / 'config.json'}'s "
                                  f"architecture needs (transformers would initialise them randomly): "
                                  f"{', '.join(missing[:8])}{more}")
        unexpected = sorted(info.get("unexpected_keys") or [])
        self.unexpected_keys = unexpected  # unused extras (e.g. a training-only head): kept, not fatal
        return model.float().eval()

    def _probe(self, folder: Path) -> None:
        """One small forward pass before any work: the model's output width must match its labels."""
        h, w = self.processing.target_size(64, 64)
        x = torch.zeros(1, 3, 64, 64, device=self.device)
        with torch.no_grad():
            logits = self.logits(x)
        if logits.dim() != 4 or logits.shape[1] != len(self.labels):
            raise CheckpointError(f"{folder}: the model gives outputs of shape {tuple(logits.shape)} for a "
                                  f"{h}x{w} input, not (1, {len(self.labels)}, h, w) as config.json's "
                                  f"{len(self.labels)} labels require")

    def to(self, device):
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        pixel_values = self.processing(images)
        logits = self.model(pixel_values=pixel_values).logits
        return self.processing.unpad(logits, self.processing.target_size(*images.shape[-2:]))


@hookimpl
def gandid_register_segmenters(register):
    register("transformers", HFSegmenter,
             description="any Hugging Face semantic-segmentation model folder (SegFormer, UperNet, DPT, BEiT, ...): "
                         "labels from config.json, preprocessing from preprocessor_config.json, differentiable; "
                         "--seg-weights DIR; needs the transformers extra")
