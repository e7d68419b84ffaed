"""The ``transformers`` segmenter: any Hugging Face semantic-segmentation model saved in a local folder.

Modules: :mod:`.segmenter` (the model folder checked, loaded and run), :mod:`.preprocessing` (the image
processor's steps in torch, differentiable), :mod:`.pixel_segmenter` (what this segmenter shares with the
``onnx`` one: :class:`PixelSegmenter`, :func:`parse_size`, :func:`scene_background`, ...).

``transformers`` is an optional extra (``pip install -e ".[transformers]"``); it does not depend on torch,
so installing it never replaces the torch you have.
"""
from gandid import hookimpl

from .pixel_segmenter import (
    SCENE_BACKGROUND,
    NotDifferentiableError,
    PixelSegmenter,
    parse_size,
    scene_background,
    unique_labels,
)
from .preprocessing import ImageProcessing, resize
from .segmenter import INSTALL_HINT, HFSegmenter

__all__ = ["INSTALL_HINT", "SCENE_BACKGROUND", "HFSegmenter", "ImageProcessing",
           "NotDifferentiableError", "PixelSegmenter", "parse_size", "resize", "scene_background", "unique_labels"]


@hookimpl
def gandid_register_segmenters(register):
    register("transformers", HFSegmenter,
             description="any Hugging Face semantic-segmentation model folder (SegFormer, UperNet, DPT, BEiT, ...): "
                         "labels from config.json, preprocessing from preprocessor_config.json, differentiable; "
                         "--seg-weights DIR; needs the transformers extra")
