"""pix2pix and CycleGAN generators (junyanz/pytorch-CycleGAN-and-pix2pix ``latest_net_G.pth``) as
conditional generators: a sample's "latent" is an input image read from a folder.

Modules: :mod:`.inputs` (the folder of input images), :mod:`.norms` (batch and instance norm, and their norm
sites), :mod:`.networks` (U-Net and ResNet generators: layers, norm sites, forward passes),
:mod:`.checkpoint` (reading ``latest_net_G.pth``), :mod:`.factory` (``--generator pix2pix``).
"""
from gandid import hookimpl

from .checkpoint import build, detect, recognise
from .factory import pix2pix
from .inputs import InputFolder
from .networks import Pix2PixGenerator, ResnetGenerator, UnetGenerator
from .norms import BatchNorm

__all__ = ["BatchNorm", "InputFolder", "Pix2PixGenerator", "ResnetGenerator", "UnetGenerator", "build", "detect",
           "pix2pix", "recognise"]


@hookimpl
def gandid_register_generators(register):
    register("pix2pix", pix2pix, description="pix2pix / CycleGAN generators (junyanz/pytorch-CycleGAN-and-pix2pix "
                                             "latest_net_G.pth: U-Net or ResNet, batch or instance norm), "
                                             "conditioned on a folder of input images",
             recognise=recognise)
