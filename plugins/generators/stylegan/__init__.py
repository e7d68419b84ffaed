"""StyleGAN (v1) generators, on the CPU or a GPU, in two checkpoint layouts.

**rosinality's layout.** Facts read from rosinality/style-based-gan-pytorch, ``model.py``
(``StyledGenerator``, ``Generator``, ``StyledConvBlock``, ``AdaptiveInstanceNorm``, ``EqualLR``,
``FusedUpsample``, ``Blur``), ``generate.py`` (``g_running``, ``step = log2(size) - 2``, truncation with
``mean_style``) and ``train.py`` (what a checkpoint holds):

- a checkpoint is ``{"generator", "discriminator", "g_optimizer", "d_optimizer", "g_running"}`` (training
  checkpoints, also the README's ``stylegan-256px-new.model``) or a bare ``g_running`` state dict
  (train.py's ``NNNNNN.model``, the README's old running-average files); ``g_running`` is the moving
  average that ``generate.py`` samples from, so it is preferred here;
- equalised learning rate stores ``<name>_orig`` and multiplies it by ``sqrt(2 / fan_in)`` with
  ``fan_in = weight.size(1) * weight[0][0].numel()``: in * k * k for convs, ``in`` for linears and
  ``C`` for the noise weights (1, C, 1, 1);
- mapping ``style.{1,3,..,2n-1}.linear.weight_orig`` (D, D) / ``.bias`` after a PixelNorm on z, each
  followed by LeakyReLU(0.2) (no gain, no lr multiplier);
- ``generator.progression.{i}`` for resolution 4 * 2**i: ``conv1.input`` (1, C, 4, 4) at i = 0;
  else nearest 2x upsampling, ``conv1.1.conv.weight_orig`` (out, in, 3, 3) / ``.bias``, then a 3x3
  blur ``conv1.2.weight`` / ``.weight_flip`` (C, 1, 3, 3) buffers; or, in the "fused" blocks
  (128 px and up in rosinality's model), ``conv1.0.weight`` (in, out, 3, 3) / ``.bias`` (a stride-2
  transposed conv whose kernel is padded to 4x4 and averaged over the four shifts, multiplier
  sqrt(2 / (in * 9)), padding 1) and blur ``conv1.1.*``; then per half j in (1, 2): ``noise{j}.weight_orig``
  (1, C, 1, 1), LeakyReLU(0.2), ``adain{j}``: ``nn.InstanceNorm2d`` (eps 1e-5, no affine) then
  ``gamma * x + beta`` with ``(gamma, beta) = adain{j}.style.linear`` (2C, D) applied to w;
  ``conv2.conv.weight_orig`` (C, C, 3, 3) between the halves; the two halves of a block add the same
  noise map (N, 1, r, r);
- ``generator.to_rgb.{i}.conv.weight_orig`` (3, C, 1, 1) / ``.bias``; the image at step s is
  ``to_rgb[s]`` of block s's output (``alpha = 1``, no fade-in).

**The official network's ``g_all`` layout** (GANSpace's ``stylegan_<class>_<res>.pt``, lernapparat's
``karras2019stylegan-ffhq-1024x1024.for_g_all.pt``). Facts read from harskish/ganspace,
``models/stylegan/model.py`` (``StyleGAN_G``: ``g_mapping`` + ``g_synthesis`` in an ``nn.Sequential``,
``MyLinear``, ``MyConv2d``, ``NoiseLayer``, ``StyleMod``, ``BlurLayer``, ``LayerEpilogue``,
``InputBlock``, ``GSynthesisBlock``, ``Truncation``, ``export_from_tf``) and ``models/wrappers.py``
(``StyleGAN.load_model``, ``set_noise_seed``), checked against NVlabs/stylegan,
``training/networks_stylegan.py`` (``G_style``, ``G_mapping``, ``G_synthesis``, ``instance_norm``):

- the file is ``StyleGAN_G.state_dict()``: the official TensorFlow ``Gs`` trainables renamed, dense
  weights transposed to (out, in), conv weights to (out, in, k, k), plus the blur kernels (buffers);
  the ``ToRGB_lod{1..}`` layers of progressive growing are dropped, so a file runs at one resolution;
- equalised learning rate: a weight is multiplied by ``gain / sqrt(fan_in) * lrmul`` and a bias by
  ``lrmul``; mapping ``g_mapping.dense{0..7}.weight`` (512, 512) / ``.bias``: gain sqrt(2), lrmul 0.01,
  after a pixel norm (eps 1e-8) on z, each followed by LeakyReLU(0.2); the output w is broadcast to
  the synthesis's 2 * blocks layers;
- truncation (``G_style`` / ``Truncation``): w_l = avg + psi * (w - avg) for layers l < cutoff (8),
  w_l = w above; ``avg`` is ``dlatent_avg``, a training-time variable the export leaves out
  (``Truncation`` with its ``avg_latent`` buffer is commented out of ``StyleGAN_G``); a file that has
  ``truncation.avg_latent`` (an ``nn.Sequential`` with the ``Truncation`` module) provides it;
- ``g_synthesis.blocks.4x4``: ``const`` (1, C, 4, 4) + ``bias`` (C), epilogue ``epi1``, ``conv``
  (C, C, 3, 3) / ``.bias``, epilogue ``epi2``; ``g_synthesis.blocks.RxR`` (R = 8 .. resolution):
  ``conv0_up``: nearest 2x upsampling then a 3x3 conv without bias or, where R >= 128 (``fused_scale
  = 'auto'``), a stride-2 transposed conv (padding 1) whose 3x3 kernel is padded to 4x4 and *summed*
  over the four shifts; then the blur ``conv0_up.intermediate.kernel`` (1, 1, 3, 3) = [1 2 1]^2 / 16,
  depthwise, padding 1, *then* the bias; ``epi1``; ``conv1`` (C, C, 3, 3) / ``.bias``; ``epi2``; conv
  gain sqrt(2), lrmul 1;
- ``LayerEpilogue`` (``epi1`` reads w_{2b}, ``epi2`` w_{2b+1}): ``top_epi.noise.weight`` (C,) times a
  noise map (N, 1, R, R) added (no weight scaling), LeakyReLU(0.2), instance norm, then ``style_mod``:
  ``style = style_mod.lin(w_l)`` (2C, D; gain 1, lrmul 1), ``x * (style[:C] + 1) + style[C:]``; no
  pixel norm. Official StyleGAN's instance norm has eps 1e-8; the port's ``nn.InstanceNorm2d`` has
  1e-5 (``instance_eps`` chooses);
- ``g_synthesis.torgb.weight`` (3, C, 1, 1) / ``.bias``, gain 1; images in about [-1, 1].

What gandid exposes, in both layouts: layer ``R.conv1`` / ``R.conv2`` (R = the block's resolution) is
the LeakyReLU output that AdaIN ``R.adain1`` / ``R.adain2`` reads, and each AdaIN's instance norm is a
norm site of kind ``instancenorm`` whose per-sample, per-channel statistics the DID engine records,
borrows and replays (:class:`gandid.model.InstanceNorm`); the mapping network's pixel norm is site
``style.0``. Noise: the originals draw fresh noise on every call; here (``noise="latent"``) a sample's
noise map is drawn from a generator seeded with a hash of the sample's latent (its float32 bytes) and
the map's index (the block in rosinality's layout, where both halves of a block share a map; the
layer in ``g_all``, where each of the 2 * blocks layers has its own, as in the official network), so
an image depends only on its latent (and sample i of seed s gets the same noise in any batch and any
process), and the four DID arms share their noise. ``noise="const"``: fixed maps shared by every
sample (rosinality: one per block, seeded with the block index; ``g_all``: GANSpace's
``set_noise_seed(0)``, ``randn(1, 1, R, R)`` after seeding 0, the same for both layers of a block);
``noise="zero"``: none.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gandid import hookimpl
from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError, UnknownNameError
from gandid.model import InstanceNorm, LayerInfo, NormSite, PixelNorm, normal_rows

NOISE_MODES = ("latent", "const", "zero")


class _Weights(nn.Module):
    """Holds an equal-lr weight as rosinality stores it (``weight_orig``) and its bias."""

    def __init__(self, *shape):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(*shape))
        self.bias = nn.Parameter(torch.zeros(shape[0]))

    def weight(self):
        w = self.weight_orig
        return w * math.sqrt(2 / (w.shape[1] * w[0][0].numel()))  # EqualLR.compute_weight's fan-in


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear = _Weights(out_dim, in_dim)

    def forward(self, x):
        return F.linear(x, self.linear.weight(), self.linear.bias)


class EqualConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, padding=0):
        super().__init__()
        self.conv = _Weights(out_channel, in_channel, kernel_size, kernel_size)
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.conv.weight(), self.conv.bias, padding=self.padding)


class Blur(nn.Module):
    """The checkpoint's 3x3 [1 2 1]^2 / 16 kernel (a buffer), depthwise, padding 1."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("weight", torch.zeros(channels, 1, 3, 3))
        self.register_buffer("weight_flip", torch.zeros(channels, 1, 3, 3))  # used by rosinality's backward only

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), padding=1, groups=x.shape[1])


