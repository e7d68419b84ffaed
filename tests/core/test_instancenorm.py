"""Instance norm (StyleGAN's AdaIN) as a DID norm site: the module, a planted ground truth whose DID the
algebra predicts, and the one-pass arms against an independent float64 implementation."""
import math

import pytest
import torch
from intervention_cases import random_intervention
from torch import nn
from torch.nn import functional as F

from gandid.hooks import norm_overrides
from gandid.intervene import (
    CONTROLLABLE,
    BetaControl,
    Intervention,
    counterfactuals,
    counterfactuals_naive,
    run_with_betas,
)
from gandid.model import InstanceNorm, LayerInfo, NormSite, PixelNorm, normal_rows

EPS = 1e-5


# -- the module ------------------------------------------------------------------------------------

def test_instance_norm_equals_torch_and_a_float64_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, 7, generator=g, dtype=torch.float64) * 3 + 1
    norm = InstanceNorm()
    torch.testing.assert_close(norm(x), nn.InstanceNorm2d(5)(x), rtol=1e-10, atol=1e-10)  # eps 1e-5 like torch's
    flat = x.flatten(2)
    mean = flat.sum(2) / flat.shape[2]
    std = torch.sqrt(((flat - mean[..., None]) ** 2).sum(2) / flat.shape[2] + EPS)
    stats = norm.statistics(x)
    assert stats.shape == (3, 2, 5)
    torch.testing.assert_close(stats[:, 0], mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats[:, 1], std, rtol=1e-12, atol=1e-12)
    # channels_last features give the same statistics and output
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(norm(xc), norm(x), rtol=1e-12, atol=1e-12)


def test_override_replaces_the_statistics_and_wrong_shapes_are_named():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    norm = InstanceNorm()
    seen = {}
    fixed = torch.stack([torch.full((2, 3), 0.5), torch.full((2, 3), 2.0)], 1).double()

    def override(stats):
        seen["stats"] = stats
        return fixed

    norm.override = override
    torch.testing.assert_close(norm(x), (x - 0.5) / 2.0)
    torch.testing.assert_close(seen["stats"], InstanceNorm().statistics(x))
    norm.override = lambda stats: stats[:, :, :2]
    with pytest.raises(ValueError, match=r"statistics must be \(N, 2, C\) = \(2, 2, 3\) for features of shape "
                                         r"\(2, 3, 4, 4\), got \(2, 2, 2\)"):
        norm(x)


# -- a planted ground truth -------------------------------------------------------------------------
#
# Layer ``feat`` (3 units, 8x8) from z; a 1x1 mixing layer ``mix`` (2 channels) sums units 0 and 1
# into channel 0 and passes unit 2 to channel 1, as any conv after a layer mixes its units; the
# instance norm ``paint.norm`` normalises ``mix``; the image shows normalised channel 0 as red and
# channel 1 as blue (evidence values, upsampled 2x); the segmenter calls a pixel red or blue above 1.2.
#
# - unit 0: a red object of amplitude A = 2.5 + 0.5 tanh(z3) in the top-left 4x4 square (16 of 64
#   pixels), present when z0 > 0;
# - unit 1: a faint pattern (0.3) under it, in the same square (the object's texture, carried by
#   another unit);
# - unit 2: a blue object B = 2.5 + 0.5 tanh(z4) in the top-right square, present when z1 > 0; it
#   is alone in its mixed channel.
#
# Algebra. A channel that is c on the 16 square pixels and 0 elsewhere has mean c/4, variance
# 3c^2/16, and normalises to (3c/4)/sqrt(3c^2/16 + eps) ~ sqrt(3) = 1.73 on the square and
# -1/sqrt(3) elsewhere, whatever c is: instance norm is blind to the channel's scale.
# - Ablating unit 0 leaves c = 0.3: the faint pattern is renormalised to the same 1.73 and red
#   reappears on the whole square (Y(β',u')). With the original statistics (Y(β,u')) it is
#   (0.3 - (A+0.3)/4) / σ < 0: no red. With the ablated statistics the original features are A/σ'
#   and more: red (Y(β',u)). So the red area DID is [1/4 - 1/4] - [0 - 1/4] = +1/4 of the image per
#   sample with red: instance norm in-paints the removed object from what is left in its channel.
#   In pixel space ΔY = -A (1/σ' - 1/σ) on the square's red channel, 0 elsewhere.
# - Ablating unit 2 leaves its channel empty: it normalises to 0 (no blue), and with the original
#   statistics to -1/sqrt(3) (no blue): area DID [0 - 1/4] - [0 - 1/4] = 0, nothing to rescale. (The
#   swapped arm divides the original blue by sqrt(eps): instance norm's statistics of an emptied
#   channel are extreme, see docs/normalisation.md.)

