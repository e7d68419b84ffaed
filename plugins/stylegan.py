"""StyleGAN (v1) generator in rosinality/style-based-gan-pytorch's layout, on the CPU or a GPU.

Facts read from rosinality/style-based-gan-pytorch, ``model.py`` (``StyledGenerator``, ``Generator``,
``StyledConvBlock``, ``AdaptiveInstanceNorm``, ``EqualLR``, ``FusedUpsample``, ``Blur``),
``generate.py`` (``g_running``, ``step = log2(size) - 2``, truncation with ``mean_style``) and
``train.py`` (what a checkpoint holds):

- a checkpoint is ``{"generator", "discriminator", "g_optimizer", "d_optimizer", "g_running"}`` (training
  checkpoints) or a bare ``g_running`` state dict (the ``.model`` files); ``g_running`` is the moving
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

What gandid exposes: layer ``R.conv1`` / ``R.conv2`` (R = the block's resolution) is the
LeakyReLU output that AdaIN ``R.adain1`` / ``R.adain2`` reads, and each AdaIN's instance norm is a
norm site of kind ``instancenorm`` whose per-sample, per-channel statistics the DID engine records,
borrows and replays (:class:`gandid.model.InstanceNorm`); the mapping network's pixel norm is site
``style.0``. Noise: the original draws fresh noise on every call; here a sample's noise map for
block b is drawn from a generator seeded with a hash of the sample's latent (its float32 bytes) and
b, so an image depends only on its latent (and sample i of seed s gets the same noise in any batch
and any process), and the four DID arms share their noise. ``noise="const"``: one fixed map per block
for every sample, as the official StyleGAN's ``randomize_noise=False``; ``noise="zero"``: none.
"""
from __future__ import annotations

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


