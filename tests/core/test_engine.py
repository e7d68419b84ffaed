"""The one-pass DID engine against independent naive computations."""
import math

import pytest
import torch
from pggan_files import make_state_dict
from torch import nn

from gandid.intervene import BetaControl, Intervention, counterfactuals, per_unit, run_with_betas, variants
from gandid.model import LayerInfo, NormSite, PixelNorm
from gandid_plugins.generators.pggan import PGGANGenerator


def naive_norm(record, site, beta_from=None):
    """A plain-PyTorch pixel norm that records its own β and divides by ``beta_from[site]`` if given."""
    def fn(x):
        beta = torch.sqrt((x * x).mean(1, keepdim=True) + 1e-8)
        record[site] = beta
        return x / (beta_from[site] if beta_from is not None and site in beta_from else beta)

    return fn


def naive_run(gen, z, iv=None, beta_from=None, controlled=()):
    """A separate forward pass with hooks: ablate/insert at the layer, record β everywhere, and
    override β at the controlled sites from another run's recording (what GAN Dissection's hooks do)."""
    record, handles = {}, []
    for site in gen.norm_sites:
        module = gen.norm_module(site.name)
        module.override = naive_norm(record, site.name,
                                     {k: v for k, v in (beta_from or {}).items() if k in controlled})
    if iv is not None:
        def edit(module, inputs, out):
            c, dt = out.shape[1], out.dtype
            a = torch.zeros(c, dtype=dt)
            a[list(iv.units)] = torch.as_tensor(iv.alpha, dtype=dt)
            m = a.view(1, c, 1, 1) * (1 if iv.region is None else iv.region.to(dt))
            k = torch.zeros(c, dtype=dt)
            if iv.value is not None:
                k[list(iv.units)] = torch.as_tensor(iv.value, dtype=dt)
            return out - m * (out - k.view(1, c, 1, 1))
        handles.append(gen.layer_module(iv.layer).register_forward_hook(edit))
    try:
        with torch.no_grad():
            images = gen.forward(z)
    finally:
        for h in handles:
            h.remove()
        for site in gen.norm_sites:
            gen.norm_module(site.name).override = None
    return images, record


def _arms_naive(gen, z, iv, controlled):
    original, rec_orig = naive_run(gen, z)
    ablated, rec_abl = naive_run(gen, z, iv)
    fixed, _ = naive_run(gen, z, iv, beta_from=rec_orig, controlled=controlled)
    swapped, _ = naive_run(gen, z, None, beta_from=rec_abl, controlled=controlled)
    return original, ablated, fixed, swapped


@pytest.mark.parametrize("resolution, layer", [(16, "layer2"), (32, "layer4"), (64, "layer5"), (64, "layer8")])
@pytest.mark.parametrize("kind", ["ablate", "insert_region"])
def test_each_arm_equals_naive_separate_passes(resolution, layer, kind):
    """With the reference op (and NCHW convolutions, as the naive passes use) the one-pass engine
    equals four separate hooked passes to 1e-5 in float32. The default path (fused op, channels_last
    convolutions) cannot be held to that: on these random-weight generators the float32 naive passes
    themselves differ from float64 by up to ~2e-4 (the net amplifies rounding), so it is held to the
    float32 naive's own error against a float64 naive."""
    state = make_state_dict(resolution, seed=resolution)
    gen = PGGANGenerator.from_state_dict(state).eval()
    z = gen.sample_z(5, seed=1)
    info = next(l for l in gen.layers if l.name == layer)
    g = torch.Generator().manual_seed(0)
    units = torch.randperm(info.channels, generator=g)[:3].tolist()
    if kind == "ablate":
        iv = Intervention(layer, units)
    else:
        iv = Intervention(layer, units, region=(torch.rand(*info.size, generator=g) > 0.5).float(),
                          alpha=[1.0, 0.5, 0.8], value=[2.0, 3.0, 1.5])
    controlled = BetaControl().resolve(gen, layer)
    naive32 = _arms_naive(gen, z, iv, controlled)
    gen64 = PGGANGenerator.from_state_dict(state).double().eval()
    naive64 = _arms_naive(gen64, z.double(), iv, controlled)
    with torch.no_grad():
        untouched = gen.forward(z)

    ref = counterfactuals(gen, z, iv, backend="reference", channels_last=False)  # same conv algorithms as naive
    got = (ref.original, ref.intervened, ref.intervened_fixed_beta, ref.original_swapped_beta)
    for arm, expected in zip(got, naive32):
        torch.testing.assert_close(arm, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref.original, untouched, rtol=1e-5, atol=1e-5)  # Y(β,u) = the generator

    fused = counterfactuals(gen, z, iv)
    got = (fused.original, fused.intervened, fused.intervened_fixed_beta, fused.original_swapped_beta)
    for name, arm, e32, e64 in zip(("Y(b,u)", "Y(b',u')", "Y(b,u')", "Y(b',u)"), got, naive32, naive64):
        naive_error = float((e32.double() - e64).abs().max())
        error = float((arm.double() - e64).abs().max())
        assert error <= max(1e-5, 2 * naive_error), f"{name}: {error:.3g} vs naive float32's {naive_error:.3g}"
    assert (fused.intervened - fused.original).abs().max() > 1e-3  # the intervention did something
    assert fused.sites[0] == f"layer{int(layer[5:]) + 1}.norm"