class FusedUpsample(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, padding=1):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(in_channel, out_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel))
        self.multiplier = math.sqrt(2 / (in_channel * kernel_size * kernel_size))
        self.pad = padding

    def forward(self, x):
        w = F.pad(self.weight * self.multiplier, [1, 1, 1, 1])
        # the k x k kernel becomes (k+1) x (k+1): the mean of its four one-pixel shifts
        w = (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) / 4
        return F.conv_transpose2d(x, w, self.bias, stride=2, padding=self.pad)


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class ConstantInput(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.input = nn.Parameter(torch.zeros(1, channels, 4, 4))

    def forward(self, n):
        return self.input.repeat(n, 1, 1, 1)


class NoiseInjection(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x, noise):
        # equal lr: fan_in = weight.size(1) * weight[0][0].numel() = C for a (1, C, 1, 1) weight
        return x + self.weight_orig * math.sqrt(2 / self.weight_orig.shape[1]) * noise


class AdaIN(nn.Module):
    """Instance norm (a gandid norm site) then the style's per-channel scale and bias."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.norm = InstanceNorm(eps=1e-5)  # nn.InstanceNorm2d's default, as rosinality uses it
        self.style = EqualLinear(style_dim, 2 * channels)

    def forward(self, x, w):
        gamma, beta = self.style(w)[:, :, None, None].chunk(2, 1)
        return gamma * self.norm(x) + beta


class StyledConvBlock(nn.Module):
    """One resolution: (upsample) conv, noise, LeakyReLU, AdaIN; conv, noise, LeakyReLU, AdaIN."""

    def __init__(self, in_channel, out_channel, style_dim, initial=False, fused=False):
        super().__init__()
        if initial:
            self.conv1 = ConstantInput(in_channel)
        elif fused:
            self.conv1 = nn.Sequential(FusedUpsample(in_channel, out_channel, 3, padding=1), Blur(out_channel))
        else:
            self.conv1 = nn.Sequential(Upsample(), EqualConv2d(in_channel, out_channel, 3, padding=1),
                                       Blur(out_channel))
        self.initial = initial
        self.noise1, self.adain1 = NoiseInjection(out_channel), AdaIN(out_channel, style_dim)
        self.lrelu1 = nn.LeakyReLU(0.2)
        self.conv2 = EqualConv2d(out_channel, out_channel, 3, padding=1)
        self.noise2, self.adain2 = NoiseInjection(out_channel), AdaIN(out_channel, style_dim)
        self.lrelu2 = nn.LeakyReLU(0.2)

    def forward(self, x, w, noise, resume_at=0):
        """``resume_at`` 0: from the previous block's output x (for the first block, x is the batch
        size); 1: x is this block's ``conv1`` layer (the LeakyReLU output before adain1); 2: ``conv2``."""
        if resume_at == 0:
            out = self.conv1(x)
            x = self.lrelu1(self.noise1(out, noise))
        if resume_at <= 1:
            x = self.lrelu2(self.noise2(self.conv2(self.adain1(x, w)), noise))
        return self.adain2(x, w)


