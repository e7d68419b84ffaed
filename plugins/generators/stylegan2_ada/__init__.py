"""StyleGAN2-ADA generator (NVlabs/stylegan2-ada-pytorch) from its network pickles or G_ema state dicts, on the CPU.

Our own implementation of the math of NVlabs's ``training/networks.py`` (``Generator``: ``MappingNetwork``
+ ``SynthesisNetwork`` of ``SynthesisBlock`` s of ``SynthesisLayer`` / ``ToRGBLayer``), with the
resampling of ``torch_utils/ops/upfirdn2d.py`` and ``conv2d_resample.py`` and the activations of
``torch_utils/ops/bias_act.py``; the module tree has NVlabs's attribute names, so its ``state_dict()``
keys are those of ``G_ema.state_dict()``: ``mapping.fc{i}.weight`` / ``.bias``, ``mapping.w_avg``,
``synthesis.b4.const``, ``synthesis.b{R}.conv{0,1}.{weight, bias, affine.weight, affine.bias,
noise_const, noise_strength, resample_filter}``, ``synthesis.b{R}.torgb.{weight, bias, affine.*}``,
``synthesis.b{R}.resample_filter`` (and ``synthesis.b{R}.skip.*`` for the 'resnet' architecture).

Files: a ``network-snapshot-*.pkl`` (read as data by :mod:`gandid_plugins.generators.nvlabs_pickle`; the
configuration comes from ``G_ema``'s recorded init kwargs) or ``G_ema.state_dict()`` saved with
``torch.save`` (.pt/.pth) or as .safetensors (the configuration is inferred from tensor shapes).

Evaluation is in float32 (or float64 after ``.double()``): blocks NVlabs runs in float16
(``num_fp16_res``) give the same images up to float16 rounding. Noise is each layer's fixed
``noise_const`` buffer (NVlabs's ``noise_mode='const'``), so an image depends only on its latent.
Weight demodulation is computed explicitly (``conv(x * s) * d``, NVlabs's non-fused path): its
coefficients d (N, out) form a norm site of kind ``demod`` that the DID engine records and overrides.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gandid import hookimpl
from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError, UnknownNameError
from gandid.formats import converted_metadata
from gandid.model import LayerInfo, NormSite, find_layer, normal_rows

from .nvlabs_pickle import PersistentObject, describe, load_nvlabs_pickle, sniff

SQRT2 = math.sqrt(2)

# bias_act.py's activation_funcs: (function, def_gain); the ones NVlabs's generator configs use.
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, SQRT2),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), SQRT2),
}


def bias_act(x, b=None, act="linear", gain=None, clamp=None):
    """bias_act.py's reference semantics: add bias along dim 1, activation, times gain, clamp to ±clamp."""
    fn, def_gain = ACTIVATIONS[act]
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    x = fn(x)
    gain = def_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(taps):
    """upfirdn2d.setup_filter: a 1-D tap list becomes its normalised outer product (separable 1-D from 8 taps)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1 and f.numel() < 8:
        f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, pad=(0, 0), gain=1.0):
    """Zero-insertion upsampling, padding (negative crops), FIR filtering with ``f`` (2-D, or 1-D
    separable) scaled by ``gain`` over both axes; upfirdn2d.py's semantics (convolution, not correlation)."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)


