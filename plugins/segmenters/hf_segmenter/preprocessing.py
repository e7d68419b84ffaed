"""A transformers image processor's steps, done in torch on the batch (differentiably), and the resize of
PIL's filters they use.

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
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from gandid.errors import CheckpointError

from .pixel_segmenter import parse_size

# PIL's filter codes, as image processors store them in ``resample``
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Steps of an image processor that do not touch the image (labels only) or are no-ops for RGB input
IGNORED_STEPS = {"do_reduce_labels", "reduce_labels", "do_convert_rgb"}


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Differentiable resize of (N, C, H, W) as PIL's filter ``mode`` does it (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # PIL returns a copy of the image too
    if mode == "nearest":
        # PIL samples the nearest pixel centre: torch's "nearest-exact" (plain "nearest" floors)
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


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
