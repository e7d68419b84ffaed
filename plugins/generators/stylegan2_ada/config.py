"""What builds a StyleGAN2-ADA generator (:class:`Config`): read from the init arguments a network pickle
recorded, inferred from a ``G_ema`` state dict's tensor shapes (what shapes cannot tell is NVlabs train.py's
value, recorded as assumed), or the config ``gandid convert`` stored in a file's metadata.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from gandid.errors import CheckpointError

from .nvlabs_pickle import PersistentObject
from .ops import ACTIVATIONS, setup_filter


@dataclass
class Config:
    """What builds the generator: from a pickle's init kwargs, or inferred from a state dict's shapes."""

    z_dim: int
    w_dim: int
    resolution: int
    channels: dict  # resolution -> channels
    mapping_layers: int = 8
    mapping_features: int | None = None
    mapping_activation: str = "lrelu"
    mapping_lr_multiplier: float = 0.01
    w_avg: bool = True
    img_channels: int = 3
    architecture: str = "skip"
    conv_clamp: float | None = None
    kernel_size: int = 3
    use_noise: bool = True
    activation: str = "lrelu"
    filter_shape: tuple = (4, 4)
    assumed: dict = field(default_factory=dict)  # what a state dict could not say, and the value used

    def __post_init__(self):
        if self.mapping_features is None:
            self.mapping_features = self.w_dim


# -- configuration from a pickle's init kwargs ---------------------------------------------------
_G_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_MAPPING_KWARGS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
# channel_base/max and num_fp16_res are SynthesisNetwork's; the rest goes to SynthesisBlock and SynthesisLayer
_SYNTHESIS_KWARGS = {"channel_base", "channel_max", "num_fp16_res", "architecture", "resample_filter", "conv_clamp",
                     "fp16_channels_last", "kernel_size", "use_noise", "activation"}


def _filter_shape(taps) -> tuple:
    return tuple(setup_filter(taps).shape)


def config_from_kwargs(g: PersistentObject, source: str) -> Config:
    """The Config of a pickled ``Generator`` from the init arguments the persistence decorator recorded."""
    kwargs = dict(zip(_G_ARGS, g.init_args))
    kwargs.update(g.init_kwargs)
    unknown = sorted(set(kwargs) - set(_G_ARGS))
    missing = [k for k in ("z_dim", "w_dim", "img_resolution") if k not in kwargs]
    if missing:
        raise CheckpointError(f"{source}: G_ema's recorded init arguments lack {', '.join(missing)} (it has "
                              f"{sorted(kwargs)}); save G_ema.state_dict() and load that instead")
    mapping = dict(kwargs.get("mapping_kwargs") or {})
    synthesis = dict(kwargs.get("synthesis_kwargs") or {})
    unknown += [f"mapping_kwargs.{k}" for k in sorted(set(mapping) - _MAPPING_KWARGS)]
    unknown += [f"synthesis_kwargs.{k}" for k in sorted(set(synthesis) - _SYNTHESIS_KWARGS)]
    if unknown:
        raise CheckpointError(f"{source}: G_ema was built with options this plugin does not implement: "
                              f"{', '.join(unknown)}; refusing rather than drawing something else")
    if kwargs.get("c_dim", 0):
        raise CheckpointError(f"{source}: a conditional generator (c_dim = {kwargs['c_dim']}): gandid's generators "
                              "take only a latent z, and class-conditional StyleGAN2-ADA is not supported yet")
    res = int(kwargs["img_resolution"])
    if res < 4 or res & (res - 1):
        raise CheckpointError(f"{source}: img_resolution {res} is not a power of two >= 4")
    base, cmax = synthesis.get("channel_base", 32768), synthesis.get("channel_max", 512)
    channels = {2 ** i: min(int(base) // 2 ** i, int(cmax)) for i in range(2, int(math.log2(res)) + 1)}
    cfg = Config(
        z_dim=int(kwargs["z_dim"]), w_dim=int(kwargs["w_dim"]), resolution=res, channels=channels,
        mapping_layers=int(mapping.get("num_layers", 8)), mapping_features=mapping.get("layer_features"),
        mapping_activation=mapping.get("activation", "lrelu"),
        mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
        w_avg=mapping.get("w_avg_beta", 0.995) is not None, img_channels=int(kwargs.get("img_channels", 3)),
        architecture=synthesis.get("architecture", "skip"), conv_clamp=synthesis.get("conv_clamp"),
        kernel_size=int(synthesis.get("kernel_size", 3)), use_noise=bool(synthesis.get("use_noise", True)),
        activation=synthesis.get("activation", "lrelu"),
        filter_shape=_filter_shape(synthesis.get("resample_filter", [1, 3, 3, 1])))
    _check_config(cfg, source)
    return cfg


def _check_config(cfg: Config, source: str):
    problems = []
    if cfg.architecture not in ("skip", "orig", "resnet"):
        problems.append(f"architecture {cfg.architecture!r} (NVlabs has 'orig', 'skip', 'resnet')")
    for what in ("activation", "mapping_activation"):
        if getattr(cfg, what) not in ACTIVATIONS:
            problems.append(f"{what} {getattr(cfg, what)!r} (supported: {', '.join(ACTIVATIONS)})")
    if cfg.kernel_size % 2 != 1:
        problems.append(f"kernel_size {cfg.kernel_size} (odd sizes only)")
    if cfg.img_channels != 3:
        problems.append(f"img_channels {cfg.img_channels} (gandid's segmenters read RGB images)")
    if cfg.mapping_layers < 1:
        problems.append(f"{cfg.mapping_layers} mapping layers")
    if problems:
        raise CheckpointError(f"{source}: this StyleGAN2-ADA generator cannot be built: " + "; ".join(problems))


# -- configuration inferred from a G_ema state dict ----------------------------------------------
# NVlabs's train.py sets these for every configuration it offers; a state dict does not record them.
STATE_DICT_ASSUMPTIONS = {"conv_clamp": 256, "mapping_lr_multiplier": 0.01, "activation": "lrelu",
                          "mapping_activation": "lrelu"}


def config_as_json(cfg: Config) -> dict:
    config = {k: v for k, v in asdict(cfg).items() if k != "assumed"}
    config["channels"] = {str(k): v for k, v in cfg.channels.items()}
    config["filter_shape"] = list(cfg.filter_shape)
    return config


def config_from_json(config: dict, source: str) -> Config:
    """The Config `gandid convert` stored (:func:`config_as_json`)."""
    try:
        values = dict(config, channels={int(k): int(v) for k, v in config["channels"].items()},
                      filter_shape=tuple(config["filter_shape"]))
        cfg = Config(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: the config in its gandid metadata is not a StyleGAN2-ADA config ({exc}); "
                              "convert the original file again") from None
    _check_config(cfg, source)
    return cfg


def config_from_state_dict(state: dict, source: str) -> Config:
    """The Config of a ``G_ema.state_dict()`` from its tensor shapes; what shapes cannot tell
    (:data:`STATE_DICT_ASSUMPTIONS`) is NVlabs train.py's value, recorded in ``weights_info['assumed']``."""
    def need(key, what):
        if key not in state:
            raise CheckpointError(f"{source}: cannot infer {what}: there is no {key!r}. Not an NVlabs StyleGAN2-ADA "
                                  f"G_ema state dict? Its first keys are {sorted(state)[:8]}")
        return state[key]

    if any(k.startswith("mapping.embed.") for k in state):
        raise CheckpointError(f"{source}: a conditional generator (mapping.embed.*): gandid's generators take only "
                              "a latent z, and class-conditional StyleGAN2-ADA is not supported yet")
    if any(re.match(r"synthesis\.(input|L\d+_)", k) for k in state):
        raise CheckpointError(f"{source}: a StyleGAN3 generator (synthesis.input / synthesis.L0_...): the "
                              "stylegan2-ada plugin reads StyleGAN2-ADA only")
    fc = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    need("mapping.fc0.weight", "z_dim (the mapping network's input size)")
    if fc != list(range(len(fc))):
        raise CheckpointError(f"{source}: cannot infer the mapping network: its layers are fc{fc}, "
                              f"not fc0..fc{len(fc) - 1}")
    resolutions = sorted({int(m.group(1)) for k in state if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    expected_res = [2 ** i for i in range(2, 2 + len(resolutions))]
    if not resolutions or resolutions != expected_res:
        raise CheckpointError(f"{source}: cannot infer the resolution: synthesis blocks are "
                              f"{['b%d' % r for r in resolutions] or 'missing'}, expected b4, b8, ... up to the "
                              "image size")
    need("synthesis.b4.const", "the first block's constant input")
    channels = {res: int(need(f"synthesis.b{res}.conv1.weight", f"the channels at {res}x{res}").shape[0])
                for res in resolutions}
    last = resolutions[-1]
    with_rgb = [res for res in resolutions if f"synthesis.b{res}.torgb.weight" in state]
    if any(f"synthesis.b{res}.skip.weight" in state for res in resolutions):
        architecture = "resnet"
    elif with_rgb == [last]:
        architecture = "orig"
    else:
        architecture = "skip"
    w0 = state["mapping.fc0.weight"]
    cfg = Config(
        z_dim=int(w0.shape[1]), w_dim=int(state[f"mapping.fc{fc[-1]}.weight"].shape[0]), resolution=last,
        channels=channels, mapping_layers=len(fc), mapping_features=int(w0.shape[0]) if len(fc) > 1 else None,
        w_avg="mapping.w_avg" in state,
        img_channels=int(need(f"synthesis.b{last}.torgb.weight", "the image channels").shape[0]),
        architecture=architecture, kernel_size=int(state["synthesis.b4.conv1.weight"].shape[-1]),
        use_noise="synthesis.b4.conv1.noise_const" in state,
        filter_shape=tuple(need("synthesis.b4.resample_filter", "the resampling filter").shape),
        assumed=dict(STATE_DICT_ASSUMPTIONS), **STATE_DICT_ASSUMPTIONS)
    _check_config(cfg, source)
    return cfg