def upsample2d(x, f, up=2):
    """upfirdn2d.upsample2d: output ``up`` times the input's size, DC gain kept (filter gain up^2)."""
    fw = f.shape[-1]
    return upfirdn2d(x, f, up=up, pad=((fw + up - 1) // 2, (fw - up) // 2), gain=up * up)


def conv2d_resample(x, w, f=None, up=1, padding=0):
    """conv2d_resample.py for what the generator uses: a plain convolution (up=1, correlation as
    F.conv2d), a 1x1 convolution then upsampling, or a transposed strided convolution then the
    low-pass filter (k x k, up=2); padding is "with respect to the upsampled image", as there."""
    if up == 1:
        return F.conv2d(x, w, padding=padding)
    k, fw = w.shape[-1], f.shape[-1]
    if k == 1 and padding == 0:  # the resnet shortcut: a 1x1 convolution commutes with upsampling
        return upsample2d(F.conv2d(x, w), f, up)
    p0 = padding + (fw + up - 1) // 2 - (k - 1)
    p1 = padding + (fw - up) // 2 - (k - up)
    pt = max(min(-p0, -p1), 0)
    x = F.conv_transpose2d(x, w.transpose(0, 1), stride=up, padding=pt)
    return upfirdn2d(x, f, pad=(p0 + pt, p1 + pt), gain=up * up)


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    """Equalized-learning-rate linear layer: weight stored divided by lr_multiplier, scaled at run time."""

    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        return bias_act(x @ (self.weight * self.weight_gain).t(), self.bias * self.bias_gain, self.activation)


class MappingNetwork(nn.Module):
    def __init__(self, cfg: "Config"):
        super().__init__()
        features = [cfg.z_dim] + [cfg.mapping_features] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        self.num_layers = cfg.mapping_layers
        for idx in range(cfg.mapping_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], cfg.mapping_activation,
                                                          cfg.mapping_lr_multiplier))
        if cfg.w_avg:
            self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z):
        x = normalize_2nd_moment(z)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (upsampling in ``conv0``), fixed noise, bias, activation, clamp.

    Its demodulation coefficients d (N, out) are a 'demod' norm site: ``override`` is None or a
    callable d -> d' used instead of the computed ones (set only through gandid.hooks.norm_overrides).
    """

    def __init__(self, in_channels, out_channels, cfg: "Config", resolution, up=1):
        super().__init__()
        self.resolution, self.up = resolution, up
        self.activation, self.conv_clamp = cfg.activation, cfg.conv_clamp
        self.act_gain = ACTIVATIONS[cfg.activation][1]
        self.padding = cfg.kernel_size // 2
        self.register_buffer("resample_filter", torch.zeros(cfg.filter_shape))
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, cfg.kernel_size, cfg.kernel_size))
        self.use_noise = cfg.use_noise
        if cfg.use_noise:
            self.register_buffer("noise_const", torch.zeros(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_mode = "const"
        self.override = None

    def demod_coefficients(self, styles):
        """networks.py's dcoefs: 1 / sqrt(sum over (in, k, k) of (weight * style)^2 + 1e-8), (N, out)."""
        w = self.weight.unsqueeze(0) * styles.reshape(len(styles), 1, -1, 1, 1)
        return (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()

    def forward(self, x, w, gain=1.0):
        styles = self.affine(w)  # (N, in)
        d = self.demod_coefficients(styles)
        if self.override is not None:
            d = self.override(d)
        x = conv2d_resample(x * styles.reshape(len(styles), -1, 1, 1), self.weight, self.resample_filter,
                            up=self.up, padding=self.padding)
        x = x * d.reshape(len(d), -1, 1, 1)
        if self.use_noise and self.noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, bias, clamp."""

    def __init__(self, in_channels, out_channels, cfg: "Config"):
        super().__init__()
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = F.conv2d(x * styles.reshape(len(styles), -1, 1, 1), self.weight)
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp)


class SkipLayer(nn.Module):
    """The 'resnet' architecture's shortcut: networks.py's Conv2dLayer(in, out, 1, bias=False, up=2)."""

    def __init__(self, in_channels, out_channels, cfg: "Config"):
        super().__init__()
        self.register_buffer("resample_filter", torch.zeros(cfg.filter_shape))
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, gain=1.0):
        return conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, up=2) * gain


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels, out_channels, cfg: "Config", resolution, is_last):
        super().__init__()
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.architecture = cfg.architecture
        self.register_buffer("resample_filter", torch.zeros(cfg.filter_shape))
        if in_channels == 0:
            self.const = nn.Parameter(torch.zeros(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, cfg, resolution, up=2)
        self.conv1 = SynthesisLayer(out_channels, out_channels, cfg, resolution)
        if is_last or cfg.architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, cfg.img_channels, cfg)
        if in_channels != 0 and cfg.architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels, cfg)

    def forward(self, x, img, w, start: str | None = None, features=None):
        """One block (networks.py's SynthesisBlock.forward with every ws row equal to w). ``start`` =
        'conv0' or 'conv1' continues from that layer's output ``features`` (x is then the block's input,
        needed only by the resnet shortcut)."""
        resnet = self.in_channels != 0 and self.architecture == "resnet"
        y = self.skip(x, gain=math.sqrt(0.5)) if resnet else None
        if start is None:
            if self.in_channels == 0:
                x = self.const.unsqueeze(0).repeat(len(w), 1, 1, 1)
            else:
                x = self.conv0(x, w)
        elif start == "conv0":
            x = features
        if start != "conv1":
            x = self.conv1(x, w, gain=math.sqrt(0.5)) if resnet else self.conv1(x, w)
        else:
            x = features
        if resnet:
            x = y + x
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if hasattr(self, "torgb"):
            rgb = self.torgb(x, w)
            img = rgb if img is None else img + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: "Config"):
        super().__init__()
        self.resolutions = sorted(cfg.channels)
        for res in self.resolutions:
            in_channels = cfg.channels[res // 2] if res > 4 else 0
            setattr(self, f"b{res}", SynthesisBlock(in_channels, cfg.channels[res], cfg, res, res == cfg.resolution))

    def blocks(self):
        return [(res, getattr(self, f"b{res}")) for res in self.resolutions]


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


class StyleGAN2ADAGenerator(nn.Module):
    """NVlabs's StyleGAN2-ADA Generator behind gandid's Generator protocol (one w for every layer, as
    generate.py without style mixing; ``truncation`` pulls w toward ``mapping.w_avg``, every layer)."""

    def __init__(self, cfg: Config, truncation: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)
        self.truncation = truncation
        self.z_dim, self.resolution = cfg.z_dim, cfg.resolution
        self.layers, self.norm_sites, self._layer_modules = [], [], {}
        previous = None
        for res, block in self.synthesis.blocks():
            for conv in ("conv0", "conv1"):
                if hasattr(block, conv):
                    name = f"b{res}.{conv}"
                    self.layers.append(LayerInfo(name, cfg.channels[res], (res, res)))
                    # the site's layer is the one whose output the demodulated conv reads, as plugins/generators/stylegan2.py
                    self.norm_sites.append(NormSite(f"{name}.demod", "demod", previous))
                    self._layer_modules[name] = getattr(block, conv)
                    previous = name
        names = [info.name for info in self.layers]
        self.default_layer = names[min(len(names) - 1, 4)]

    def checkpoint(self) -> tuple[dict, dict]:
        """``G_ema.state_dict()`` and the whole config, which `gandid convert` keeps in the file's metadata
        (shapes alone cannot tell conv_clamp, the mapping's learning rate, the activations)."""
        return self.state_dict(), config_as_json(self.cfg)

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim).to(self.synthesis.b4.const.device)

    def map_z(self, z):
        """w (N, w_dim) for latents z, truncated toward ``mapping.w_avg`` when ``truncation`` < 1."""
        w = self.mapping(z.to(self.synthesis.b4.const.dtype))
        if self.truncation != 1:
            w = self.mapping.w_avg + self.truncation * (w - self.mapping.w_avg)
        return w

    def layer_module(self, name):
        find_layer(self, name)
        return self._layer_modules[name]

    def norm_module(self, site):
        if site.endswith(".demod") and site[: -len(".demod")] in self._layer_modules:
            return self._layer_modules[site[: -len(".demod")]]
        raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])

    def synthesize(self, w, start: str | None = None, features=None):
        """Images (N, C, R, R) before clamping. ``start`` = a layer name: continue from its output
        ``features``; blocks before it run only where the rest needs them (the RGB skip path for
        'skip', the block input of the resnet shortcut)."""
        start_res, start_conv = (None, None) if start is None else (int(start.split(".")[0][1:]), start.split(".")[1])
        needs_prefix = start is not None and self.cfg.architecture in ("skip", "resnet")
        x = img = None
        for res, block in self.synthesis.blocks():
            if start_res is not None and res < start_res:
                if needs_prefix:
                    x, img = block(x, img, w)
                continue
            if res == start_res:
                x, img = block(x, img, w, start=start_conv, features=features)
            else:
                x, img = block(x, img, w)
        return img

    def images(self, z):
        """Unclamped images, NVlabs's Generator output for truncation_psi = ``truncation``, noise_mode='const'."""
        return self.synthesize(self.map_z(z))

    def forward(self, z):
        return self.images(z).clamp(-1, 1)

    def forward_from(self, layer, features, z):
        """The rest of the network from layer ``layer``'s output (rows matching z)."""
        find_layer(self, layer)
        return self.synthesize(self.map_z(z), start=layer, features=features).clamp(-1, 1)

    @contextlib.contextmanager
    def noise_draws(self, draw: int):
        """Within the block every layer's noise is a fresh standard normal map determined by ``draw``
        instead of its ``noise_const`` (NVlabs's noise_mode='random', made reproducible): what the
        ``noise`` analysis varies."""
        layers = [m for m in self.synthesis.modules() if isinstance(m, SynthesisLayer) and m.use_noise]
        saved = [m.noise_const.clone() for m in layers]
        g = torch.Generator().manual_seed(int(draw))
        try:
            for m in layers:
                m.noise_const.copy_(torch.randn(m.noise_const.shape, generator=g))
            yield
        finally:
            for m, noise in zip(layers, saved):
                m.noise_const.copy_(noise)

    def set_noise_mode(self, mode: str):
        for module in self._layer_modules.values():
            module.noise_mode = mode

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict, cfg: Config, truncation=1.0, source="state dict", info=None):
        gen = cls(cfg, truncation)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        check_state_dict(state, expected, f"StyleGAN2-ADA G_ema ({source})")
        if truncation != 1 and not cfg.w_avg:
            raise CheckpointError(f"{source}: truncation {truncation} needs mapping.w_avg, which this generator was "
                                  "built without (w_avg_beta=None); use truncation = 1")
        state, dtypes = to_float(state)
        gen.load_state_dict(state)
        gen.weights_info = {"file": source, **(info or {}), **dtypes, "config": config_as_json(cfg)}
        if cfg.assumed:
            gen.weights_info["assumed"] = dict(cfg.assumed)
        return gen.eval().requires_grad_(False)


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