class Synthesis(nn.Module):
    def __init__(self, channels, fused, style_dim):
        super().__init__()
        self.progression = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for i, c in enumerate(channels):
            self.progression.append(StyledConvBlock(channels[i - 1] if i else c, c, style_dim, initial=i == 0,
                                                    fused=fused[i]))
            self.to_rgb.append(EqualConv2d(c, 3, 1))


class _StyleGANBase(nn.Module):
    """What both layouts share: layer and norm-site names, the Generator protocol around ``_run``, and
    noise seeded by each latent. A subclass provides ``_param`` (a weight whose device and dtype the
    features take), ``_pixel_norm``, ``_activation(block, half)``, ``_instance_norm(block, half)`` and
    ``_run(z, start_block, resume_at, x)``."""

    def _name_sites(self, channels, blocks):
        self.layers, self.norm_sites = [], [NormSite("style.0", "pixelnorm", None)]
        self._where = {}  # layer name -> (block, half)
        for i in range(blocks):
            r = 4 * 2 ** i
            for half in (1, 2):
                name = f"{r}.conv{half}"
                self.layers.append(LayerInfo(name, channels[i], (r, r)))
                self.norm_sites.append(NormSite(f"{r}.adain{half}", "instancenorm", name))
                self._where[name] = (i, half)
        names = [l.name for l in self.layers]
        self.default_layer = names[min(len(names) - 1, 5)]

    _draw: int | None = None  # set inside noise_draws()

    @contextlib.contextmanager
    def noise_draws(self, draw: int):
        """Within the block every noise map is drawn afresh, from ``draw`` and each latent (as
        ``noise="latent"`` draws them, another stream): what the ``noise`` analysis varies."""
        saved = (self.noise_mode, self._draw)
        self.noise_mode, self._draw = "latent", int(draw)
        try:
            yield
        finally:
            self.noise_mode, self._draw = saved

    def _latent_noise(self, z: torch.Tensor, stream: bytes, r: int) -> torch.Tensor:
        """(N, 1, r, r): row i drawn from a generator seeded with a hash of z[i]'s float32 bytes and
        ``stream`` (and the noise draw, inside :meth:`noise_draws`), so it is a function of that row alone."""
        if self._draw is not None:
            stream = stream + b"draw" + self._draw.to_bytes(8, "little", signed=True)
        keys = [row.tobytes() for row in z.detach().float().cpu().contiguous().numpy()]
        drawn: dict[bytes, torch.Tensor] = {}
        for key in keys:  # the DID's four arms repeat each latent: draw each distinct latent once
            if key not in drawn:
                digest = hashlib.blake2b(key + stream, digest_size=8).digest()
                g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))
                drawn[key] = torch.randn(1, 1, r, r, generator=g)
        return torch.cat([drawn[key] for key in keys]).to(device=z.device, dtype=self._param().dtype)

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim).to(self._param().device)

    def layer_module(self, name):
        if name not in self._where:
            raise UnknownNameError("layer", name, list(self._where))
        return self._activation(*self._where[name])

    def norm_module(self, site):
        if site == "style.0":
            return self._pixel_norm()
        found = re.fullmatch(r"(\d+)\.adain([12])", site)
        layer = f"{found.group(1)}.conv{found.group(2)}" if found else None
        if layer not in self._where:
            raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])
        return self._instance_norm(*self._where[layer])

    def forward(self, z):
        return self._run(z)

    def forward_from(self, layer, features, z):
        if layer not in self._where:
            raise UnknownNameError("layer", layer, list(self._where))
        i, half = self._where[layer]
        return self._run(z, i, half, features)


