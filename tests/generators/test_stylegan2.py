import argparse

import pytest
import torch
from safetensors.torch import save_file
from stylegan2_files import independent_forward, make_g_ema

from gandid.errors import CheckpointError
from gandid.hooks import Trace
from gandid.intervene import BetaControl, Intervention, counterfactuals, run_with_betas
from gandid_plugins.generators.stylegan2 import stylegan2


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_loads_rosinality_checkpoints_and_matches_an_independent_forward(size, tmp_path):
    s = make_g_ema(size, seed=size)
    torch.save({"g_ema": s, "latent_avg": torch.zeros(8)}, tmp_path / "ckpt.pt")
    gen = stylegan2(weights=str(tmp_path / "ckpt.pt"))
    assert gen.resolution == size and gen.z_dim == 8
    assert [l.name for l in gen.layers] == ["conv1"] + [f"convs.{j}" for j in range(len(gen.layers) - 1)]
    kinds = [site.kind for site in gen.norm_sites]
    assert kinds[0] == "pixelnorm" and set(kinds[1:]) == {"demod"}
    z = gen.sample_z(2, seed=3)
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.forward(z)
        s64 = {k: v.double() for k, v in s.items()}
        expected64 = independent_forward(s64, z.double())
    assert images.shape == (2, 3, size, size)
    assert float((images.double() - expected64).abs().max()) < 1e-3  # float32 vs float64, deep net
    gen64 = stylegan2(weights=str(tmp_path / "ckpt.pt")).double()
    with torch.no_grad():
        torch.testing.assert_close(gen64.forward(z.double()), expected64, rtol=1e-9, atol=1e-9)
    for info in gen.layers:
        assert trace[info.name].shape[1:] == (info.channels, *info.size)


