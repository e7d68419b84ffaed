"""``--generator pix2pix``: the options checked, the generator built from its file and given its inputs
folder."""
from __future__ import annotations

from pathlib import Path

from gandid.checkpoints import load_state_dict_file
from gandid.errors import CheckpointError, ConfigError

from .checkpoint import build
from .inputs import InputFolder
from .networks import Pix2PixGenerator


def pix2pix(weights: str | None = None, inputs: str | None = None, size: int | None = None,
            batchnorm: str = "eval", direction: str | None = None, order: str = "shuffled") -> Pix2PixGenerator:
    """Factory for ``--generator pix2pix --weights latest_net_G.pth`` with generator options:

    ``inputs`` (required): the folder of input images (sample i = one of them, see :class:`InputFolder`);
    ``size``: input (and output) size, default 2**depth for a U-Net (128 for unet_128, 256 for unet_256)
    and 256 for a ResNet (the repository's crop_size); ``batchnorm``: "eval" (running statistics) or
    "sample" (each image's own, as test.py without --eval); ``direction``: "AtoB" / "BtoA" when each file
    is an aligned A|B pair (the input is its left / right half), left out when each file is one image;
    ``order``: "shuffled" (default, a permutation drawn from the seed) or "sorted"."""
    if weights is None:
        raise CheckpointError("generator 'pix2pix' needs a weights file: --weights latest_net_G.pth")
    if inputs is None:
        raise ConfigError("pix2pix is a conditional generator: its samples are input images; give the folder that "
                          "holds them (generator option inputs=DIR, e.g. [generator_options] inputs = \"testA\")")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"pix2pix: size must be a positive integer, got {size!r}")
    data = load_state_dict_file(Path(weights))
    gen = build(data, size=size, batchnorm=batchnorm, source=str(weights))
    gen.inputs = InputFolder(inputs, gen.size, gen.input_nc, direction, order)
    gen.weights_info.update({"inputs": str(inputs), "input_images": len(gen.inputs), "direction": direction,
                             "order": order})
    return gen
