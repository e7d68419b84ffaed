"""Small random-weight StyleGAN2 checkpoints in rosinality/stylegan2-pytorch's exact key layout,
and an independent forward (per-sample modulated weights, as rosinality's fused path computes)."""
import math

import torch
import torch.nn.functional as F


def blur(k_scale=1.0):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[None, :] * k[:, None]
    return k / k.sum() * k_scale


def make_g_ema(size=32, style_dim=8, n_mlp=2, channels=(16, 16, 8, 8, 8, 8, 8, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    log_size = int(math.log2(size))
    ch = {2 ** (i + 2): channels[i] for i in range(log_size - 1)}
    s = {}

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    for i in range(1, n_mlp + 1):
        s[f"style.{i}.weight"] = rnd(style_dim, style_dim) * 100  # lr_mul 0.01 divides at init
        s[f"style.{i}.bias"] = rnd(style_dim, scale=0.1)
    s["input.input"] = rnd(1, ch[4], 4, 4)

    def styled(prefix, cin, cout, up):
        s[f"{prefix}.conv.weight"] = rnd(1, cout, cin, 3, 3)
        s[f"{prefix}.conv.modulation.weight"] = rnd(cin, style_dim)
        s[f"{prefix}.conv.modulation.bias"] = torch.ones(cin) + rnd(cin, scale=0.1)
        if up:
            s[f"{prefix}.conv.blur.kernel"] = blur(4.0)
        s[f"{prefix}.noise.weight"] = rnd(1, scale=0.1)
        s[f"{prefix}.activate.bias"] = rnd(cout, scale=0.1)

    def to_rgb(prefix, cin, up):
        s[f"{prefix}.conv.weight"] = rnd(1, 3, cin, 1, 1)
        s[f"{prefix}.conv.modulation.weight"] = rnd(cin, style_dim)
        s[f"{prefix}.conv.modulation.bias"] = torch.ones(cin)
        s[f"{prefix}.bias"] = rnd(1, 3, 1, 1, scale=0.1)
        if up:
            s[f"{prefix}.upsample.kernel"] = blur(4.0)

    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    cin = ch[4]
    for k, i in enumerate(range(3, log_size + 1)):
        cout = ch[2 ** i]
        styled(f"convs.{2 * k}", cin, cout, True)
        styled(f"convs.{2 * k + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{k}", cout, True)
        cin = cout
    for i in range((log_size - 2) * 2 + 1):
        r = 2 ** ((i + 5) // 2)
        s[f"noises.noise_{i}"] = rnd(1, 1, r, r)
    return s


def independent_forward(s, z, truncation=1.0, latent_avg=None):
    """StyleGAN2 synthesis with per-sample modulated (and demodulated) weights, one sample at a time."""
    def lin(x, w, b, lr_mul=1.0, act=False):
        y = x @ (w * lr_mul / math.sqrt(w.shape[1])).t() + b * lr_mul
        return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y

    x = z / torch.sqrt((z * z).mean(1, keepdim=True) + 1e-8)
    i = 1
    while f"style.{i}.weight" in s:
        x = lin(x, s[f"style.{i}.weight"], s[f"style.{i}.bias"], 0.01, True)
        i += 1
    w_lat = x if truncation >= 1 else latent_avg + truncation * (x - latent_avg)

    def modconv(prefix, inp, w, demod=True, up=False):
        weight = s[f"{prefix}.conv.weight"][0]
        cout, cin, k, _ = weight.shape
        style = lin(w[None], s[f"{prefix}.conv.modulation.weight"], s[f"{prefix}.conv.modulation.bias"])[0]
        wt = weight / math.sqrt(cin * k * k) * style.view(1, cin, 1, 1)
        if demod:
            wt = wt / torch.sqrt((wt * wt).sum((1, 2, 3), keepdim=True) + 1e-8)
        if up:
            out = F.conv_transpose2d(inp[None], wt.transpose(0, 1), stride=2)
            return F.conv2d(F.pad(out, [1, 1, 1, 1]), blur(4.0).to(out.dtype).view(1, 1, 4, 4).repeat(cout, 1, 1, 1),
                            groups=cout)[0]
        return F.conv2d(inp[None], wt, padding=k // 2)[0]

    def styled(prefix, inp, w, noise, up=False):
        out = modconv(prefix, inp, w, up=up) + s[f"{prefix}.noise.weight"] * noise[0]
        return F.leaky_relu(out + s[f"{prefix}.activate.bias"].view(-1, 1, 1), 0.2) * math.sqrt(2)

    def upsample(img):
        c, h, w = img.shape
        zeros = torch.zeros(c, 2 * h, 2 * w, dtype=img.dtype)
        zeros[:, ::2, ::2] = img
        return F.conv2d(F.pad(zeros[None], [2, 1, 2, 1]), blur(4.0).to(img.dtype).view(1, 1, 4, 4).repeat(c, 1, 1, 1),
                        groups=c)[0]

    images = []
    for w in w_lat:
        out = styled("conv1", s["input.input"][0], w, s["noises.noise_0"][0])
        skip = modconv("to_rgb1", out, w, demod=False) + s["to_rgb1.bias"][0]
        k, n = 0, 1
        while f"to_rgbs.{k}.bias" in s:
            out = styled(f"convs.{2 * k}", out, w, s[f"noises.noise_{n}"][0], up=True)
            out = styled(f"convs.{2 * k + 1}", out, w, s[f"noises.noise_{n + 1}"][0])
            skip = modconv(f"to_rgbs.{k}", out, w, demod=False) + s[f"to_rgbs.{k}.bias"][0] + upsample(skip)
            k, n = k + 1, n + 2
        images.append(skip)
    return torch.stack(images).clamp(-1, 1)