RED_SQ = (slice(0, 4), slice(0, 4))
BLUE_SQ = (slice(0, 4), slice(4, 8))
UNDER = 0.3
THRESHOLD = 1.2


class Features(nn.Module):
    def forward(self, z):
        n = len(z)
        x = torch.zeros(n, 3, 8, 8, dtype=z.dtype)
        red, blue = (z[:, 0] > 0).to(z.dtype), (z[:, 1] > 0).to(z.dtype)
        x[:, 0, RED_SQ[0], RED_SQ[1]] = ((2.5 + 0.5 * torch.tanh(z[:, 3])) * red).view(n, 1, 1)
        x[:, 1, RED_SQ[0], RED_SQ[1]] = (UNDER * red).view(n, 1, 1)
        x[:, 2, BLUE_SQ[0], BLUE_SQ[1]] = ((2.5 + 0.5 * torch.tanh(z[:, 4])) * blue).view(n, 1, 1)
        return x


class Mix(nn.Module):
    def forward(self, x):
        return torch.stack([x[:, 0] + x[:, 1], x[:, 2]], 1)


class InstanceNormWorld(nn.Module):
    z_dim, resolution = 5, 16

    def __init__(self):
        super().__init__()
        self.feat, self.mix, self.norm = Features(), Mix(), InstanceNorm()
        self.layers = [LayerInfo("feat", 3, (8, 8)), LayerInfo("mix", 2, (8, 8))]
        self.norm_sites = [NormSite("paint.norm", "instancenorm", "mix")]

    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim)

    def layer_module(self, name):
        return {"feat": self.feat, "mix": self.mix}[name]

    def norm_module(self, site):
        return self.norm

    def forward(self, z):
        return self.forward_from("feat", self.feat(z), z)

    def forward_from(self, layer, x, z):
        if layer == "feat":
            x = self.mix(x)
        n = self.norm(x)
        img = torch.stack([n[:, 0], torch.zeros_like(n[:, 0]), n[:, 1]], 1)
        return F.interpolate(img, scale_factor=2, mode="nearest")


def areas(images):
    """(N, 2): the red and blue shares of each image (evidence above the threshold)."""
    return torch.stack([(images[:, 0] > THRESHOLD).double().mean((1, 2)),
                        (images[:, 2] > THRESHOLD).double().mean((1, 2))], 1)


def square_channel(c):
    """What instance norm gives a channel that is c on 16 of 64 pixels, 0 elsewhere: (on, off, σ)."""
    sigma = math.sqrt(3 * c * c / 16 + EPS)
    return (c - c / 4) / sigma, -(c / 4) / sigma, sigma