class StyleGANGenerator(_StyleGANBase):
    """rosinality's StyledGenerator behind gandid's Generator protocol, at a fixed progressive step.

    ``channels[i]``: depth of the block at 4 * 2**i; ``fused[i]``: whether block i upsamples with the
    fused transposed conv; ``step``: the last block used (resolution 4 * 2**step).
    """

    def __init__(self, channels, fused, style_dim, n_mlp, step=None, truncation=1.0, noise="latent"):
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"stylegan: noise must be one of {NOISE_MODES}, got {noise!r}")
        layers = [PixelNorm()]
        for _ in range(n_mlp):
            layers += [EqualLinear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        self.style = nn.Sequential(*layers)
        self.generator = Synthesis(list(channels), list(fused), style_dim)
        self.register_buffer("mean_style", torch.zeros(style_dim), persistent=False)
        self.step = len(channels) - 1 if step is None else step
        self.truncation, self.noise_mode = truncation, noise
        self.z_dim, self.resolution = style_dim, 4 * 2 ** self.step
        self._name_sites(channels, self.step + 1)

    def _param(self):
        return self.generator.to_rgb[0].conv.weight_orig

    def _pixel_norm(self):
        return self.style[0]

    def _activation(self, block, half):
        return getattr(self.generator.progression[block], f"lrelu{half}")

    def _instance_norm(self, block, half):
        return getattr(self.generator.progression[block], f"adain{half}").norm

    # -- noise --------------------------------------------------------------------------------
    def noise_map(self, z: torch.Tensor, block: int) -> torch.Tensor:
        """Block ``block``'s noise (N, 1, r, r): a function of each row of z only (see the module
        docstring). Each block has its own stream, so a pass that stops early draws no more than it uses."""
        n, r = len(z), 4 * 2 ** block
        dev, dtype = z.device, self._param().dtype
        if self.noise_mode == "zero":
            return torch.zeros(n, 1, r, r, device=dev, dtype=dtype)
        if self.noise_mode == "const":
            g = torch.Generator().manual_seed(block)
            return torch.randn(1, 1, r, r, generator=g).to(device=dev, dtype=dtype).expand(n, 1, r, r)
        return self._latent_noise(z, block.to_bytes(2, "little"), r)

    def noise_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Every block's noise, (N, 1, r, r) for r = 4, 8, ..., resolution."""
        return [self.noise_map(z, i) for i in range(self.step + 1)]

    def mapping(self, z):
        w = self.style(z)
        if self.truncation < 1:  # generate.py: mean_style + style_weight * (style - mean_style)
            w = self.mean_style + self.truncation * (w - self.mean_style)
        return w

    def _run(self, z, start_block=0, resume_at=0, x=None):
        w = self.mapping(z)
        out = len(z) if x is None else x
        for i in range(start_block, self.step + 1):
            out = self.generator.progression[i](out, w, self.noise_map(z, i), resume_at if i == start_block else 0)
        return self.generator.to_rgb[self.step](out).clamp(-1, 1)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict, resolution: int | None = None, truncation: float = 1.0,
                        noise: str = "latent", source: str = "state dict") -> "StyleGANGenerator":
        what = f"StyleGAN generator ({source})"
        prefix = "generator.progression."
        if "style.1.linear.weight_orig" not in state or f"{prefix}0.conv1.input" not in state:
            raise CheckpointError(f"{source}: not a rosinality style-based-gan-pytorch StyledGenerator (no "
                                  f"'style.1.linear.weight_orig' / '{prefix}0.conv1.input'); its first keys are "
                                  f"{sorted(state)[:8]}.")
        style_dim = _dims(state, "style.1.linear.weight_orig", 2, what)[1]
        n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.linear\.weight_orig", k)])
        blocks = 1 + max(int(m.group(1)) for m in (re.match(re.escape(prefix) + r"(\d+)\.", k) for k in state) if m)
        channels, fused = [], []
        for i in range(blocks):
            key = f"{prefix}{i}.adain1.style.linear.bias"  # (2C,): gamma and beta of block i's C channels
            if key not in state:
                raise CheckpointError(f"{what}: cannot tell block {i}'s channels: missing keys (1): {key}")
            channels.append(_dims(state, key, 1, what)[0] // 2)
            fused.append(f"{prefix}{i}.conv1.0.weight" in state)
        step, chosen = _choose_step(state, blocks, resolution, source)
        gen = cls(channels, fused, style_dim, n_mlp, step, truncation, noise)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        check_state_dict(state, expected, what)
        state, dtypes = to_float(state)
        gen.load_state_dict(state, strict=True)
        gen.weights_info = {"file": source, **dtypes, "layout": "rosinality", "resolution": gen.resolution,
                            "resolution_from": chosen, "noise": noise}
        if truncation < 1:  # generate.py averages style(z) over 10 x 1024 random latents
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                gen.mean_style.copy_(gen.style(torch.randn(10 * 1024, style_dim, generator=g)).mean(0))
        return gen.eval()


def _choose_step(state, blocks, resolution, source):
    """The progressive step to run at, and how it was chosen.

    rosinality's checkpoints hold all nine blocks (4..1024 px) whatever resolution training reached; a
    block that never trained keeps its initial noise weights, which are zeros (NoiseInjection), while
    trained ones are not. So without ``resolution`` the step is the last block with non-zero noise
    weights.
    """
    if resolution is not None:
        step = int(round(math.log2(resolution))) - 2 if resolution > 0 else -1
        if resolution != 4 * 2 ** max(step, 0) or not 0 <= step < blocks:
            raise CheckpointError(f"stylegan: resolution must be one of {[4 * 2 ** i for i in range(blocks)]} "
                                  f"for {source}, got {resolution}")
        return step, "option"
    trained = [i for i in range(blocks) if any(
        float(state[f"generator.progression.{i}.noise{h}.weight_orig"].abs().max()) > 0
        for h in (1, 2) if f"generator.progression.{i}.noise{h}.weight_orig" in state)]
    if not trained:
        return blocks - 1, "all blocks (no block has trained noise weights; give resolution= to choose)"
    return max(trained), "last block with trained (non-zero) noise weights"


def _dims(state, key, ndim, what):
    """The shape of ``state[key]``, which must be a tensor of ``ndim`` dimensions (the shape tells a size)."""
    value = state[key]
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{what}: {key} must be a {ndim}-d tensor, the file has {shape}")
    return tuple(value.shape)


# -- the official network's g_all layout (harskish/ganspace models/stylegan/model.py) -------------

SQRT2 = math.sqrt(2)
G_ALL_FUSED_FROM = 128  # fused_scale='auto': upscale2d_conv2d fuses where the output is 128 px or more
G_ALL_TRUNCATION_CUTOFF = 8  # G_style's truncation_cutoff and the port's Truncation(max_layer=8)


class _ScaledDense(nn.Module):
    """The port's ``MyLinear`` with use_wscale: weight (out, in) times gain / sqrt(in) * lrmul, bias
    times lrmul."""

    def __init__(self, in_dim, out_dim, gain, lrmul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.w_mul, self.b_mul = gain / math.sqrt(in_dim) * lrmul, lrmul

    def forward(self, x):
        return F.linear(x, self.weight * self.w_mul, self.bias * self.b_mul if self.b_mul != 1 else self.bias)


class _BlurKernel(nn.Module):
    """The port's ``BlurLayer``: the stored (1, 1, 3, 3) kernel, depthwise, padding 1."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", torch.zeros(1, 1, 3, 3))

    def forward(self, x):
        c = x.shape[1]
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, -1, -1, -1), padding=1, groups=c)


class _ScaledConv(nn.Module):
    """The port's ``MyConv2d`` with use_wscale: weight (out, in, k, k) times gain / sqrt(in * k * k).

    ``up`` None: a plain conv with bias; "nearest": 2x nearest upsampling then the conv; "fused": the
    official fused upscale (the kernel padded to (k+1) x (k+1) and summed over its four one-pixel
    shifts, a stride-2 transposed conv). Upsampling convs blur (``intermediate``) and add the bias after.
    """

    def __init__(self, in_channels, out_channels, kernel_size, gain, up=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.w_mul, self.up = gain / math.sqrt(in_channels * kernel_size ** 2), up
        if up is not None:
            self.intermediate = _BlurKernel()

    def forward(self, x):
        w = self.weight * self.w_mul
        pad = w.shape[-1] // 2
        if self.up is None:
            return F.conv2d(x, w, self.bias, padding=pad)
        if self.up == "fused":
            w = F.pad(w.transpose(0, 1), [1, 1, 1, 1])  # (in, out, k + 2, k + 2) for conv_transpose2d
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.shape[-1] - 1) // 2)
        else:
            x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=pad)
        return self.intermediate(x) + self.bias.view(1, -1, 1, 1)


class _NoiseStrength(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))


class _TopEpilogue(nn.Module):
    """``LayerEpilogue.top_epi``: noise, LeakyReLU, instance norm (a gandid norm site). Each epilogue
    has its own LeakyReLU module (the port shares one), so that each layer can be hooked."""

    def __init__(self, channels, eps):
        super().__init__()
        self.noise = _NoiseStrength(channels)
        self.activation = nn.LeakyReLU(0.2)
        self.instance_norm = InstanceNorm(eps=eps)


class _StyleMod(nn.Module):
    def __init__(self, dlatent_size, channels):
        super().__init__()
        self.lin = _ScaledDense(dlatent_size, 2 * channels, gain=1.0)


class _Epilogue(nn.Module):
    def __init__(self, channels, dlatent_size, eps):
        super().__init__()
        self.top_epi = _TopEpilogue(channels, eps)
        self.style_mod = _StyleMod(dlatent_size, channels)

    def layer(self, x, noise):
        """Noise, then LeakyReLU: the features the instance norm reads (gandid's layer)."""
        return self.top_epi.activation(x + self.top_epi.noise.weight.view(1, -1, 1, 1) * noise)

    def adain(self, x, w):
        style = self.style_mod.lin(w)[:, :, None, None]  # (N, 2C, 1, 1): scale - 1, then bias
        c = x.shape[1]
        return self.top_epi.instance_norm(x) * (style[:, :c] + 1) + style[:, c:]


class _OfficialBlock(nn.Module):
    def forward(self, x, ws, noises, resume_at=0):
        """``resume_at`` 0: from the previous block's output x (for the first block, x is the batch
        size); 1: x is this block's ``conv1`` layer (epi1's LeakyReLU output); 2: its ``conv2``.
        ``ws``, ``noises``: this block's two styles and two noise maps (a noise not used may be None)."""
        if resume_at == 0:
            x = self.epi1.layer(self._first(x), noises[0])
        if resume_at <= 1:
            x = self.epi2.layer(self._second(self.epi1.adain(x, ws[0])), noises[1])
        return self.epi2.adain(x, ws[1])


class _InputBlock(_OfficialBlock):
    def __init__(self, channels, dlatent_size, eps):
        super().__init__()
        self.const = nn.Parameter(torch.zeros(1, channels, 4, 4))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.epi1 = _Epilogue(channels, dlatent_size, eps)
        self.conv = _ScaledConv(channels, channels, 3, SQRT2)
        self.epi2 = _Epilogue(channels, dlatent_size, eps)

    def _first(self, n):
        return self.const.expand(n, -1, -1, -1) + self.bias.view(1, -1, 1, 1)

    def _second(self, x):
        return self.conv(x)


class _UpBlock(_OfficialBlock):
    def __init__(self, in_channels, channels, dlatent_size, eps, fused):
        super().__init__()
        self.conv0_up = _ScaledConv(in_channels, channels, 3, SQRT2, up="fused" if fused else "nearest")
        self.epi1 = _Epilogue(channels, dlatent_size, eps)
        self.conv1 = _ScaledConv(channels, channels, 3, SQRT2)
        self.epi2 = _Epilogue(channels, dlatent_size, eps)

    def _first(self, x):
        return self.conv0_up(x)

    def _second(self, x):
        return self.conv1(x)


class _OfficialMapping(nn.Module):
    """``G_mapping``: pixel norm (gandid's site ``style.0``), then ``dense{i}`` (gain sqrt(2), lrmul
    0.01) each followed by LeakyReLU(0.2)."""

    def __init__(self, z_dim, fmaps, dlatent_size, layers):
        super().__init__()
        self.pixel_norm = PixelNorm(eps=1e-8)
        for i in range(layers):
            setattr(self, f"dense{i}", _ScaledDense(z_dim if i == 0 else fmaps,
                                                    dlatent_size if i == layers - 1 else fmaps, SQRT2, lrmul=0.01))
        self.act = nn.LeakyReLU(0.2)
        self.layers = layers

    def forward(self, z):
        x = self.pixel_norm(z)
        for i in range(self.layers):
            x = self.act(getattr(self, f"dense{i}")(x))
        return x


class _OfficialSynthesis(nn.Module):
    def __init__(self, channels, dlatent_size, eps):
        super().__init__()
        blocks = {}
        for i, c in enumerate(channels):
            r = 4 * 2 ** i
            blocks[f"{r}x{r}"] = (_InputBlock(c, dlatent_size, eps) if i == 0 else
                                  _UpBlock(channels[i - 1], c, dlatent_size, eps, fused=r >= G_ALL_FUSED_FROM))
        self.blocks = nn.ModuleDict(blocks)
        self.torgb = _ScaledConv(channels[-1], 3, 1, gain=1.0)


class StyleGANGAllGenerator(_StyleGANBase):
    """The official StyleGAN generator as GANSpace's / lernapparat's PyTorch port stores it (``g_all``:
    ``g_mapping`` + ``g_synthesis``), behind gandid's Generator protocol.

    ``channels[i]``: depth of block ``{4 * 2**i}x{4 * 2**i}``; the mapping has ``mapping_layers`` dense
    layers z_dim -> mapping_fmaps -> ... -> dlatent_size. ``truncation`` (psi) pulls the styles of the
    layers below ``truncation_cutoff`` (None: every layer) toward ``avg_latent``.
    """

    def __init__(self, channels, z_dim, mapping_fmaps, dlatent_size, mapping_layers, truncation=1.0,
                 truncation_cutoff=G_ALL_TRUNCATION_CUTOFF, noise="latent", instance_eps=1e-8):
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"stylegan: noise must be one of {NOISE_MODES}, got {noise!r}")
        self.g_mapping = _OfficialMapping(z_dim, mapping_fmaps, dlatent_size, mapping_layers)
        self.g_synthesis = _OfficialSynthesis(list(channels), dlatent_size, instance_eps)
        self.register_buffer("avg_latent", torch.zeros(dlatent_size), persistent=False)
        self.truncation, self.truncation_cutoff, self.noise_mode = truncation, truncation_cutoff, noise
        self.z_dim, self.resolution = z_dim, 4 * 2 ** (len(channels) - 1)
        self.num_layers = 2 * len(channels)
        self._avg_from_file = False
        self._name_sites(channels, len(channels))

    def _param(self):
        return self.g_synthesis.torgb.weight

    def _pixel_norm(self):
        return self.g_mapping.pixel_norm

    def _epilogue(self, block, half):
        return getattr(list(self.g_synthesis.blocks.values())[block], f"epi{half}")

    def _activation(self, block, half):
        return self._epilogue(block, half).top_epi.activation

    def _instance_norm(self, block, half):
        return self._epilogue(block, half).top_epi.instance_norm

    def mapping(self, z):
        """w (N, dlatent_size), before truncation."""
        return self.g_mapping(z)

    def dlatents(self, z) -> list[torch.Tensor]:
        """Each synthesis layer's style, (N, dlatent_size) for layers 0 .. 2 * blocks - 1."""
        w = self.g_mapping(z)
        cutoff = self.num_layers if self.truncation_cutoff is None else self.truncation_cutoff
        if self.truncation >= 1 or cutoff <= 0:
            return [w] * self.num_layers
        pulled = torch.lerp(self.avg_latent, w, self.truncation)  # as the port's Truncation
        return [pulled if layer < cutoff else w for layer in range(self.num_layers)]

    # -- noise --------------------------------------------------------------------------------
    def noise_map(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s noise (N, 1, r, r), r = 4 * 2**(layer // 2): a function of each row of z
        only (see the module docstring); each layer has its own stream."""
        n, r = len(z), 4 * 2 ** (layer // 2)
        dev, dtype = z.device, self._param().dtype
        if self.noise_mode == "zero":
            return torch.zeros(n, 1, r, r, device=dev, dtype=dtype)
        if self.noise_mode == "const":  # GANSpace's set_noise_seed(0): seed 0, then randn(1, 1, r, r)
            g = torch.Generator().manual_seed(0)
            return torch.randn(1, 1, r, r, generator=g).to(device=dev, dtype=dtype).expand(n, 1, r, r)
        return self._latent_noise(z, b"g_all" + layer.to_bytes(2, "little"), r)

    def noise_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's noise, two per block: (N, 1, r, r) for r = 4, 4, 8, 8, ..., resolution."""
        return [self.noise_map(z, layer) for layer in range(self.num_layers)]

    def _run(self, z, start_block=0, resume_at=0, x=None):
        ws = self.dlatents(z)
        out = len(z) if x is None else x
        blocks = list(self.g_synthesis.blocks.values())
        for i in range(start_block, len(blocks)):
            resume = resume_at if i == start_block else 0
            noises = [self.noise_map(z, 2 * i + h) if resume <= h else None for h in (0, 1)]
            out = blocks[i](out, ws[2 * i:2 * i + 2], noises, resume)
        return self.g_synthesis.torgb(out).clamp(-1, 1)

    # -- loading ---------------------------------------------------------------------------
    def checkpoint(self) -> tuple[dict, dict]:
        """The tensors of a file this plugin loads back (``gandid convert``): the g_all state dict, with
        ``truncation.avg_latent`` where the file had it."""
        tensors = dict(self.state_dict())
        if self._avg_from_file:
            tensors["truncation.avg_latent"] = self.avg_latent
        return tensors, {"layout": "g_all", "resolution": self.resolution}

    @classmethod
    def from_state_dict(cls, state: dict, resolution: int | None = None, truncation: float = 1.0,
                        truncation_cutoff: int | None = G_ALL_TRUNCATION_CUTOFF, noise: str = "latent",
                        instance_eps: float = 1e-8, source: str = "state dict") -> "StyleGANGAllGenerator":
        what = f"StyleGAN generator in the g_all layout ({source})"
        state = dict(state)
        avg = state.pop("truncation.avg_latent", None)
        found = [int(m.group(1)) for m in (re.fullmatch(r"g_mapping\.dense(\d+)\.weight", k) for k in state) if m]
        if 0 not in found:
            raise CheckpointError(f"{what}: cannot tell the mapping network's sizes: missing keys (1): "
                                  "g_mapping.dense0.weight")
        mapping_layers = max(found) + 1
        fmaps, z_dim = _dims(state, "g_mapping.dense0.weight", 2, what)
        dlatent_size = _dims(state, f"g_mapping.dense{mapping_layers - 1}.weight", 2, what)[0]
        sizes = sorted({int(m.group(1)) for m in (re.match(r"g_synthesis\.blocks\.(\d+)x\1\.", k) for k in state)
                        if m})
        if not sizes or sizes != [4 * 2 ** i for i in range(len(sizes))]:
            raise CheckpointError(f"{what}: the synthesis blocks must be 4x4, 8x8, 16x16, ... without gaps; the "
                                  f"file has {', '.join(f'{r}x{r}' for r in sizes) or 'none'}")
        channels = []
        for r in sizes:
            key = "g_synthesis.blocks.4x4.const" if r == 4 else f"g_synthesis.blocks.{r}x{r}.conv0_up.weight"
            if key not in state:
                raise CheckpointError(f"{what}: cannot tell block {r}x{r}'s channels: missing keys (1): {key}")
            channels.append(_dims(state, key, 4, what)[1 if r == 4 else 0])
        if resolution is not None and resolution != sizes[-1]:
            raise CheckpointError(f"stylegan: {source} is a {sizes[-1]} px g_all network, which runs at its own "
                                  f"resolution only (the export keeps its last toRGB layer), got resolution "
                                  f"{resolution}")
        gen = cls(channels, z_dim, fmaps, dlatent_size, mapping_layers, truncation, truncation_cutoff, noise,
                  instance_eps)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        if avg is not None:
            expected["truncation.avg_latent"] = (dlatent_size,)
            state["truncation.avg_latent"] = avg
        check_state_dict(state, expected, what)
        state, dtypes = to_float(state)
        avg = state.pop("truncation.avg_latent", None)
        gen.load_state_dict(state, strict=True)
        gen.weights_info = {"file": source, **dtypes, "layout": "g_all", "resolution": gen.resolution,
                            "resolution_from": "the file's last block", "noise": noise, "instance_eps": instance_eps,
                            "truncation_cutoff": truncation_cutoff}
        gen._avg_from_file = avg is not None
        with torch.no_grad():
            if avg is not None:
                gen.avg_latent.copy_(avg)
                gen.weights_info["avg_latent"] = "truncation.avg_latent (the file)"
            elif truncation < 1:  # the file has no dlatent_avg: estimate it as rosinality's generate.py does
                g = torch.Generator().manual_seed(0)
                gen.avg_latent.copy_(gen.g_mapping(torch.randn(10 * 1024, z_dim, generator=g)).mean(0))
                gen.weights_info["avg_latent"] = "mean of g_mapping over 10240 latents (seed 0)"
        return gen.eval()


def _layout(state: dict, source: str) -> str:
    """"rosinality" or "g_all", or a CheckpointError that says what the file looks like instead."""
    if any(k.startswith(("g_mapping.", "g_synthesis.")) for k in state):
        return "g_all"
    if any(k.startswith(("style.", "generator.")) for k in state):
        return "rosinality"
    hint = ""
    if any(k.startswith("dense0.") for k in state):
        hint = (" It looks like the mapping network of the g_all layout alone (lernapparat's '*_mapping.pt'); "
                "give the whole generator (the '*.for_g_all.pt' file, keys 'g_mapping.*' and 'g_synthesis.*').")
    elif any(k.startswith(("blocks.4x4.", "torgb.")) for k in state):
        hint = (" It looks like the synthesis network of the g_all layout alone (lernapparat's '*_synthesis.pt'); "
                "give the whole generator (the '*.for_g_all.pt' file, keys 'g_mapping.*' and 'g_synthesis.*').")
    raise CheckpointError(f"{source}: not a StyleGAN v1 generator in a layout this plugin reads: not a rosinality "
                          "style-based-gan-pytorch StyledGenerator (no 'style.1.linear.weight_orig' / "
                          "'generator.progression.0.conv1.input') nor the official network's g_all layout (no "
                          f"'g_mapping.dense0.weight' / 'g_synthesis.blocks.4x4.const'); its first keys are "
                          f"{sorted(state)[:8]}.{hint}")


def stylegan(weights: str | None = None, resolution: int | None = None, truncation: float = 1.0,
             noise: str = "latent", truncation_cutoff: int | None = None,
             instance_eps: float | None = None) -> StyleGANGenerator | StyleGANGAllGenerator:
    """Factory for ``--generator stylegan --weights FILE``, .pt/.pth/.model or .safetensors: a rosinality
    training checkpoint (its ``g_running``, else ``generator``) or bare generator state dict, or a
    ``g_all`` state dict of the official network's PyTorch port (GANSpace, lernapparat).

    ``resolution``: rosinality's progressive step's image size (default: the largest block that was
    trained; a g_all file runs at its own size only); ``truncation``: psi (rosinality's generate.py
    samples with 0.7, the official network with 0.7; 1 = none); ``truncation_cutoff`` (g_all only):
    the layers truncated are those below it (default 8, the official one); ``noise``: "latent"
    (per-sample noise seeded by the latent), "const" or "zero"; ``instance_eps``: the AdaIN instance
    norms' eps (default: the layout's own, 1e-5 for rosinality, 1e-8 for g_all as official StyleGAN).
    """
    if weights is None:
        raise CheckpointError("generator 'stylegan' needs a weights file: --weights stylegan-256px-new.model "
                              "(rosinality) or --weights stylegan_ffhq_1024.pt (GANSpace's g_all)")
    if not 0 < truncation <= 1:
        raise CheckpointError(f"stylegan: truncation must be in (0, 1], got {truncation}")
    if noise not in NOISE_MODES:
        raise CheckpointError(f"stylegan: noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if truncation_cutoff is not None and truncation_cutoff < 0:
        raise CheckpointError(f"stylegan: truncation_cutoff must be 0 or more, got {truncation_cutoff}")
    if instance_eps is not None and not instance_eps > 0:
        raise CheckpointError(f"stylegan: instance_eps must be positive, got {instance_eps}")
    data = load_state_dict_file(Path(weights))
    which = next((k for k in ("g_running", "generator") if isinstance(data.get(k), dict)), None)
    state = data[which] if which else data
    if _layout(state, str(weights)) == "g_all":
        gen = StyleGANGAllGenerator.from_state_dict(
            state, resolution, truncation, G_ALL_TRUNCATION_CUTOFF if truncation_cutoff is None else truncation_cutoff,
            noise, 1e-8 if instance_eps is None else instance_eps, source=str(weights))
    else:
        if truncation_cutoff is not None:
            raise CheckpointError(f"stylegan: truncation_cutoff applies to the g_all layout only; {weights} is in "
                                  "rosinality's layout, whose generate.py truncates every layer's style")
        gen = StyleGANGenerator.from_state_dict(state, resolution, truncation, noise, source=str(weights))
        if instance_eps is not None:
            for module in gen.modules():
                if isinstance(module, InstanceNorm):
                    module.eps = instance_eps
        gen.weights_info["instance_eps"] = 1e-5 if instance_eps is None else instance_eps
    gen.weights_info["state"] = which or "bare state dict"
    return gen


def recognise(peek) -> str | None:
    """rosinality's checkpoints ({'g_running', 'generator', ...} or a bare state dict) and g_all state dicts."""
    for inside in ("g_running", "generator", None):
        if peek.has("style.1.linear.weight_orig", "generator.progression.0.conv1.input", inside=inside):
            return ("a rosinality style-based-gan-pytorch StyleGAN " +
                    (f"checkpoint ({inside})" if inside else "generator state dict"))
    if peek.has("g_mapping.dense0.weight", "g_synthesis.blocks.4x4.const"):
        return "a StyleGAN generator in the official network's g_all layout (GANSpace / lernapparat PyTorch port)"
    return None


@hookimpl
def gandid_register_generators(register):
    register("stylegan", stylegan, description="StyleGAN v1 (rosinality/style-based-gan-pytorch checkpoints and "
                                               "the official network's g_all port: GANSpace, lernapparat; AdaIN "
                                               "instance norms as DID norm sites)", recognise=recognise)
