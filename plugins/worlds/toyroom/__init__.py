"""The embedded toyroom world: a procedural conference-room renderer with exact labels, the segmenter
trained on it and a PG-GAN-layout generator trained on it (weights and recipe in this package)."""
from gandid import hookimpl

# Sized so that `gandid run` with no arguments finishes in about two minutes on a 2-core CPU
# (measured in README "Quickstart"): ACE's exact per-unit passes cost (each class's screened candidates
# + the union of all classes' candidates, ablated once) x samples generated and segmented images, the
# DID 4 x samples per class. Give your own to look closer.
DEFAULT_RUN_OPTIONS = {
    "ace": {"min_area": 0.005, "context_locations": 8, "alpha_steps": 10, "alpha_samples": 4},
    "did": {"samples": 128},
}


def toyroom_generator(weights: str | None = None):
    """The shipped toyroom generator (the `pggan` layout, 64 px); ``weights`` overrides the file."""
    from gandid.errors import CheckpointError

    from ...generators.pggan import PGGANGenerator
    from .train import GENERATOR_WEIGHTS

    path = weights or GENERATOR_WEIGHTS
    if not __import__("pathlib").Path(path).exists():
        raise CheckpointError(f"toyroom generator weights not found at {path}; train them with "
                              "`python -m gandid_plugins.worlds.toyroom.train generator`")
    gen = PGGANGenerator.from_file(path).float().eval()
    gen.default_layer = "layer5"  # 16x16, 128 units: objects of a 64 px room are a few feature pixels wide
    gen.analysis_defaults = DEFAULT_RUN_OPTIONS
    return gen


@hookimpl
def gandid_register_generators(register):
    register("toyroom", toyroom_generator, description="PG-GAN (pggan layout) trained on toyroom renders, 64 px")


@hookimpl
def gandid_register_segmenters(register):
    from .segmenter import ToyroomSegmenter

    register("toyroom", ToyroomSegmenter, description="U-Net trained on toyroom renders (11 classes, 64 px)")