def test_planted_red_object_is_inpainted_from_what_is_left_in_its_channel():
    gen = InstanceNormWorld()
    z = gen.sample_z(64, seed=3).double()
    red = z[:, 0] > 0
    assert 10 < int(red.sum()) < 54
    assert BetaControl().resolve(gen, "feat") == ["paint.norm"]
    arms = counterfactuals(gen, z, Intervention("feat", [0]))
    a = {k: areas(getattr(arms, k)) for k in ("original", "intervened", "intervened_fixed_beta",
                                                   "original_swapped_beta")}
    # Y(β,u): red on the square; Y(β',u'): red again (in-painted); Y(β,u'): none; Y(β',u): red
    expect_red = torch.where(red, 0.25, 0.0).double()
    torch.testing.assert_close(a["original"][:, 0], expect_red)
    torch.testing.assert_close(a["intervened"][:, 0], expect_red)
    torch.testing.assert_close(a["intervened_fixed_beta"][:, 0], torch.zeros(64, dtype=torch.float64))
    torch.testing.assert_close(a["original_swapped_beta"][:, 0], expect_red)
    did_area = (a["intervened"] - a["original_swapped_beta"]) - (a["intervened_fixed_beta"] - a["original"])
    torch.testing.assert_close(did_area[:, 0], expect_red)  # +1/4 per image with red, 0 without
    torch.testing.assert_close(did_area[:, 1], torch.zeros(64, dtype=torch.float64))  # blue untouched
    assert float(did_area[:, 0].mean()) > 0.05

    # the pixel DID, exactly: -A (1/σ' - 1/σ) on the red square's red channel, 0 everywhere else
    amp = 2.5 + 0.5 * torch.tanh(z[:, 3])
    expected = torch.zeros(64, 3, 16, 16, dtype=torch.float64)
    for i in torch.nonzero(red).flatten().tolist():
        on, _, sigma = square_channel(float(amp[i]) + UNDER)
        on_ablated, _, sigma_ablated = square_channel(UNDER)
        assert on > THRESHOLD and on_ablated > THRESHOLD  # both sqrt(3) up to eps: scale does not matter
        expected[i, 0, 0:8, 0:8] = -float(amp[i]) * (1 / sigma_ablated - 1 / sigma)
    torch.testing.assert_close(arms.did, expected, rtol=1e-10, atol=1e-10)


def test_planted_blue_object_alone_in_its_channel_is_not_inpainted():
    gen = InstanceNormWorld()
    z = gen.sample_z(64, seed=4).double()
    blue = z[:, 1] > 0
    arms = counterfactuals(gen, z, Intervention("feat", [2]))
    a = {k: areas(getattr(arms, k)) for k in ("original", "intervened", "intervened_fixed_beta",
                                                   "original_swapped_beta")}
    expect_blue = torch.where(blue, 0.25, 0.0).double()
    torch.testing.assert_close(a["original"][:, 1], expect_blue)
    torch.testing.assert_close(a["intervened"][:, 1], torch.zeros(64, dtype=torch.float64))  # removed for good
    torch.testing.assert_close(a["intervened_fixed_beta"][:, 1], torch.zeros(64, dtype=torch.float64))
    did_area = (a["intervened"] - a["original_swapped_beta"]) - (a["intervened_fixed_beta"] - a["original"])
    torch.testing.assert_close(did_area, torch.zeros(64, 2, dtype=torch.float64))
    # the emptied channel's statistics: mean 0, std sqrt(eps), so the swapped arm amplifies by 1/sqrt(eps)
    _, stats = run_with_betas(gen, z, Intervention("feat", [2]), record=True)
    torch.testing.assert_close(stats["paint.norm"][:, 1, 1], torch.full((64,), math.sqrt(EPS), dtype=torch.float64))
    amp = 2.5 + 0.5 * torch.tanh(z[blue, 4])
    torch.testing.assert_close(arms.original_swapped_beta[blue][:, 2, 0, 8], amp / math.sqrt(EPS))


def test_planted_world_matches_naive_passes():
    gen = InstanceNormWorld()
    z = gen.sample_z(16, seed=5).double()
    for iv in (Intervention("feat", [0]), Intervention("feat", [0, 2], alpha=0.5),
               Intervention("mix", [0], region=(torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) > 0.5),
                            value=0.7)):
        got, want = counterfactuals(gen, z, iv), counterfactuals_naive(gen, z, iv)
        for name in ("original", "intervened", "intervened_fixed_beta", "original_swapped_beta"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-10)


# -- random networks with pixel norm and instance norm, against an independent float64 forward -------

