"""The ``onnx`` segmenter: any ONNX semantic-segmentation model, run with onnxruntime.

An ONNX file says nothing about what its classes are called or how it wants its pixels, so the user
states it: ``labels`` (a file), the input ``size`` (when the model leaves it open), ``range`` of the pixel
values, ``mean``/``std``, ``layout`` (NCHW or NHWC) and channel order. The model must map one image batch
to per-pixel class scores (logits or probabilities), (N, K, h, w) or (N, h, w, K); the scores are
upsampled bilinearly to the image size (or ``resolution``) and the argmax is the label, as for the
``transformers`` segmenter (:class:`gandid_plugins.segmenters.hf_segmenter.PixelSegmenter` does that part for both).

onnxruntime computes no gradients, so ``class_scores`` cannot be differentiable: ``differentiable`` is
False, ACE refuses its gradient screen and GAN Dissection's alpha optimisation before any work (naming
the settings that run without them), and a direct call raises :class:`NotDifferentiableError`.

``onnxruntime`` is an optional extra (``pip install -e ".[onnx]"``); it does not depend on torch.

Labels files: a JSON list of names; a JSON object {"0": "wall", "1": "floor", ...}; a JSON object with
``labels`` (a list) or ``id2label`` (an object), and optionally ``categories`` ({label: category}) and
``background`` (a list of labels); or plain text, one name per line, in class order.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gandid import hookimpl
from gandid.errors import CheckpointError, ConfigError

from .hf_segmenter import NotDifferentiableError, PixelSegmenter, parse_size, resize, unique_labels

INSTALL_HINT = ('pip install -e ".[onnx]" in a gandid checkout, or pip install onnxruntime '
                "(it does not depend on torch, so the torch you have stays)")
RANGES = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0), "-1-1": (-1.0, 1.0)}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# onnxruntime's names of the input element types this plugin can feed
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(uint8)": np.uint8}


def load_labels(path: Path) -> tuple[list[str], dict | None, list[str] | None]:
    """(names in class order, categories or None, background or None) from a labels file (module doc)."""
    if not path.is_file():
        raise CheckpointError(f"labels file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"labels file {path} is not readable UTF-8 text ({exc})") from None
    categories = background = None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"labels file {path} is not valid JSON ({exc})") from None
        if isinstance(data, dict) and ("labels" in data or "id2label" in data):
            categories, background = data.get("categories"), data.get("background")
            if categories is not None and not isinstance(categories, dict):
                raise CheckpointError(f"labels file {path}: categories must be an object {{label: category}}")
            if background is not None and not (isinstance(background, list)
                                               and all(isinstance(b, str) for b in background)):
                raise CheckpointError(f"labels file {path}: background must be a list of label names")
            data = data.get("labels", data.get("id2label"))
        if isinstance(data, list):
            names = data
        elif isinstance(data, dict):
            try:
                ids = {int(k): v for k, v in data.items()}
            except ValueError:
                raise CheckpointError(f"labels file {path}: keys must be class indices such as \"0\", got "
                                      f"{sorted(data)[:5]}") from None
            missing = sorted(set(range(max(ids, default=-1) + 1)) - set(ids))
            if missing or min(ids, default=0) < 0:
                raise CheckpointError(f"labels file {path} must name classes 0..{len(ids) - 1} without gaps; "
                                      f"missing {missing[:10]}")
            names = [ids[i] for i in sorted(ids)]
        else:
            raise CheckpointError(f"labels file {path} must hold a list of names or an object {{index: name}}, "
                                  f"got {type(data).__name__}")
        if not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"labels file {path}: every label must be a string")
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()  # a final newline or blank line ends the file, it names no class
        empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
        if empty:
            raise CheckpointError(f"labels file {path}: line {empty[0]} is empty; a plain-text labels file has one "
                                  "class name per line, in class order")
        names = lines
    if not names:
        raise CheckpointError(f"labels file {path} names no class")
    return unique_labels(names, f"labels file {path}"), categories, background


def find_labels(labels: str | None, model: Path) -> Path:
    """The labels file: ``labels`` as given (a relative path that is not in the working directory is
    looked for beside the model too: a config file's options are not relative to it), or, when not
    given, MODEL.labels.json, MODEL.labels.txt, labels.json or labels.txt beside the model."""
    if labels:
        given = Path(labels).expanduser()
        if not given.exists() and not given.is_absolute() and (model.parent / given).exists():
            return model.parent / given
        return given
    beside = [model.with_suffix(".labels.json"), model.with_suffix(".labels.txt"), model.parent / "labels.json",
              model.parent / "labels.txt"]
    for candidate in beside:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the onnx segmenter needs the names of {model.name}'s classes: give labels = \"FILE\" under "
                      "[segmenter_options] (a JSON list, a JSON object {index: name}, or one name per line), or put "
                      f"one at {', '.join(str(c) for c in beside)}")


def _dim(value) -> int | None:
    """A static dimension of an onnxruntime shape, or None for a named or unknown one."""
    return value if isinstance(value, int) and value > 0 else None


class OnnxSegmenter(PixelSegmenter):
    """gandid Segmenter on an ONNX model. Options: ``weights`` (the .onnx file: ``--seg-weights``),
    ``labels`` (labels file; default MODEL.labels.json/.txt or labels.json/.txt beside the model),
    ``size`` (int or "HxW": the input size; default the model's own, or the image's when the model takes
    any), ``range`` ("0-1", "0-255" or "-1-1": the pixel values the model expects; default "0-1", and
    "0-255" unnormalised for a uint8 input), ``mean``/``std`` (3 values each, in the units of ``range``,
    subtracted and divided after scaling; default ImageNet's for 0-1 and 0-255, none for -1-1),
    ``layout`` ("NCHW" or "NHWC"), ``output_layout`` (default: ``layout``), ``bgr`` (feed channels as
    BGR), ``resample`` ("bilinear", "bicubic" or "nearest", how images are resized to ``size``),
    ``output`` (which output holds the class scores; default the first), ``resolution`` (int or "HxW":
    the size of the returned labels; default the image's), ``batch_size``, ``background`` (class names an
    ablated object uncovers; default the labels file's, else the scene classes among the labels),
    ``providers`` (onnxruntime execution providers; default CPU)."""

    differentiable = False  # onnxruntime gives no gradients; ACE reads this before any work

    def __init__(self, weights: str | None = None, labels: str | None = None, size: int | str | None = None,
                 range: str | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                 layout: str = "NCHW", output_layout: str | None = None, bgr: bool = False,
                 resample: str = "bilinear", output: str | None = None, resolution: int | str | None = None,
                 batch_size: int = 16, background: list[str] | None = None, providers: list[str] | None = None):
        value_range = range  # the option's name is the user's word; keep the builtin usable below
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(f"the onnx segmenter needs the onnxruntime package: {INSTALL_HINT}") from None
        if not weights:
            raise ConfigError("the onnx segmenter needs a model file: give --seg-weights FILE.onnx (and labels = "
                              "\"FILE\" under [segmenter_options] unless a labels file lies beside it)")
        # 1. Options, before any file is read
        self.layout = self._layout(layout, "layout")
        self.output_layout = self._layout(output_layout or layout, "output_layout")
        if value_range is not None and value_range not in RANGES:
            raise ValueError(f"range must be one of {', '.join(RANGES)}, got {value_range!r}")
        stated = {"range": value_range, "mean": mean, "std": std}
        self.range = value_range or "0-1"
        default_mean, default_std = ([0.0] * 3, [1.0] * 3) if self.range == "-1-1" else (
            [m * RANGES[self.range][1] for m in IMAGENET_MEAN], [s * RANGES[self.range][1] for s in IMAGENET_STD])
        self.mean = self._three(mean, "mean", default_mean)
        self.std = self._three(std, "std", default_std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if resample not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"resample must be 'bilinear', 'bicubic' or 'nearest', got {resample!r}")
        self.resample, self.bgr = resample, bool(bgr)
        requested_size = parse_size(size, "size")
        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise ValueError(f"onnxruntime provider(s) {', '.join(unknown)} not available here "
                             f"(available: {', '.join(available)})")

        # 2. Files
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"ONNX model {path} does not exist" +
                                  (" (it is a folder: give the .onnx file inside it)" if path.is_dir() else ""))
        labels_path = find_labels(labels, path)
        names, categories, file_background = load_labels(labels_path)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's warnings go to stderr; problems are reported below
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise CheckpointError(f"{path} is not an ONNX model onnxruntime can load ({type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
        super().__init__(names, resolution, batch_size, background if background is not None else file_background,
                         categories)
        self.path, self.labels_path = path, labels_path

        # 3. The graph's input and output against the options and the labels
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); the onnx "
                                  "segmenter feeds one image batch")
        self.input = inputs[0]
        if self.input.type not in INPUT_TYPES:
            raise CheckpointError(f"{path}: input {self.input.name!r} is {self.input.type}; the onnx segmenter feeds "
                                  f"{', '.join(INPUT_TYPES)}")
        if self.input.type == "tensor(uint8)":
            # an 8-bit input is the stored image itself: 0..255, any normalisation happens inside the graph
            if any(v is not None for v in stated.values()) and (
                    self.range != "0-255" or self.mean != [0.0] * 3 or self.std != [1.0] * 3):
                raise ValueError(f"{path} takes 8-bit pixels (input {self.input.name!r} is uint8), which cannot "
                                 f"carry range/mean/std {stated}: leave them unset, or give range = \"0-255\", "
                                 "mean = [0, 0, 0] and std = [1, 1, 1]")
            self.range, self.mean, self.std = "0-255", [0.0] * 3, [1.0] * 3
        shape = list(self.input.shape)
        if len(shape) != 4:
            raise CheckpointError(f"{path}: input {self.input.name!r} has shape {shape}; an image batch is 4-D "
                                  "(N, 3, H, W) or (N, H, W, 3)")
        channels, (h, w) = (shape[1], shape[2:]) if self.layout == "NCHW" else (shape[3], shape[1:3])
        if _dim(channels) is not None and channels != 3:
            other = "NHWC" if self.layout == "NCHW" else "NCHW"
            raise CheckpointError(f"{path}: input {self.input.name!r} has shape {shape}, which is not a {self.layout} "
                                  f"batch of RGB images (3 channels); is it layout = \"{other}\"?")
        model_size = (_dim(h), _dim(w))
        if requested_size and any(m is not None and m != r for m, r in zip(model_size, requested_size)):
            raise ValueError(f"size {requested_size[0]}x{requested_size[1]} does not fit {path}, whose input "
                             f"{self.input.name!r} is {shape} (height and width {h} x {w})")
        self.size = requested_size or (model_size if None not in model_size else None)
        self.fixed_batch = _dim(shape[0])
        if self.fixed_batch:
            self.batch_size = self.fixed_batch  # the graph takes exactly this many images; the last chunk is padded
        outputs = self.session.get_outputs()
        names_out = [o.name for o in outputs]
        if output is not None and output not in names_out:
            raise ValueError(f"{path} has no output {output!r} (outputs: {', '.join(names_out)})")
        self.output = next(o for o in outputs if o.name == (output or names_out[0]))
        out_shape = list(self.output.shape)
        if len(out_shape) == 4:
            k = _dim(out_shape[1] if self.output_layout == "NCHW" else out_shape[3])
            if k is not None and k != len(self.labels):
                raise self._width_error(k, out_shape)
        self.weights_info = {"file": str(path), "labels_file": str(labels_path), "input": self.input.name,
                             "input_shape": [d if isinstance(d, int) else str(d) for d in shape],
                             "output": self.output.name, "size": list(self.size) if self.size else None,
                             "layout": self.layout, "range": self.range, "mean": self.mean, "std": self.std,
                             "bgr": self.bgr, "providers": self.session.get_providers()}
        self._probe()

    @staticmethod
    def _layout(value, name):
        if value not in ("NCHW", "NHWC"):
            raise ValueError(f"{name} must be 'NCHW' or 'NHWC', got {value!r}")
        return value

    @staticmethod
    def _three(value, name, default):
        if value is None:
            return list(default)
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"{name} must be 3 numbers (R, G, B) in the units of range, got {value!r}")
        return [float(v) for v in value]

    def _width_error(self, width: int, shape) -> CheckpointError:
        return CheckpointError(f"labels file {self.labels_path} names {len(self.labels)} classes but {self.path} "
                               f"gives {width} class scores per pixel (output {self.output.name!r}, shape {shape}, "
                               f"layout {self.output_layout}); give the labels file that belongs to this model")

    def _probe(self) -> None:
        """One forward pass before any work: the output must be class scores of the labels' width."""
        h, w = self.size or (64, 64)
        ramp = torch.linspace(-1, 1, h * w).view(1, 1, h, w)  # any image will do: only shapes are read
        images = torch.cat([ramp, ramp.flip(-1), ramp.flip(-2)], 1)
        out = self._run(images)
        if out.ndim != 4:
            raise CheckpointError(f"{self.path}: output {self.output.name!r} has shape {list(out.shape)} for one "
                                  f"{h}x{w} image; the onnx segmenter needs per-pixel class scores, (N, K, h, w) or "
                                  "(N, h, w, K) (a model that ends in an argmax gives no scores: export it without)")
        if not np.issubdtype(out.dtype, np.floating):
            raise CheckpointError(f"{self.path}: output {self.output.name!r} holds {out.dtype} values, not class "
                                  "scores (export the model before its argmax)")
        width = out.shape[1] if self.output_layout == "NCHW" else out.shape[3]
        if width != len(self.labels):
            raise self._width_error(width, list(out.shape))

    def preprocess(self, images: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) in [-1, 1] -> the model's input array, as the options describe it."""
        # clamped: the model was trained on stored images, whose values cannot leave the range
        x = images.detach().float().clamp(-1, 1)
        lo, hi = RANGES[self.range]
        x = lo + (x + 1) * ((hi - lo) / 2)
        if self.size is not None and tuple(self.size) != tuple(x.shape[-2:]):
            x = resize(x, tuple(self.size), self.resample)
            if self.resample == "bicubic":
                x = x.clamp(lo, hi)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        x = (x - mean) / std
        if self.bgr:
            x = x.flip(1)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        dtype = INPUT_TYPES[self.input.type]
        if dtype == np.uint8:
            x = x.round().clamp(0, 255)
        return np.ascontiguousarray(x.cpu().numpy().astype(dtype))

    def _run(self, images: torch.Tensor) -> np.ndarray:
        """The model's raw output for (n, 3, H, W) images in [-1, 1]."""
        if not self.fixed_batch:
            return self.session.run([self.output.name], {self.input.name: self.preprocess(images)})[0]
        # a graph exported for a fixed batch: run it on pieces of that size, the last one filled with copies
        # of its last image, whose outputs are dropped
        b, outs = self.fixed_batch, []
        for lo in range(0, len(images), b):
            piece = images[lo:lo + b]
            n = len(piece)
            if n < b:
                piece = torch.cat([piece, piece[-1:].expand(b - n, -1, -1, -1)])
            outs.append(self.session.run([self.output.name], {self.input.name: self.preprocess(piece)})[0][:n])
        return np.concatenate(outs)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(np.asarray(self._run(images), dtype=np.float32))
        if self.output_layout == "NHWC":
            out = out.permute(0, 3, 1, 2)
        return out.to(images.device)

    def class_scores(self, images: torch.Tensor, c: int) -> torch.Tensor:
        raise NotDifferentiableError(
            "the onnx segmenter gives no gradients (onnxruntime computes none), and class_scores must be "
            "differentiable: for ACE set screen = false and alpha_steps = 0 under [analysis_options.ace], or use a "
            "differentiable segmenter (transformers, or a PyTorch plugin)")


@hookimpl
def gandid_register_segmenters(register):
    register("onnx", OnnxSegmenter,
             description="any ONNX semantic-segmentation model (onnxruntime): --seg-weights FILE.onnx, labels file, "
                         "stated size, range, mean/std and layout; not differentiable (no ACE screen or alpha "
                         "optimisation); needs the onnx extra")
