"""The embedded toyroom world: a procedural conference-room renderer with exact labels, and the
segmenter trained on it (the generator trained on it is still to come)."""
from gandid import hookimpl


@hookimpl
def gandid_register_segmenters(register):
    from .segmenter import ToyroomSegmenter

    register("toyroom", ToyroomSegmenter, description="U-Net trained on toyroom renders (11 classes, 64 px)")