class MixedNet(nn.Module):
    """z (N, 6) -> l1 (8, 4x4) -> pixel norm -> conv, 2x up -> l2 (8, 8x8) -> instance norm, style affine
    -> conv -> l3 (6, 8x8) -> instance norm -> 1x1 conv -> tanh image (3, 8x8)."""

    z_dim, resolution = 6, 8

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Parameter(torch.randn(8 * 16, 6, generator=g) * 0.5)
        self.c2 = nn.Parameter(torch.randn(8, 8, 3, 3, generator=g) * 0.3)
        self.style = nn.Parameter(torch.randn(16, 6, generator=g) * 0.3)
        self.c3 = nn.Parameter(torch.randn(6, 8, 3, 3, generator=g) * 0.3)
        self.rgb = nn.Parameter(torch.randn(3, 6, 1, 1, generator=g) * 0.5)
        self.l1, self.l2, self.l3 = nn.LeakyReLU(0.2), nn.LeakyReLU(0.2), nn.LeakyReLU(0.2)
        self.pn, self.in2, self.in3 = PixelNorm(), InstanceNorm(), InstanceNorm()
        self.layers = [LayerInfo("l1", 8, (4, 4)), LayerInfo("l2", 8, (8, 8)), LayerInfo("l3", 6, (8, 8))]
        self.norm_sites = [NormSite("l2.pn", "pixelnorm", "l1"), NormSite("l3.in", "instancenorm", "l2"),
                           NormSite("out.in", "instancenorm", "l3")]

    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim)

    def layer_module(self, name):
        return getattr(self, name)

    def norm_module(self, site):
        return {"l2.pn": self.pn, "l3.in": self.in2, "out.in": self.in3}[site]

    def forward(self, z):
        return self.forward_from("l1", self.l1((z @ self.fc.t()).view(-1, 8, 4, 4)), z)

    def forward_from(self, layer, x, z):
        if layer == "l1":
            x = F.interpolate(F.conv2d(self.pn(x), self.c2, padding=1), scale_factor=2)
            x = self.l2(x + 0.1)
        if layer in ("l1", "l2"):
            gamma, beta = (z @ self.style.t()).chunk(2, 1)
            x = self.in2(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            x = self.l3(F.conv2d(x, self.c3, padding=1))
        return torch.tanh(F.conv2d(self.in3(x), self.rgb))


def independent_run(net, z, edit=None, stats_in=None):
    """MixedNet's forward written out again in float64 with explicit record / replace of every site's
    coefficients: β (N, 1, h, w) at the pixel norm, (mean, std) as (N, 2, C) at the instance norms."""
    record, stats_in = {}, stats_in or {}
    p = {k: v.detach().double() for k, v in net.named_parameters()}

    def lrelu(x):
        return torch.where(x > 0, x, 0.2 * x)

    def inorm(x, site):
        m = x.mean((2, 3))
        s = torch.sqrt(((x - m[..., None, None]) ** 2).mean((2, 3)) + EPS)
        record[site] = torch.stack([m, s], 1)
        use = stats_in.get(site, record[site])
        return (x - use[:, 0, :, None, None]) / use[:, 1, :, None, None]

    def maybe_edit(name, x):
        return edit[name](x) if edit and name in edit else x

    x = maybe_edit("l1", lrelu((z @ p["fc"].t()).view(-1, 8, 4, 4)))
    beta = torch.sqrt((x * x).mean(1, keepdim=True) + 1e-8)
    record["l2.pn"] = beta
    x = x / stats_in.get("l2.pn", beta)
    x = F.conv2d(x, p["c2"], padding=1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    x = maybe_edit("l2", lrelu(x + 0.1))
    gamma, b = (z @ p["style"].t()).chunk(2, 1)
    x = inorm(x, "l3.in") * (1 + gamma[:, :, None, None]) + b[:, :, None, None]
    x = maybe_edit("l3", lrelu(F.conv2d(x, p["c3"], padding=1)))
    return torch.tanh(F.conv2d(inorm(x, "out.in"), p["rgb"])), record


def edit_fn(iv, dtype=torch.float64):
    """r' = r - α m (r - k) at the units; α and k as the float32 numbers an Intervention holds."""
    def fn(x):
        c = x.shape[1]
        a = torch.zeros(c, dtype=dtype)
        a[list(iv.units)] = torch.as_tensor(iv.alpha, dtype=torch.float32).to(dtype)
        m = a.view(1, c, 1, 1) * (1 if iv.region is None else iv.region.to(dtype))
        k = torch.zeros(c, dtype=dtype)
        if iv.value is not None:
            k[list(iv.units)] = torch.as_tensor(iv.value, dtype=torch.float32).to(dtype)
        return x - m * (x - k.view(1, c, 1, 1))
    return fn


def independent_arms(net, z, iv, controlled):
    original, rec = independent_run(net, z)
    intervened, rec_iv = independent_run(net, z, {iv.layer: edit_fn(iv)})
    fixed, _ = independent_run(net, z, {iv.layer: edit_fn(iv)}, {s: rec[s] for s in controlled})
    swapped, _ = independent_run(net, z, None, {s: rec_iv[s] for s in controlled})
    return original, intervened, fixed, swapped


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("layer, kind", [("l1", "ablate"), ("l2", "ablate"), ("l2", "insert_region"),
                                         ("l3", "insert_region")])
def test_arms_equal_independent_float64_passes(seed, layer, kind):
    net = MixedNet(seed).double()
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    iv = random_intervention(net, layer, kind, seed, values=(2.0, -1.0, 0.5))
    controlled = BetaControl().resolve(net, layer)
    assert controlled == {"l1": ["l2.pn", "l3.in", "out.in"], "l2": ["l3.in", "out.in"], "l3": ["out.in"]}[layer]
    expected = independent_arms(net, z, iv, controlled)
    names = ("original", "intervened", "intervened_fixed_beta", "original_swapped_beta")
    for arms in (counterfactuals(net, z, iv), counterfactuals(net, z, iv, memory_budget=1),  # one latent per chunk
                 counterfactuals_naive(net, z, iv)):
        assert arms.sites == controlled
        for name, want in zip(names, expected):
            torch.testing.assert_close(getattr(arms, name), want, rtol=1e-10, atol=1e-10, msg=name)
    # the instance norms did change under the intervention (so borrowing was exercised)
    assert float((expected[1] - expected[2]).abs().max()) > 1e-3


def test_record_and_replay_instance_norm_statistics():
    net = MixedNet(2).double()
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    iv = Intervention("l2", [1, 4])
    images, rec = run_with_betas(net, z, record=True)
    want, want_rec = independent_run(net, z)
    torch.testing.assert_close(images, want, rtol=1e-10, atol=1e-10)
    assert set(rec) == {"l2.pn", "l3.in", "out.in"}
    assert rec["l3.in"].shape == (4, 2, 8) and rec["out.in"].shape == (4, 2, 6) and rec["l2.pn"].shape == (4, 1, 4, 4)
    for site in rec:
        torch.testing.assert_close(rec[site], want_rec[site], rtol=1e-10, atol=1e-10)
    # replaying the original statistics into the intervened pass is the Y(β,u') arm
    fixed, _ = run_with_betas(net, z, iv, {s: rec[s] for s in ("l3.in", "out.in")})
    torch.testing.assert_close(fixed, counterfactuals(net, z, iv).intervened_fixed_beta, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"replayed coefficients for norm site 'l3.in' have shape \(2, 2, 8\), "
                                         r"but this pass computes \(4, 2, 8\)"):
        run_with_betas(net, z, (), {"l3.in": rec["l3.in"][:2]})
    with pytest.raises(KeyError, match="did you mean 'l3.in'"):
        run_with_betas(net, z, (), {"l3.inn": rec["l3.in"]})


def test_instance_norm_is_controllable_and_overrides_are_removed():
    assert "instancenorm" in CONTROLLABLE
    net = MixedNet(3).double()
    z = torch.randn(2, 6, dtype=torch.float64)
    assert BetaControl(sites=["out.in"]).resolve(net, "l1") == ["out.in"]
    only = counterfactuals(net, z, Intervention("l2", [0]), BetaControl(sites=[]))
    torch.testing.assert_close(only.intervened_fixed_beta, only.intervened, rtol=0, atol=0)
    with pytest.raises(RuntimeError), norm_overrides(net, {"out.in": lambda s: s}):
        raise RuntimeError
    assert net.in3.override is None and net.in2.override is None
