"""StyleGAN2-ADA generator (NVlabs/stylegan2-ada-pytorch) from its network pickles or G_ema state dicts, on the CPU.

Modules: :mod:`.nvlabs_pickle` (reading NVlabs network pickles as data, never running them),
:mod:`.config` (what builds the generator, from a pickle or a state dict), :mod:`.ops` (NVlabs's
``torch_utils/ops`` the generator uses), :mod:`.networks` (the network modules, with NVlabs's key layout),
:mod:`.generator` (the Generator protocol: layers, demodulation norm sites, the forward pass),
:mod:`.factory` (``--generator stylegan2-ada``).
"""
from gandid import hookimpl

from .config import (
    STATE_DICT_ASSUMPTIONS,
    Config,
    config_as_json,
    config_from_json,
    config_from_kwargs,
    config_from_state_dict,
)
from .factory import recognise, stylegan2_ada
from .generator import StyleGAN2ADAGenerator

__all__ = ["STATE_DICT_ASSUMPTIONS", "Config", "StyleGAN2ADAGenerator", "config_as_json", "config_from_json",
           "config_from_kwargs", "config_from_state_dict", "recognise", "stylegan2_ada"]


@hookimpl
def gandid_register_generators(register):
    register("stylegan2-ada", stylegan2_ada, recognise=recognise,
             description="StyleGAN2-ADA (NVlabs network-snapshot .pkl read without running it, or a G_ema state dict)")