class StyleGANGenerator(nn.Module):
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
        self.layers, self.norm_sites = [], [NormSite("style.0", "pixelnorm", None)]
        self._where = {}  # layer name -> (block, half)
        for i in range(self.step + 1):
            r = 4 * 2 ** i
            for half in (1, 2):
                name = f"{r}.conv{half}"
                self.layers.append(LayerInfo(name, channels[i], (r, r)))
                self.norm_sites.append(NormSite(f"{r}.adain{half}", "instancenorm", name))
                self._where[name] = (i, half)
        names = [l.name for l in self.layers]
        self.default_layer = names[min(len(names) - 1, 5)]

    # -- noise --------------------------------------------------------------------------------
    def noise_map(self, z: torch.Tensor, block: int) -> torch.Tensor:
        """Block ``block``'s noise (N, 1, r, r): a function of each row of z only (see the module
        docstring). Each block has its own stream, so a pass that stops early draws no more than it uses."""
        n, r = len(z), 4 * 2 ** block
        dev, dtype = z.device, self.generator.to_rgb[0].conv.weight_orig.dtype
        if self.noise_mode == "zero":
            return torch.zeros(n, 1, r, r, device=dev, dtype=dtype)
        if self.noise_mode == "const":
            g = torch.Generator().manual_seed(block)
            return torch.randn(1, 1, r, r, generator=g).to(device=dev, dtype=dtype).expand(n, 1, r, r)
        keys = [row.tobytes() for row in z.detach().float().cpu().contiguous().numpy()]
        drawn: dict[bytes, torch.Tensor] = {}
        for key in keys:  # the DID's four arms repeat each latent: draw each distinct latent once
            if key not in drawn:
                digest = hashlib.blake2b(key + block.to_bytes(2, "little"), digest_size=8).digest()
                g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))
                drawn[key] = torch.randn(1, 1, r, r, generator=g)
        return torch.cat([drawn[key] for key in keys]).to(device=dev, dtype=dtype)

    def noise_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Every block's noise, (N, 1, r, r) for r = 4, 8, ..., resolution."""
        return [self.noise_map(z, i) for i in range(self.step + 1)]

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim).to(self.generator.to_rgb[0].conv.weight_orig.device)

    def mapping(self, z):
        w = self.style(z)
        if self.truncation < 1:  # generate.py: mean_style + style_weight * (style - mean_style)
            w = self.mean_style + self.truncation * (w - self.mean_style)
        return w

    def layer_module(self, name):
        if name not in self._where:
            raise UnknownNameError("layer", name, list(self._where))
        i, half = self._where[name]
        return getattr(self.generator.progression[i], f"lrelu{half}")

    def norm_module(self, site):
        if site == "style.0":
            return self.style[0]
        found = re.fullmatch(r"(\d+)\.adain([12])", site)
        layer = f"{found.group(1)}.conv{found.group(2)}" if found else None
        if layer not in self._where:
            raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])
        i, half = self._where[layer]
        return getattr(self.generator.progression[i], f"adain{half}").norm

    def _run(self, z, start_block=0, resume_at=0, x=None):
        w = self.mapping(z)
        out = len(z) if x is None else x
        for i in range(start_block, self.step + 1):
            out = self.generator.progression[i](out, w, self.noise_map(z, i), resume_at if i == start_block else 0)
        return self.generator.to_rgb[self.step](out).clamp(-1, 1)

    def forward(self, z):
        return self._run(z)

    def forward_from(self, layer, features, z):
        if layer not in self._where:
            raise UnknownNameError("layer", layer, list(self._where))
        i, half = self._where[layer]
        return self._run(z, i, half, features)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict, resolution: int | None = None, truncation: float = 1.0,
                        noise: str = "latent", source: str = "state dict") -> "StyleGANGenerator":
        what = f"StyleGAN generator ({source})"
        prefix = "generator.progression."
        if "style.1.linear.weight_orig" not in state or f"{prefix}0.conv1.input" not in state:
            hint = ""
            if any(k.startswith(("g_mapping.", "g_synthesis.")) for k in state):
                hint = (" It looks like the official-port 'g_all' layout (GANSpace), which this plugin does not "
                        "read yet.")
            raise CheckpointError(f"{source}: not a rosinality style-based-gan-pytorch StyledGenerator (no "
                                  f"'style.1.linear.weight_orig' / '{prefix}0.conv1.input'); its first keys are "
                                  f"{sorted(state)[:8]}.{hint}")
        style_dim = state["style.1.linear.weight_orig"].shape[1]
        n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.linear\.weight_orig", k)])
        blocks = 1 + max(int(m.group(1)) for m in (re.match(re.escape(prefix) + r"(\d+)\.", k) for k in state) if m)
        channels, fused = [], []
        for i in range(blocks):
            key = f"{prefix}{i}.adain1.style.linear.bias"  # (2C,): gamma and beta of block i's C channels
            if key not in state:
                raise CheckpointError(f"{what}: cannot tell block {i}'s channels: missing keys (1): {key}")
            channels.append(state[key].shape[0] // 2)
            fused.append(f"{prefix}{i}.conv1.0.weight" in state)
        step, chosen = _choose_step(state, blocks, resolution, source)
        gen = cls(channels, fused, style_dim, n_mlp, step, truncation, noise)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        check_state_dict(state, expected, what)
        state, dtypes = to_float(state)
        gen.load_state_dict(state, strict=True)
        gen.weights_info = {"file": source, **dtypes, "resolution": gen.resolution, "resolution_from": chosen,
                            "noise": noise}
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


def stylegan(weights: str | None = None, resolution: int | None = None, truncation: float = 1.0,
             noise: str = "latent") -> StyleGANGenerator:
    """Factory for ``--generator stylegan --weights FILE``: a rosinality training checkpoint (its
    ``g_running``, else ``generator``) or a bare generator state dict; .pt/.pth/.model or .safetensors.

    ``resolution``: the progressive step's image size (default: the largest block that was trained);
    ``truncation``: generate.py's ``style_weight`` (it samples with 0.7; 1 = none); ``noise``: "latent"
    (per-sample noise seeded by the latent), "const" or "zero".
    """
    if weights is None:
        raise CheckpointError("generator 'stylegan' needs a weights file: --weights stylegan-256px-new.model")
    if not 0 < truncation <= 1:
        raise CheckpointError(f"stylegan: truncation must be in (0, 1], got {truncation}")
    if noise not in NOISE_MODES:
        raise CheckpointError(f"stylegan: noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    data = load_state_dict_file(Path(weights))
    which = next((k for k in ("g_running", "generator") if isinstance(data.get(k), dict)), None)
    state = data[which] if which else data
    gen = StyleGANGenerator.from_state_dict(state, resolution, truncation, noise, source=str(weights))
    gen.weights_info["state"] = which or "bare state dict"
    return gen


@hookimpl
def gandid_register_generators(register):
    register("stylegan", stylegan, description="StyleGAN v1 (rosinality/style-based-gan-pytorch checkpoints; "
                                               "AdaIN instance norms as DID norm sites)")
