"""Adversarial training of the toyroom generator, in the exact `pggan` layout (pixel norm in every
block, equalised learning rate), on fresh renders. Used by ``train.py generator``.

Non-progressive at the final resolution: the architecture (and so the checkpoint format) is PG-GAN's,
the schedule is a plain GAN's, which trains in the CPU budget. Non-saturating logistic loss with a
lazy R1 penalty, Adam (0, 0.99), an exponential moving average of the generator's weights (shipped).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from ...generators.pggan import PGGANGenerator

TOYROOM_SIZES = [128, 128, 128, 128, 64, 32]  # z, then depth at 4, 8, 16, 32, 64 px


class EqualConv(nn.Module):
    """Conv with the He constant applied at run time (equalised learning rate)."""

    def __init__(self, cin, cout, k, padding=0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale, self.padding = math.sqrt(2 / (cin * k * k)), padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W): for each sample, the standard deviation of the features over its
    group of ``group`` samples (samples i, i + N/group, ...), averaged over features and positions.
    PG-GAN's and StyleGAN2's layer (group size 4): per group, not one number for the whole batch, so
    the discriminator sees a group of near-identical fakes (mode collapse) in every group. A batch of
    32 with a single batch-wide number collapsed the v2 generator by step 1,158 (MODEL_CARD.md)."""
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    if g == 1 and n > 1:  # a group of one has no spread: the layer would silently stop seeing collapse
        raise ValueError(f"minibatch_std: no group of 2 to {group} samples divides the batch of {n}; "
                         "use a batch size divisible by 4")
    spread = x.reshape(g, n // g, c, h, w)
    spread = (spread - spread.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean((1, 2, 3))  # (N / g,)
    return spread.repeat(g)[:, None, None, None].expand(n, 1, h, w)


class Discriminator(nn.Module):
    """fromRGB, then per resolution two 3x3 convs and a 2x average-pool down to 4x4; minibatch stddev
    (groups of 4); a 3x3 conv and a linear layer to one logit."""

    def __init__(self, resolution=64, channels=(32, 64, 128, 128, 128)):
        super().__init__()
        levels = int(math.log2(resolution // 4))
        chans = list(channels[: levels + 1])
        self.from_rgb = EqualConv(3, chans[0], 1)
        self.blocks = nn.ModuleList(nn.ModuleList([EqualConv(a, a, 3, 1), EqualConv(a, b, 3, 1)])
                                    for a, b in zip(chans[:-1], chans[1:]))
        self.final_conv = EqualConv(chans[-1] + 1, chans[-1], 3, 1)
        self.fc = nn.Linear(chans[-1] * 16, 1)

    def forward(self, x):
        x = F.leaky_relu(self.from_rgb(x), 0.2)
        for c1, c2 in self.blocks:
            x = F.avg_pool2d(F.leaky_relu(c2(F.leaky_relu(c1(x), 0.2)), 0.2), 2)
        x = F.leaky_relu(self.final_conv(torch.cat([x, minibatch_std(x)], 1)), 0.2)
        return self.fc(x.flatten(1))


def init_generator(seed: int) -> PGGANGenerator:
    g = torch.Generator().manual_seed(seed)
    gen = PGGANGenerator(TOYROOM_SIZES, output_clamp=False)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) if name.endswith("conv.weight") else torch.zeros(p.shape))
    return gen


class Trainer:
    def __init__(self, seed=0, lr=0.002, batch=32, r1_gamma=1.0, r1_every=4, ema_decay=0.999):
        torch.manual_seed(seed)
        self.gen, self.disc = init_generator(seed), Discriminator()
        self.ema = copy.deepcopy(self.gen).eval()
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
        self.batch, self.r1_gamma, self.r1_every, self.ema_decay = batch, r1_gamma, r1_every, ema_decay
        self.step = 0

    def train_step(self, real: torch.Tensor) -> dict:
        z = torch.randn(len(real), self.gen.z_dim)
        # discriminator
        fake = self.gen.forward(z).detach()
        loss_d = F.softplus(self.disc(fake)).mean() + F.softplus(-self.disc(real)).mean()
        r1 = torch.zeros(())
        if self.step % self.r1_every == 0:
            real_r = real.detach().requires_grad_()
            (grad,) = torch.autograd.grad(self.disc(real_r).sum(), real_r, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            loss_d = loss_d + self.r1_gamma / 2 * r1 * self.r1_every
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        # generator
        loss_g = F.softplus(-self.disc(self.gen.forward(torch.randn(len(real), self.gen.z_dim)))).mean()
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        with torch.no_grad():  # fixed decay; export() removes the initial weights' share (bias correction)
            for e, p in zip(self.ema.parameters(), self.gen.parameters()):
                e.lerp_(p, 1 - self.ema_decay)
        self.step += 1
        return {"step": self.step, "loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()),
                "r1": float(r1.detach())}

    def state_dict(self):
        return {"gen": self.gen.state_dict(), "disc": self.disc.state_dict(), "ema": self.ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state):
        self.gen.load_state_dict(state["gen"])
        self.disc.load_state_dict(state["disc"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = state["step"]
        if "rng" in state:  # else (a checkpoint from before it was saved) the resumed run replays the latents
            torch.set_rng_state(state["rng"])


def corrected_ema(state: dict, seed: int, decay: float = 0.999) -> dict:
    """The EMA of a run with fixed decay, without its share of the initial weights.

    After T steps the EMA is decay^T * init + (1 - decay) * sum(...); the initial weights are known
    exactly (``init_generator(seed)``), so e_corrected = (e - decay^T init) / (1 - decay^T), like Adam's
    bias correction. Matters for short runs: after 2,000 steps at 0.999, 14 % of the EMA is still init.
    """
    init = init_generator(seed).state_dict()
    w = decay ** state["step"]
    return {k: (v - w * init[k]) / (1 - w) if v.is_floating_point() else v for k, v in state["ema"].items()}