def test_empty_intervention_gives_zero_did():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32)).eval()
    arms = counterfactuals(gen, gen.sample_z(4, seed=0), Intervention("layer4", []))
    assert arms.did.abs().max() == 0
    torch.testing.assert_close(arms.intervened, arms.original, rtol=0, atol=0)


def test_chunking_gives_the_same_arms():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32)).eval()
    z = gen.sample_z(7, seed=2)
    iv = Intervention("layer4", [0, 3, 5])
    whole = counterfactuals(gen, z, iv)
    chunked = counterfactuals(gen, z, iv, memory_budget=1)  # one latent per chunk
    for a, b in zip((whole.original, whole.intervened, whole.intervened_fixed_beta, whole.original_swapped_beta),
                    (chunked.original, chunked.intervened, chunked.intervened_fixed_beta,
                     chunked.original_swapped_beta)):
        # oneDNN picks convolution algorithms by batch size, so rows differ at float32 rounding level
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def test_record_and_replay_reproduce_the_borrowing_arms():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32, seed=3)).eval()
    z = gen.sample_z(3, seed=5)
    iv = Intervention("layer4", [1, 2])
    controlled = BetaControl().resolve(gen, "layer4")
    with torch.no_grad():
        plain, betas = run_with_betas(gen, z, record=True)
        _, betas_abl = run_with_betas(gen, z, iv, record=True)
        fixed, _ = run_with_betas(gen, z, iv, beta_in={s: betas[s] for s in controlled})
    arms = counterfactuals(gen, z, iv)
    # different batch sizes (3 vs 12 rows) run different oneDNN conv algorithms: float32 rounding only
    torch.testing.assert_close(plain, arms.original, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(fixed, arms.intervened_fixed_beta, rtol=1e-5, atol=5e-5)
    assert set(betas) == {s.name for s in gen.norm_sites}


def test_beta_control_subset_and_errors():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32)).eval()
    z = gen.sample_z(2, seed=0)
    iv = Intervention("layer4", [0])
    none = counterfactuals(gen, z, iv, BetaControl(sites=[]))
    torch.testing.assert_close(none.intervened_fixed_beta, none.intervened)  # nothing borrowed
    torch.testing.assert_close(none.original_swapped_beta, none.original)
    with pytest.raises(KeyError, match="did you mean 'layer5.norm'"):
        counterfactuals(gen, z, iv, BetaControl(sites=["layer5.nrom"]))
    with pytest.raises(ValueError, match=r"invalid unit indices \[99\] for layer 'layer4', which has 16 units"):
        counterfactuals(gen, z, Intervention("layer4", [0, 99]))
    with pytest.raises(KeyError, match="unknown layer 'layer44'"):
        counterfactuals(gen, z, Intervention("layer44", [0]))