# -- the factory ---------------------------------------------------------------------------------
def _generator_from_pickle(path: Path, truncation: float) -> StyleGAN2ADAGenerator:
    data = load_nvlabs_pickle(path)
    if isinstance(data, PersistentObject):  # pickle.dump(G_ema) on its own
        g, where = data, "the pickle"
    elif isinstance(data, dict) and "G_ema" in data:
        g, where = data["G_ema"], "G_ema"
    else:
        raise CheckpointError(f"{path}: no 'G_ema' in this pickle: it holds {describe(data)}. gandid reads the "
                              "network-snapshot-*.pkl files NVlabs's train.py writes ({'G', 'D', 'G_ema', ...})")
    if not isinstance(g, PersistentObject) or g.class_name != "Generator":
        raise CheckpointError(f"{path}: {where} is {describe(g)}, not a persistent Generator")
    synthesis = g.modules.get("synthesis")
    if synthesis is not None and ("input" in synthesis.modules
                                  or any(re.match(r"L\d+_", n) for n in synthesis.modules)):
        raise CheckpointError(f"{path}: a StyleGAN3 generator (synthesis.input, synthesis.L0_...): the stylegan2-ada "
                              "plugin reads StyleGAN2-ADA only")
    cfg = config_from_kwargs(g, str(path))
    info = {"format": "NVlabs network pickle", "class": g.class_name, "source_sha256": g.source_sha256}
    return StyleGAN2ADAGenerator.from_state_dict(g.state_dict(), cfg, truncation, str(path), info)


