"""Small random-weight StyleGAN (v1) checkpoints in the two layouts the plugin reads, each with an
independent float64 forward written from the formulas (not from gandid's plugin): its own upsampling
(zero insertion + flipped kernel for the fused transposed conv), its own blur kernel, instance norm
from mean and variance, with hooks to edit a layer and to record and replay each AdaIN's statistics.

- rosinality/style-based-gan-pytorch's exact key layout (``make_state_dict``, ``independent_forward``),
  from that repository's model.py;
- the official network's ``g_all`` layout as harskish/ganspace's ``models/stylegan/model.py`` saves it
  (``make_g_all_state_dict``, ``independent_g_all_forward``), from NVlabs/stylegan's
  ``training/networks_stylegan.py`` formulas (get_weight's runtime coefficient gain / sqrt(fan_in) *
  lrmul, upscale2d_conv2d, layer_epilogue, style_mod, instance_norm, G_style's truncation)."""
import math

import torch
import torch.nn.functional as F

BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def make_state_dict(channels=(16, 16, 8, 8, 8), fused=(False, False, False, True, True), style_dim=8, n_mlp=3,
                    seed=0, trained_blocks=None):
    """rosinality StyledGenerator state dict; blocks past ``trained_blocks`` keep zero noise weights,
    as never-trained blocks do in a real checkpoint."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    s = {}
    for k in range(n_mlp):
        s[f"style.{2 * k + 1}.linear.weight_orig"] = rnd(style_dim, style_dim)
        s[f"style.{2 * k + 1}.linear.bias"] = rnd(style_dim, scale=0.1)
    for i, c in enumerate(channels):
        p = f"generator.progression.{i}."
        cin = channels[i - 1] if i else c
        if i == 0:
            s[p + "conv1.input"] = rnd(1, c, 4, 4)
        elif fused[i]:
            s[p + "conv1.0.weight"] = rnd(cin, c, 3, 3)
            s[p + "conv1.0.bias"] = rnd(c, scale=0.1)
            s[p + "conv1.1.weight"] = BLUR.view(1, 1, 3, 3).repeat(c, 1, 1, 1)
            s[p + "conv1.1.weight_flip"] = BLUR.flip(0, 1).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
        else:
            s[p + "conv1.1.conv.weight_orig"] = rnd(c, cin, 3, 3)
            s[p + "conv1.1.conv.bias"] = rnd(c, scale=0.1)
            s[p + "conv1.2.weight"] = BLUR.view(1, 1, 3, 3).repeat(c, 1, 1, 1)
            s[p + "conv1.2.weight_flip"] = BLUR.flip(0, 1).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
        trained = trained_blocks is None or i < trained_blocks
        for h in (1, 2):
            s[p + f"noise{h}.weight_orig"] = rnd(1, c, 1, 1, scale=0.3) if trained else torch.zeros(1, c, 1, 1)
            bias = torch.cat([torch.ones(c), torch.zeros(c)]) + rnd(2 * c, scale=0.1)
            s[p + f"adain{h}.style.linear.weight_orig"] = rnd(2 * c, style_dim)
            s[p + f"adain{h}.style.linear.bias"] = bias
        s[p + "conv2.conv.weight_orig"] = rnd(c, c, 3, 3)
        s[p + "conv2.conv.bias"] = rnd(c, scale=0.1)
        s[f"generator.to_rgb.{i}.conv.weight_orig"] = rnd(3, c, 1, 1, scale=0.3)  # most pixels inside [-1, 1]
        s[f"generator.to_rgb.{i}.conv.bias"] = rnd(3, scale=0.1)
    return s


def independent_forward(s, z, noise, step, truncation=1.0, mean_style=None, edit=None, stats_in=None, record=None):
    """Images (N, 3, r, r) at progressive step ``step``.

    noise: per block (N, 1, r, r); edit: {layer: fn(x) -> x} at "R.conv1" / "R.conv2"; stats_in:
    {site "R.adainH": (N, 2, C) means and stds} used instead of the site's own; record: a dict that
    receives every site's own statistics.
    """
    stats_in, edit = stats_in or {}, edit or {}

    def lin(x, w, b):
        return x @ (w * math.sqrt(2 / w.shape[1])).t() + b

    def lrelu(x):
        return torch.where(x >= 0, x, 0.2 * x)

    x = z / torch.sqrt((z ** 2).mean(1, keepdim=True) + 1e-8)
    k = 1
    while f"style.{k}.linear.weight_orig" in s:
        x = lrelu(lin(x, s[f"style.{k}.linear.weight_orig"], s[f"style.{k}.linear.bias"]))
        k += 2
    w = x if truncation >= 1 else mean_style + truncation * (x - mean_style)

    def blur(x):
        c = x.shape[1]
        return F.conv2d(x, BLUR.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1), padding=1, groups=c)

    def conv(x, weight_orig, bias, pad):
        fan_in = weight_orig.shape[1] * weight_orig.shape[2] * weight_orig.shape[3]
        return F.conv2d(x, weight_orig * math.sqrt(2 / fan_in), bias, padding=pad)

    def fused_up(x, weight, bias):
        cin, cout, kk, _ = weight.shape
        wt = F.pad(weight * math.sqrt(2 / (cin * kk * kk)), [1, 1, 1, 1])
        w4 = (wt[:, :, 1:, 1:] + wt[:, :, :-1, 1:] + wt[:, :, 1:, :-1] + wt[:, :, :-1, :-1]) / 4
        # a stride-2 transposed conv (padding 1) = zero insertion, then correlation with the flipped kernel
        n, _, h, wd = x.shape
        up = x.new_zeros(n, cin, 2 * h - 1, 2 * wd - 1)
        up[:, :, ::2, ::2] = x
        kernel = w4.flip(2, 3).transpose(0, 1)  # (out, in, 4, 4)
        return F.conv2d(up, kernel, bias, padding=4 - 1 - 1)

    def adain(x, site, style_w, style_b):
        mean = x.mean((2, 3))
        var = ((x - mean[:, :, None, None]) ** 2).mean((2, 3))
        own = torch.stack([mean, torch.sqrt(var + 1e-5)], 1)
        if record is not None:
            record[site] = own
        st = stats_in.get(site, own)
        normed = (x - st[:, 0, :, None, None]) / st[:, 1, :, None, None]
        gamma, beta = lin(w, style_w, style_b).chunk(2, 1)
        return gamma[:, :, None, None] * normed + beta[:, :, None, None]

    n = len(z)
    out = None
    for i in range(step + 1):
        p, r = f"generator.progression.{i}.", 4 * 2 ** i
        if i == 0:
            out = s[p + "conv1.input"].repeat(n, 1, 1, 1)
        elif p + "conv1.0.weight" in s:
            out = blur(fused_up(out, s[p + "conv1.0.weight"], s[p + "conv1.0.bias"]))
        else:
            up = out.repeat_interleave(2, 2).repeat_interleave(2, 3)
            out = blur(conv(up, s[p + "conv1.1.conv.weight_orig"], s[p + "conv1.1.conv.bias"], 1))
        for h in (1, 2):
            if h == 2:
                out = conv(out, s[p + "conv2.conv.weight_orig"], s[p + "conv2.conv.bias"], 1)
            nw = s[p + f"noise{h}.weight_orig"]
            out = lrelu(out + nw * math.sqrt(2 / nw.shape[1]) * noise[i])
            if f"{r}.conv{h}" in edit:
                out = edit[f"{r}.conv{h}"](out)
            out = adain(out, f"{r}.adain{h}", s[p + f"adain{h}.style.linear.weight_orig"],
                        s[p + f"adain{h}.style.linear.bias"])
    rgb = F.conv2d(out, s[f"generator.to_rgb.{step}.conv.weight_orig"] * math.sqrt(2 / out.shape[1]),
                   s[f"generator.to_rgb.{step}.conv.bias"])
    return rgb.clamp(-1, 1)


# -- the official network's g_all layout ---------------------------------------------------------

def make_g_all_state_dict(channels=(8, 8, 8, 6, 6, 4), z_dim=8, fmaps=8, dlatent=8, mapping_layers=4, seed=0,
                          avg_latent=False):
    """``StyleGAN_G.state_dict()`` of GANSpace's port, small: blocks 4x4 .. RxR with ``channels``, a
    ``mapping_layers``-deep mapping z_dim -> fmaps -> ... -> dlatent. Stored weights are N(0, 1) as the
    official init with use_wscale (the mapping's N(0, 1 / lrmul) = N(0, 100)); ``avg_latent``: add
    ``truncation.avg_latent`` (a g_all Sequential with lernapparat's Truncation module)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    s = {}
    for i in range(mapping_layers):
        cin = z_dim if i == 0 else fmaps
        cout = dlatent if i == mapping_layers - 1 else fmaps
        s[f"g_mapping.dense{i}.weight"] = rnd(cout, cin, scale=100.0)
        s[f"g_mapping.dense{i}.bias"] = rnd(cout, scale=10.0)  # times lrmul 0.01: about 0.1
    if avg_latent:
        s["truncation.avg_latent"] = rnd(dlatent, scale=0.5)

    def epilogues(p, c):
        for e in ("epi1", "epi2"):
            s[p + f"{e}.top_epi.noise.weight"] = rnd(c, scale=0.3)
            s[p + f"{e}.style_mod.lin.weight"] = rnd(2 * c, dlatent)
            s[p + f"{e}.style_mod.lin.bias"] = rnd(2 * c, scale=0.1)

    for i, c in enumerate(channels):
        r = 4 * 2 ** i
        p = f"g_synthesis.blocks.{r}x{r}."
        if i == 0:
            s[p + "const"] = rnd(1, c, 4, 4)
            s[p + "bias"] = rnd(c, scale=0.1)
            s[p + "conv.weight"] = rnd(c, c, 3, 3)
            s[p + "conv.bias"] = rnd(c, scale=0.1)
        else:
            s[p + "conv0_up.weight"] = rnd(c, channels[i - 1], 3, 3)
            s[p + "conv0_up.bias"] = rnd(c, scale=0.1)
            s[p + "conv0_up.intermediate.kernel"] = BLUR.view(1, 1, 3, 3).clone()
            s[p + "conv1.weight"] = rnd(c, c, 3, 3)
            s[p + "conv1.bias"] = rnd(c, scale=0.1)
        epilogues(p, c)
    s["g_synthesis.torgb.weight"] = rnd(3, channels[-1], 1, 1, scale=0.3)  # most pixels inside [-1, 1]
    s["g_synthesis.torgb.bias"] = rnd(3, scale=0.1)
    return s


def independent_g_all_forward(s, z, noise, truncation=1.0, cutoff=8, avg=None, eps=1e-8, edit=None, stats_in=None,
                              record=None):
    """Images (N, 3, R, R) of a g_all state dict ``s`` (float64 tensors).

    noise: per layer (2 per block) (N, 1, r, r); truncation psi applies to layers < ``cutoff`` (None:
    all) with ``avg``; edit / stats_in / record as in :func:`independent_forward`, at layers "R.conv1"
    / "R.conv2" (epi1 / epi2's LeakyReLU output) and sites "R.adain1" / "R.adain2"."""
    stats_in, edit = stats_in or {}, edit or {}

    def lrelu(x):
        return torch.where(x >= 0, x, 0.2 * x)

    def dense(x, w, b, gain, lrmul):  # get_weight: runtime coefficient gain / sqrt(fan_in) * lrmul
        return x @ (w * (gain / math.sqrt(w.shape[1]) * lrmul)).t() + b * lrmul

    x = z * torch.rsqrt((z ** 2).mean(1, keepdim=True) + 1e-8)
    k = 0
    while f"g_mapping.dense{k}.weight" in s:
        x = lrelu(dense(x, s[f"g_mapping.dense{k}.weight"], s[f"g_mapping.dense{k}.bias"], math.sqrt(2), 0.01))
        k += 1
    sizes = []
    while f"g_synthesis.blocks.{4 * 2 ** len(sizes)}x{4 * 2 ** len(sizes)}.epi1.style_mod.lin.weight" in s:
        sizes.append(4 * 2 ** len(sizes))
    n_layers = 2 * len(sizes)
    cut = n_layers if cutoff is None else cutoff
    ws = [avg + truncation * (x - avg) if truncation < 1 and layer < cut else x for layer in range(n_layers)]

    def conv(x, w, pad):
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        return F.conv2d(x, w * (math.sqrt(2) / math.sqrt(fan_in)), padding=pad)

    def blur(x):
        c = x.shape[1]
        return F.conv2d(x, BLUR.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1), padding=1, groups=c)

    def fused_up(x, w):
        cout, cin = w.shape[:2]
        w = w * (math.sqrt(2) / math.sqrt(cin * 9))
        wt = F.pad(w, [1, 1, 1, 1])  # (out, in, 5, 5); the official kernel is the SUM of the four shifts
        w4 = wt[:, :, 1:, 1:] + wt[:, :, :-1, 1:] + wt[:, :, 1:, :-1] + wt[:, :, :-1, :-1]
        # a stride-2 transposed conv, 'SAME' (padding 1) = zero insertion, then correlation with the flipped kernel
        n, _, h, wd = x.shape
        up = x.new_zeros(n, cin, 2 * h - 1, 2 * wd - 1)
        up[:, :, ::2, ::2] = x
        return F.conv2d(up, w4.flip(2, 3), padding=2)

    def epilogue(x, p, r, half, layer):
        x = lrelu(x + s[p + f"epi{half}.top_epi.noise.weight"].view(1, -1, 1, 1) * noise[layer])
        if f"{r}.conv{half}" in edit:
            x = edit[f"{r}.conv{half}"](x)
        mean = x.mean((2, 3))
        var = ((x - mean[:, :, None, None]) ** 2).mean((2, 3))
        own = torch.stack([mean, torch.sqrt(var + eps)], 1)
        if record is not None:
            record[f"{r}.adain{half}"] = own
        st = stats_in.get(f"{r}.adain{half}", own)
        x = (x - st[:, 0, :, None, None]) / st[:, 1, :, None, None]
        style = dense(ws[layer], s[p + f"epi{half}.style_mod.lin.weight"], s[p + f"epi{half}.style_mod.lin.bias"],
                      1.0, 1.0)
        c = x.shape[1]
        return x * (style[:, :c, None, None] + 1) + style[:, c:, None, None]

    out = None
    for i, r in enumerate(sizes):
        p = f"g_synthesis.blocks.{r}x{r}."
        if i == 0:
            out = s[p + "const"].repeat(len(z), 1, 1, 1) + s[p + "bias"].view(1, -1, 1, 1)
            out = epilogue(out, p, r, 1, 0)
            out = conv(out, s[p + "conv.weight"], 1) + s[p + "conv.bias"].view(1, -1, 1, 1)
        else:
            if r >= 128:  # fused_scale='auto': min(input size) * 2 >= 128
                out = fused_up(out, s[p + "conv0_up.weight"])
            else:
                out = conv(out.repeat_interleave(2, 2).repeat_interleave(2, 3), s[p + "conv0_up.weight"], 1)
            out = blur(out) + s[p + "conv0_up.bias"].view(1, -1, 1, 1)  # the bias after the blur
            out = epilogue(out, p, r, 1, 2 * i)
            out = conv(out, s[p + "conv1.weight"], 1) + s[p + "conv1.bias"].view(1, -1, 1, 1)
        out = epilogue(out, p, r, 2, 2 * i + 1)
    w = s["g_synthesis.torgb.weight"]
    rgb = F.conv2d(out, w / math.sqrt(w.shape[1])) + s["g_synthesis.torgb.bias"].view(1, -1, 1, 1)
    return rgb.clamp(-1, 1)