def test_per_unit_matches_one_full_forward_per_unit():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32, seed=4)).eval()
    z = gen.sample_z(3, seed=1)
    value = torch.rand(16) * 3
    region = torch.zeros(8, 8)
    region[2:6, 1:5] = 1
    for kwargs in ({}, {"value": value, "region": region, "alpha": 0.7}):
        got = {}
        for chunk, images in per_unit(gen, z, "layer4", [0, 5, 9, 15], memory_budget=200_000, **kwargs):
            got.update(zip(chunk, images))
        assert sorted(got) == [0, 5, 9, 15]
        for u, images in got.items():
            iv = Intervention("layer4", [u], kwargs.get("region"), kwargs.get("alpha", 1.0),
                              None if "value" not in kwargs else [float(value[u])])
            expected, _ = naive_run(gen, z, iv)
            torch.testing.assert_close(images, expected, rtol=1e-5, atol=5e-5)  # batch sizes differ, as above


def test_variants_match_one_full_forward_each():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32, seed=5)).eval()
    z = gen.sample_z(3, seed=2)
    region = torch.zeros(8, 8)
    region[1:4, 2:7] = 1
    ivs = [Intervention("layer4", [3]), Intervention("layer4", [0, 7, 11], value=[2.0, -1.0, 0.5]),
           Intervention("layer4", [1, 2], region=region, alpha=0.6), Intervention("layer4", [])]
    got = {}
    for chunk, images in variants(gen, z, ivs, memory_budget=200_000):
        got.update(zip(chunk, images))
    assert sorted(got) == [0, 1, 2, 3]
    for i, iv in enumerate(ivs):
        expected, _ = naive_run(gen, z, iv)
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=5e-5)
    with pytest.raises(ValueError, match="one layer"):
        list(variants(gen, z, [Intervention("layer4", [0]), Intervention("layer3", [0])]))


class TwoLayer(nn.Module):
    """z (N, 2) -> a = [z0, z1, 1] at 1x1 -> site b.norm -> b = 2 * norm(a) -> site out.norm -> image."""

    z_dim, resolution = 2, 1

    def __init__(self):
        super().__init__()
        self.a = nn.Identity()
        self.b_norm, self.out_norm = PixelNorm(), PixelNorm()
        self.b = nn.Identity()
        self.layers = [LayerInfo("a", 3, (1, 1)), LayerInfo("b", 3, (1, 1))]
        self.norm_sites = [NormSite("b.norm", "pixelnorm", "a"), NormSite("out.norm", "pixelnorm", "b")]

    def layer_module(self, name):
        return getattr(self, name)

    def norm_module(self, site):
        return {"b.norm": self.b_norm, "out.norm": self.out_norm}[site]

    def forward(self, z):
        a = self.a(torch.cat([z, torch.ones(len(z), 1)], 1).view(-1, 3, 1, 1))
        return self.forward_from("a", a, z)

    def forward_from(self, layer, x, z):
        if layer == "a":
            x = self.b(2 * self.b_norm(x))
        return self.out_norm(x) + x  # the image sees both the normalised and the raw features


def test_hand_computed_two_layer_network():
    gen = TwoLayer()
    z = torch.tensor([[3.0, 4.0]])
    arms = counterfactuals(gen, z, Intervention("a", [0]), BetaControl(sites=["b.norm"]))
    # a = (3, 4, 1): β = sqrt(26/3). Ablating unit 0: a' = (0, 4, 1), β' = sqrt(17/3).
    beta, beta_abl = math.sqrt(26 / 3), math.sqrt(17 / 3)

    def image(a, b_norm_beta):
        b = [2 * v / b_norm_beta for v in a]
        out_beta = math.sqrt(sum(v * v for v in b) / 3 + 1e-8)
        return torch.tensor([v / out_beta + v for v in b]).view(1, 3, 1, 1)

    torch.testing.assert_close(arms.original, image([3, 4, 1], beta))
    torch.testing.assert_close(arms.intervened, image([0, 4, 1], beta_abl))
    torch.testing.assert_close(arms.intervened_fixed_beta, image([0, 4, 1], beta))
    torch.testing.assert_close(arms.original_swapped_beta, image([3, 4, 1], beta_abl))
    expected_did = (image([0, 4, 1], beta_abl) - image([3, 4, 1], beta_abl)) - (
        image([0, 4, 1], beta) - image([3, 4, 1], beta))
    torch.testing.assert_close(arms.did, expected_did)
    assert arms.did.abs().max() > 0.01