def _generator_from_state_dict(path: Path, truncation: float) -> StyleGAN2ADAGenerator:
    try:
        state = load_state_dict_file(path)
    except CheckpointError as exc:
        if "torch_utils.persistence" in str(exc):
            raise CheckpointError(f"{exc}\nThis is a torch.save of an NVlabs network object: give gandid the original "
                                  "network-snapshot-*.pkl, or save G_ema.state_dict() instead.") from None
        raise
    if isinstance(state.get("G_ema"), dict):
        state = state["G_ema"]
    converted = converted_metadata(path) if path.suffix == ".safetensors" else None
    if converted is not None and converted.get("config"):
        cfg = config_from_json(converted["config"], str(path))
        return StyleGAN2ADAGenerator.from_state_dict(state, cfg, truncation, str(path),
                                                     {"format": f"converted by gandid from {converted.get('source')}"})
    cfg = config_from_state_dict(state, str(path))
    return StyleGAN2ADAGenerator.from_state_dict(state, cfg, truncation, str(path), {"format": "G_ema state dict"})


def stylegan2_ada(weights: str | None = None, truncation: float = 1.0, noise_mode: str = "const"
                  ) -> StyleGAN2ADAGenerator:
    """Factory for ``--generator stylegan2-ada --weights FILE``: an NVlabs ``network-snapshot-*.pkl``
    (read as data, never run) or ``G_ema.state_dict()`` as .pt/.pth/.safetensors. ``truncation`` in
    (0, 1]; ``noise_mode`` 'const' (each layer's fixed noise) or 'none'."""
    if weights is None:
        raise CheckpointError("generator 'stylegan2-ada' needs a weights file: --weights network-snapshot-XXXXXX.pkl")
    if not 0 < truncation <= 1:
        raise CheckpointError(f"stylegan2-ada: truncation must be in (0, 1], got {truncation}")
    if noise_mode not in ("const", "none"):
        raise CheckpointError(f"stylegan2-ada: noise_mode must be 'const' or 'none', got {noise_mode!r} ('random' "
                              "would make an image depend on more than its latent)")
    path = Path(weights)
    if path.is_file() and path.suffix != ".safetensors" and sniff(path) not in ("zip", "torch-legacy"):
        gen = _generator_from_pickle(path, truncation)  # also says "unreadable" for random bytes
    else:
        gen = _generator_from_state_dict(path, truncation)
    gen.set_noise_mode(noise_mode)
    return gen


def recognise(peek) -> str | None:
    """An NVlabs network pickle (read by our data-only reader: the loader checks it), or a G_ema state dict."""
    if peek.kind == "pickle":
        return "a pickle that is not a tensor file: an NVlabs network snapshot, read as data"
    for inside in (None, "G_ema"):
        if peek.has("mapping.fc0.weight", "synthesis.b4.const", inside=inside):
            return "an NVlabs StyleGAN2-ADA G_ema state dict"
    return None


@hookimpl
def gandid_register_generators(register):
    register("stylegan2-ada", stylegan2_ada, recognise=recognise,
             description="StyleGAN2-ADA (NVlabs network-snapshot .pkl read without running it, or a G_ema state dict)")