def test_noise_is_fixed_so_images_depend_only_on_z(tmp_path):
    save_file(make_g_ema(16), str(tmp_path / "g.safetensors"))
    gen = stylegan2(weights=str(tmp_path / "g.safetensors"))
    z = gen.sample_z(3, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(gen.forward(z), gen.forward(z), rtol=0, atol=0)
        torch.testing.assert_close(gen.forward(z[1:2]), gen.forward(z)[1:2], rtol=1e-5, atol=1e-5)


def test_truncation_pulls_toward_the_average_latent(tmp_path):
    s = make_g_ema(16)
    avg = torch.randn(8)
    torch.save({"g_ema": s, "latent_avg": avg}, tmp_path / "c.pt")
    gen = stylegan2(weights=str(tmp_path / "c.pt"), truncation=0.5)
    z = gen.sample_z(2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(gen.forward(z).double(), independent_forward(
            {k: v.double() for k, v in s.items()}, z.double(), 0.5, avg.double()), rtol=0, atol=1e-3)
        w = gen.mapping(z)
        gen.truncation = 1.0
        torch.testing.assert_close(w, avg + 0.5 * (gen.mapping(z) - avg))


def test_training_checkpoint_with_args_namespace_loads(tmp_path):
    torch.save({"g_ema": make_g_ema(8), "args": argparse.Namespace(size=8, n_mlp=2)}, tmp_path / "train.pt")
    assert stylegan2(weights=str(tmp_path / "train.pt")).resolution == 8


def test_wrong_files_get_clear_errors(tmp_path):
    s = make_g_ema(16)
    del s["convs.0.noise.weight"]
    s["convs.1.conv.weight"] = torch.zeros(1, 16, 16, 5, 5)
    torch.save({"g_ema": s}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as exc:
        stylegan2(weights=str(tmp_path / "bad.pt"))
    assert "missing keys (1): convs.0.noise.weight" in str(exc.value)
    assert "convs.1.conv.weight: file has (1, 16, 16, 5, 5), expected (1, 16, 16, 3, 3)" in str(exc.value)
    torch.save({"layer1.conv.weight": torch.zeros(2)}, tmp_path / "pggan.pt")
    with pytest.raises(CheckpointError, match="not a rosinality StyleGAN2 generator"):
        stylegan2(weights=str(tmp_path / "pggan.pt"))


def test_did_on_demodulation_sites(tmp_path):
    torch.save({"g_ema": make_g_ema(32, seed=5)}, tmp_path / "c.pt")
    gen = stylegan2(weights=str(tmp_path / "c.pt"))
    z = gen.sample_z(3, seed=2)
    iv = Intervention("convs.1", [0, 2, 5])
    controlled = BetaControl().resolve(gen, "convs.1")
    assert controlled == ["convs.2.conv", "convs.3.conv", "convs.4.conv", "convs.5.conv"]
    arms = counterfactuals(gen, z, iv)
    with torch.no_grad():
        untouched = gen.forward(z)
        plain, d = run_with_betas(gen, z, record=True)
        ablated, d_abl = run_with_betas(gen, z, iv, record=True)
        fixed, _ = run_with_betas(gen, z, iv, {s: d[s] for s in controlled})
        swapped, _ = run_with_betas(gen, z, (), {s: d_abl[s] for s in controlled})
    for got, expected in ((arms.original, untouched), (arms.intervened, ablated),
                          (arms.intervened_fixed_beta, fixed), (arms.original_swapped_beta, swapped)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert d["convs.2.conv"].shape == (3, 8)
    assert (arms.intervened - arms.original).abs().max() > 1e-3  # the ablation did something
    # Weight demodulation depends on the style w only, not on the activations: ablating units leaves
    # every coefficient unchanged, so borrowing them changes nothing and DID attributes nothing to it.
    for site in controlled:
        torch.testing.assert_close(d[site], d_abl[site], rtol=0, atol=0)
    torch.testing.assert_close(arms.intervened_fixed_beta, arms.intervened, rtol=1e-6, atol=1e-6)
    assert arms.did.abs().max() < 1e-5
    # The override path is live: replaying another latent's coefficients changes the image.
    with torch.no_grad():
        _, d_other = run_with_betas(gen, gen.sample_z(3, seed=9), record=True)
        replayed, _ = run_with_betas(gen, z, (), {s: d_other[s] for s in controlled})
    assert (replayed - untouched).abs().max() > 1e-3
    empty = counterfactuals(gen, z, Intervention("convs.1", []))
    assert empty.did.abs().max() == 0


@pytest.mark.slow
def test_the_did_report_shows_demodulation_is_zero_by_construction(tmp_path):
    """ace and did end to end on a random StyleGAN2: the measured DID is ~0 and the report says why."""
    from gandid.testing import BrightnessSegmenter, run_analysis
    from gandid_plugins.analyses.ace import ACE
    from gandid_plugins.analyses.did import DID

    torch.save({"g_ema": make_g_ema(32, seed=5)}, tmp_path / "c.pt")
    gen = stylegan2(weights=str(tmp_path / "c.pt"))
    common = dict(generator=gen, segmenter=BrightnessSegmenter(), samples=4, layers=["convs.1"])
    out = tmp_path / "run"
    ace = run_analysis(ACE(samples=4, top_k=3, alpha_steps=2, alpha_samples=2, context_locations=2, curve_ks=[1, 3]),
                       out, name="ace", **common)
    did = run_analysis(DID(top_k=3, samples=4, resamples=200, panels=2), out, name="did", results={"ace": ace},
                       **common)
    assert did["site_kinds"] == ["demod"] and did["classes"]
    largest = max(abs(v["mean"]) for e in did["classes"].values() for v in e["area_did"].values())
    assert largest < 1e-6 and max(e["pixel_did_mean_abs"] for e in did["classes"].values()) < 1e-5
    said = " ".join(str(getattr(f, "html", f)) for f in DID().report_findings(did))
    assert "0 by construction" in said and "Measured here: largest |area DID|" in said
    assert "0 by construction" in DID().report_section(did, out)
