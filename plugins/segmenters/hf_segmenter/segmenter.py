"""The ``transformers`` segmenter (:class:`HFSegmenter`): a Hugging Face semantic-segmentation model folder
checked, loaded (weights only) and run.

The folder is what ``model.save_pretrained(DIR)`` and ``image_processor.save_pretrained(DIR)`` write:
``config.json`` (architecture and ``id2label``), the weights (``model.safetensors`` or
``pytorch_model.bin``, possibly sharded with an ``.index.json``) and ``preprocessor_config.json``. Every
architecture of ``AutoModelForSemanticSegmentation`` loads: SegFormer, UperNet (ConvNeXt, Swin), DPT, BEiT,
Data2Vec-Vision, MobileNetV2 and MobileViT DeepLab heads.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from gandid.errors import CheckpointError, ConfigError, GandidError

from .pixel_segmenter import PixelSegmenter, unique_labels
from .preprocessing import ImageProcessing

INSTALL_HINT = ('pip install -e ".[transformers]" in a gandid checkout, or pip install "transformers>=4.46" '
                "(it does not depend on torch, so the torch you have stays)")


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
