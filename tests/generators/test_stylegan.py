"""The StyleGAN (v1) plugin: rosinality/style-based-gan-pytorch checkpoints and the official network's
g_all layout (GANSpace / lernapparat), each forward against an independent float64 implementation,
AdaIN instance norms as DID sites, and clear errors."""
import pytest
import torch
from intervention_cases import random_intervention
from safetensors.torch import save_file
from stylegan_files import independent_forward, independent_g_all_forward, make_g_all_state_dict, make_state_dict

import gandid_plugins.generators.stylegan as stylegan_plugin
from gandid.contracts import check_contract
from gandid.errors import CheckpointError
from gandid.hooks import Trace
from gandid.intervene import BetaControl, Intervention, counterfactuals, counterfactuals_naive, run_with_betas
from gandid.model import Generator, InstanceNorm, PixelNorm
from gandid.registry import Registry
from gandid_plugins.generators.stylegan import StyleGANGAllGenerator, StyleGANGenerator, stylegan

ARMS = ("original", "intervened", "intervened_fixed_beta", "original_swapped_beta")


def training_checkpoint(path, g_running, generator=None):
    """What rosinality's train.py saves: both generators, the discriminator and the optimisers."""
    param = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([param], lr=1e-3, betas=(0.0, 0.99))
    torch.save({"generator": generator if generator is not None else g_running, "g_running": g_running,
                "discriminator": {"linear.linear.weight_orig": torch.zeros(1, 4)},
                "g_optimizer": adam.state_dict(), "d_optimizer": adam.state_dict()}, path)


@pytest.mark.parametrize("channels, fused", [((16, 16, 8, 8, 8), (False, False, False, True, True)),
                                             ((8, 12, 6), (False, False, False)),
                                             ((8, 8, 8, 4), (False, True, True, True))])
def test_loads_rosinality_checkpoints_and_matches_an_independent_forward(channels, fused, tmp_path):
    s = make_state_dict(channels, fused, seed=len(channels))
    training_checkpoint(tmp_path / "train_step-5.model", s)
    gen = stylegan(weights=str(tmp_path / "train_step-5.model"))
    size = 4 * 2 ** (len(channels) - 1)
    assert gen.resolution == size and gen.z_dim == 8
    assert gen.weights_info["state"] == "g_running"
    assert [(l.name, l.channels, l.size) for l in gen.layers] == [
        (f"{4 * 2 ** i}.conv{h}", c, (4 * 2 ** i,) * 2) for i, c in enumerate(channels) for h in (1, 2)]
    assert [(s.name, s.kind, s.layer) for s in gen.norm_sites] == [("style.0", "pixelnorm", None)] + [
        (f"{4 * 2 ** i}.adain{h}", "instancenorm", f"{4 * 2 ** i}.conv{h}") for i in range(len(channels))
        for h in (1, 2)]
    assert all(isinstance(gen.norm_module(s.name), InstanceNorm) for s in gen.norm_sites[1:])
    z = gen.sample_z(3, seed=2)
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.forward(z)
    noise = [n.double() for n in gen.noise_maps(z)]
    s64 = {k: v.double() for k, v in s.items()}
    expected = independent_forward(s64, z.double(), noise, len(channels) - 1)
    assert images.shape == (3, 3, size, size)
    assert float((images.double() - expected).abs().max()) < 1e-4  # float32 against float64
    assert float(expected.std()) > 0.1  # not a degenerate (all-clamped or constant) image
    gen64 = stylegan(weights=str(tmp_path / "train_step-5.model")).double()
    with torch.no_grad():
        torch.testing.assert_close(gen64.forward(z.double()), expected, rtol=1e-10, atol=1e-10)
    for info in gen.layers:
        assert trace[info.name].shape[1:] == (info.channels, *info.size)


def test_g_running_is_preferred_and_bare_state_dicts_and_safetensors_load(tmp_path):
    ema, raw = make_state_dict(seed=1), make_state_dict(seed=2)
    training_checkpoint(tmp_path / "t.pt", ema, raw)
    torch.save(ema, tmp_path / "000100.model")
    save_file(ema, str(tmp_path / "g.safetensors"))
    z = torch.randn(2, 8)
    with torch.no_grad():
        want = stylegan(weights=str(tmp_path / "t.pt")).forward(z)
        for name in ("000100.model", "g.safetensors"):
            gen = stylegan(weights=str(tmp_path / name))
            assert gen.weights_info["state"] == "bare state dict"
            torch.testing.assert_close(gen.forward(z), want, rtol=0, atol=0)
    torch.save({"generator": raw}, tmp_path / "only_generator.pt")
    assert stylegan(weights=str(tmp_path / "only_generator.pt")).weights_info["state"] == "generator"


def test_resolution_defaults_to_the_trained_blocks_and_can_be_chosen(tmp_path):
    # blocks past the third never trained: their noise weights are still rosinality's zeros
    s = make_state_dict(trained_blocks=3)
    torch.save({"g_running": s}, tmp_path / "c.pt")
    gen = stylegan(weights=str(tmp_path / "c.pt"))
    assert gen.resolution == 16 and gen.weights_info["resolution_from"].startswith("last block with trained")
    assert [l.name for l in gen.layers][-1] == "16.conv2"
    z = gen.sample_z(2, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(gen.forward(z).double(), independent_forward(
            {k: v.double() for k, v in s.items()}, z.double(), [n.double() for n in gen.noise_maps(z)], 2),
            rtol=0, atol=1e-4)
    gen32 = stylegan(weights=str(tmp_path / "c.pt"), resolution=32)
    assert gen32.resolution == 32 and gen32.weights_info["resolution_from"] == "option"
    for bad in (48, 128, 2):
        with pytest.raises(CheckpointError, match=rf"resolution must be one of \[4, 8, 16, 32, 64\] .*got {bad}"):
            stylegan(weights=str(tmp_path / "c.pt"), resolution=bad)


def test_noise_depends_only_on_each_latent(tmp_path):
    torch.save(make_state_dict(), tmp_path / "c.pt")
    gen = stylegan(weights=str(tmp_path / "c.pt"))
    z = gen.sample_z(3, seed=0)
    with torch.no_grad():  # other batch sizes: other conv algorithms, float32 rounding only
        torch.testing.assert_close(gen.forward(z), gen.forward(z), rtol=0, atol=0)
        torch.testing.assert_close(gen.forward(z[1:2]), gen.forward(z)[1:2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gen.forward(z[[2, 0]]), gen.forward(z)[[2, 0]], rtol=1e-4, atol=1e-4)
    noise = gen.noise_maps(torch.cat([z, z[:1]]))
    assert [tuple(n.shape) for n in noise] == [(4, 1, r, r) for r in (4, 8, 16, 32, 64)]
    torch.testing.assert_close(noise[-1][3], noise[-1][0], rtol=0, atol=0)  # the same latent, the same noise
    assert float((noise[-1][1] - noise[-1][0]).abs().max()) > 0.1  # another latent, other noise
    assert abs(float(noise[-1].std()) - 1) < 0.1
    gen.noise_mode = "const"
    const = gen.noise_maps(z)
    torch.testing.assert_close(const[2][0], const[2][1], rtol=0, atol=0)
    gen.noise_mode = "zero"
    assert all(float(n.abs().max()) == 0 for n in gen.noise_maps(z))
    with pytest.raises(CheckpointError, match="noise must be one of latent, const, zero, got 'random'"):
        stylegan(weights=str(tmp_path / "c.pt"), noise="random")


def test_truncation_pulls_toward_the_mean_style(tmp_path):
    s = make_state_dict(seed=4)
    torch.save(s, tmp_path / "c.pt")
    gen = stylegan(weights=str(tmp_path / "c.pt"), truncation=0.7)
    z = gen.sample_z(2, seed=1)
    with torch.no_grad():
        mean = gen.style(torch.randn(10 * 1024, 8, generator=torch.Generator().manual_seed(0))).mean(0)
        torch.testing.assert_close(gen.mean_style, mean)
        expected = independent_forward({k: v.double() for k, v in s.items()}, z.double(),
                                       [n.double() for n in gen.noise_maps(z)], 4, 0.7, mean.double())
        torch.testing.assert_close(gen.forward(z).double(), expected, rtol=0, atol=1e-4)
    with pytest.raises(CheckpointError, match=r"truncation must be in \(0, 1\]"):
        stylegan(weights=str(tmp_path / "c.pt"), truncation=0)


def test_registered_and_satisfies_the_generator_contract(tmp_path):
    torch.save(make_state_dict(), tmp_path / "c.pt")
    registry = Registry(load_entry_points=False)
    registry.add_plugin(stylegan_plugin, "stylegan")
    assert "stylegan" in registry.names("generator")
    gen = registry.create("generator", "stylegan", weights=str(tmp_path / "c.pt"), resolution=32)
    check_contract(gen, Generator, "generator 'stylegan'")
    assert gen.resolution == 32 and gen.default_layer in [l.name for l in gen.layers]
    with pytest.raises(KeyError, match="unknown layer '8.cnv1'; did you mean '8.conv1'"):
        gen.layer_module("8.cnv1")
    with pytest.raises(KeyError, match="unknown norm site '8.adian1'; did you mean '8.adain1'"):
        gen.norm_module("8.adian1")
    with pytest.raises(KeyError, match="unknown norm site '64.adain1'"):  # past the chosen resolution
        gen.norm_module("64.adain1")
    with pytest.raises(CheckpointError, match="needs a weights file"):
        stylegan()


def naive_arms(forward, gen, z, iv, controlled):
    """Four separate passes of an independent float64 forward ``forward(z, noise, edit=, stats_in=,
    record=)``: record each AdaIN's (mean, std) and replay them at the controlled sites, as GAN
    Dissection-style hooks would."""
    c = next(l.channels for l in gen.layers if l.name == iv.layer)
    alpha = torch.zeros(c, dtype=torch.float64)
    alpha[list(iv.units)] = torch.as_tensor(iv.alpha, dtype=torch.float32).double()
    value = torch.zeros(c, dtype=torch.float64)
    if iv.value is not None:
        value[list(iv.units)] = torch.as_tensor(iv.value, dtype=torch.float32).double()
    mask = alpha.view(1, c, 1, 1) * (1 if iv.region is None else iv.region.double())

    def edit(x):
        return x - mask * (x - value.view(1, c, 1, 1))

    noise = [n.double() for n in gen.noise_maps(z)]
    z = z.double()

    def run(edits=None, stats_in=None):
        record = {}
        image = forward(z, noise, edit=edits, stats_in=stats_in, record=record)
        return image, record

    original, rec = run()
    intervened, rec_iv = run({iv.layer: edit})
    fixed, _ = run({iv.layer: edit}, {k: rec[k] for k in controlled})
    swapped, _ = run(None, {k: rec_iv[k] for k in controlled})
    return original, intervened, fixed, swapped


def check_did_arms(gen, forward, layer, kind, seed=1):
    """counterfactuals and counterfactuals_naive on ``gen`` (float64) equal the independent naive arms."""
    z = gen.sample_z(4, seed=3).double()
    iv = random_intervention(gen, layer, kind, seed)
    controlled = BetaControl().resolve(gen, layer)
    names = [l.name for l in gen.layers]
    assert controlled == [f"{n.split('.')[0]}.adain{n[-1]}" for n in names[names.index(layer):]]
    expected = naive_arms(forward, gen, z, iv, controlled)
    one_pass, naive = counterfactuals(gen, z, iv), counterfactuals_naive(gen, z, iv)
    for arms in (one_pass, naive):
        for name, want in zip(ARMS, expected):
            torch.testing.assert_close(getattr(arms, name), want, rtol=1e-9, atol=1e-9, msg=name)
    # borrowing mattered: with the original statistics the intervened image is a different one
    assert float((one_pass.intervened_fixed_beta - one_pass.intervened).abs().max()) > 1e-3
    assert float(one_pass.did.abs().max()) > 1e-3


@pytest.mark.parametrize("layer, kind", [("8.conv2", "ablate"), ("16.conv1", "ablate"), ("16.conv1", "insert_region"),
                                         ("32.conv2", "insert_region")])
def test_did_arms_equal_naive_passes_with_recorded_statistics(layer, kind, tmp_path):
    s = make_state_dict(seed=7)
    torch.save({"g_running": s}, tmp_path / "c.pt")
    gen = stylegan(weights=str(tmp_path / "c.pt")).double()
    s64 = {k: v.double() for k, v in s.items()}

    def forward(z, noise, **hooks):
        return independent_forward(s64, z, noise, gen.step, **hooks)

    check_did_arms(gen, forward, layer, kind)


def test_did_in_float32_and_record_replay(tmp_path):
    torch.save(make_state_dict(seed=8), tmp_path / "c.pt")
    gen = stylegan(weights=str(tmp_path / "c.pt"))
    z = gen.sample_z(3, seed=4)
    iv = Intervention("16.conv1", [1, 2, 6])
    arms = counterfactuals(gen, z, iv)
    naive = counterfactuals_naive(gen, z, iv)
    exact = counterfactuals_naive(stylegan(weights=str(tmp_path / "c.pt")).double(), z.double(), iv)
    # Held to the float32 naive passes' own error against float64: Y(β',u) divides the original
    # features of the emptied channels by their ablated std, sqrt(eps), which amplifies float32 rounding
    for name in ARMS:
        naive_error = float((getattr(naive, name).double() - getattr(exact, name)).abs().max())
        error = float((getattr(arms, name).double() - getattr(exact, name)).abs().max())
        assert error <= max(1e-4, 2 * naive_error), f"{name}: {error:.3g} vs naive float32's {naive_error:.3g}"
    with torch.no_grad():
        plain, stats = run_with_betas(gen, z, record=True)
    assert stats["8.adain1"].shape == (3, 2, 16) and stats["64.adain2"].shape == (3, 2, 8)
    assert stats["style.0"].shape == (3, 1, 1, 1)
    torch.testing.assert_close(plain, arms.original, rtol=1e-4, atol=1e-4)
    empty = counterfactuals(gen, z, Intervention("16.conv1", []))
    assert empty.did.abs().max() == 0


def test_wrong_files_get_clear_errors(tmp_path):
    s = make_state_dict()
    del s["generator.progression.2.noise1.weight_orig"]
    s["generator.progression.3.conv2.conv.weight_orig"] = torch.zeros(8, 8, 5, 5)
    s["generator.progression.1.extra"] = torch.zeros(1)
    torch.save({"g_running": s}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as exc:
        stylegan(weights=str(tmp_path / "bad.pt"))
    text = str(exc.value)
    assert "missing keys (1): generator.progression.2.noise1.weight_orig" in text
    assert "unexpected keys (1): generator.progression.1.extra" in text
    assert ("generator.progression.3.conv2.conv.weight_orig: file has (8, 8, 5, 5), expected (8, 8, 3, 3)"
            in text)
    torch.save({"layer1.conv.weight": torch.zeros(2)}, tmp_path / "pggan.pt")
    with pytest.raises(CheckpointError, match="not a rosinality style-based-gan-pytorch StyledGenerator"):
        stylegan(weights=str(tmp_path / "pggan.pt"))
    s = make_state_dict()
    del s["generator.progression.1.adain1.style.linear.bias"]
    torch.save(s, tmp_path / "gap.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): generator.progression.1.adain1.style.linear.bias"):
        stylegan(weights=str(tmp_path / "gap.pt"))


@pytest.mark.slow
def test_ace_and_did_run_end_to_end_on_a_random_stylegan(tmp_path):
    from gandid.testing import BrightnessSegmenter, run_analysis
    from gandid_plugins.analyses.ace import ACE
    from gandid_plugins.analyses.did import DID

    torch.save({"g_running": make_state_dict(seed=3)}, tmp_path / "c.pt")
    gen = stylegan(weights=str(tmp_path / "c.pt"), resolution=32)
    seg, out = BrightnessSegmenter(), tmp_path / "run"
    common = dict(generator=gen, segmenter=seg, samples=4, layers=["16.conv1"])
    ace = run_analysis(ACE(samples=4, top_k=2, alpha_steps=2, alpha_samples=2, context_locations=2, curve_ks=[1, 2]),
                       out, name="ace", **common)
    did = run_analysis(DID(top_k=2, samples=4, resamples=200, panels=2), out, name="did", results={"ace": ace},
                       **common)
    assert did["sites"] == ["16.adain1", "16.adain2", "32.adain1", "32.adain2"]
    assert did["site_kinds"] == ["instancenorm"]
    for name, e in did["classes"].items():
        assert e["units"] == ace["classes"][name]["ranking"][:2] and e["samples"] == 4
        assert all(-1 <= v["mean"] <= 1 for v in e["area_did"].values())
    findings = " ".join(str(getattr(f, "html", f)) for f in DID().report_findings(did))
    assert "instance norm" in findings.lower() and "pixel norm" not in findings.lower()
    assert (out / "did_bright.png").exists() or (out / "did_dark.png").exists()


# -- the official network's g_all layout (GANSpace's stylegan_<class>_<res>.pt, lernapparat's .for_g_all.pt) --

def g_all_file(tmp_path, s, name="stylegan_ffhq_128.pt"):
    torch.save(s, tmp_path / name)
    return str(tmp_path / name)


def double(s):
    return {k: v.double() for k, v in s.items()}


@pytest.mark.parametrize("channels, dims", [((8, 8, 8, 6, 6, 4), {}),
                                            ((16, 12, 8), dict(z_dim=6, fmaps=10, dlatent=8, mapping_layers=3))])
def test_loads_g_all_files_and_matches_an_independent_forward(channels, dims, tmp_path):
    s = make_g_all_state_dict(channels, seed=len(channels), **dims)
    size = 4 * 2 ** (len(channels) - 1)
    gen = stylegan(weights=g_all_file(tmp_path, s, f"stylegan_ffhq_{size}.pt"))
    assert isinstance(gen, StyleGANGAllGenerator)
    assert gen.resolution == size and gen.z_dim == dims.get("z_dim", 8)
    info = gen.weights_info
    assert (info["layout"], info["state"], info["instance_eps"], info["truncation_cutoff"]) == (
        "g_all", "bare state dict", 1e-8, 8)
    assert [(l.name, l.channels, l.size) for l in gen.layers] == [
        (f"{4 * 2 ** i}.conv{h}", c, (4 * 2 ** i,) * 2) for i, c in enumerate(channels) for h in (1, 2)]
    assert [(s.name, s.kind, s.layer) for s in gen.norm_sites] == [("style.0", "pixelnorm", None)] + [
        (f"{4 * 2 ** i}.adain{h}", "instancenorm", f"{4 * 2 ** i}.conv{h}") for i in range(len(channels))
        for h in (1, 2)]
    assert isinstance(gen.norm_module("style.0"), PixelNorm)
    assert all(isinstance(gen.norm_module(s.name), InstanceNorm) and gen.norm_module(s.name).eps == 1e-8
               for s in gen.norm_sites[1:])
    # every layer has its own LeakyReLU module (the port shares one), so that each can be hooked
    assert len({id(gen.layer_module(l.name)) for l in gen.layers}) == len(gen.layers)
    ups = [b.conv0_up.up for r, b in gen.g_synthesis.blocks.items() if r != "4x4"]
    assert ups == ["fused" if 8 * 2 ** i >= 128 else "nearest" for i in range(len(channels) - 1)]
    z = gen.sample_z(3, seed=2)
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.forward(z)
    noise = gen.noise_maps(z)
    assert [tuple(n.shape) for n in noise] == [(3, 1, 4 * 2 ** (k // 2), 4 * 2 ** (k // 2))
                                               for k in range(2 * len(channels))]
    expected = independent_g_all_forward(double(s), z.double(), [n.double() for n in noise])
    assert images.shape == (3, 3, size, size)
    assert float((images.double() - expected).abs().max()) < 1e-4  # float32 against float64
    assert float(expected.std()) > 0.1  # not a degenerate (all-clamped or constant) image
    gen64 = stylegan(weights=str(tmp_path / f"stylegan_ffhq_{size}.pt")).double()
    with torch.no_grad():
        torch.testing.assert_close(gen64.forward(z.double()), expected, rtol=1e-10, atol=1e-10)
    for layer in gen.layers:
        assert trace[layer.name].shape[1:] == (layer.channels, *layer.size)
    save_file(s, str(tmp_path / "g_all.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(stylegan(weights=str(tmp_path / "g_all.safetensors")).forward(z), images,
                                   rtol=0, atol=0)


def test_g_all_truncation_pulls_the_layers_below_the_cutoff_toward_the_average(tmp_path):
    s = make_g_all_state_dict(seed=5, avg_latent=True)
    with_avg = g_all_file(tmp_path, s, "with_avg.pt")
    plain = {k: v for k, v in s.items() if k != "truncation.avg_latent"}
    no_avg = g_all_file(tmp_path, plain, "stylegan_ffhq_128.pt")
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    gen = stylegan(weights=with_avg, noise="zero")
    noise = [n.double() for n in gen.noise_maps(z)]
    avg = s["truncation.avg_latent"].double()
    with torch.no_grad():
        untruncated = gen.forward(z)
        torch.testing.assert_close(untruncated, stylegan(weights=no_avg, noise="zero").forward(z), rtol=0, atol=0)
        images = {}
        for cutoff, want in ((None, 8), (3, 3), (12, 12), (0, 0)):  # 12 layers at 128 px: 12 truncates all
            gen = stylegan(weights=with_avg, noise="zero", truncation=0.7, truncation_cutoff=cutoff)
            assert gen.weights_info["avg_latent"] == "truncation.avg_latent (the file)"
            torch.testing.assert_close(gen.avg_latent, s["truncation.avg_latent"], rtol=0, atol=0)
            images[want] = gen.forward(z)
            expected = independent_g_all_forward(double(s), z.double(), noise, 0.7, want, avg)
            torch.testing.assert_close(images[want].double(), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(images[0], untruncated, rtol=0, atol=0)
        assert float((images[8] - images[12]).abs().max()) > 1e-3  # the cutoff matters
        assert float((images[8] - untruncated).abs().max()) > 1e-3
        gen = stylegan(weights=no_avg, truncation=0.5)  # no dlatent_avg in GANSpace's files: estimated
        assert gen.weights_info["avg_latent"] == "mean of g_mapping over 10240 latents (seed 0)"
        mean = gen.g_mapping(torch.randn(10 * 1024, 8, generator=torch.Generator().manual_seed(0))).mean(0)
        torch.testing.assert_close(gen.avg_latent, mean)
        noise = [n.double() for n in gen.noise_maps(z)]
        torch.testing.assert_close(gen.forward(z).double(), independent_g_all_forward(
            double(plain), z.double(), noise, 0.5, 8, mean.double()), rtol=0, atol=1e-4)
    with pytest.raises(CheckpointError, match="truncation_cutoff must be 0 or more, got -1"):
        stylegan(weights=no_avg, truncation_cutoff=-1)
    torch.save(make_state_dict(), tmp_path / "rosinality.pt")
    with pytest.raises(CheckpointError, match="truncation_cutoff applies to the g_all layout only"):
        stylegan(weights=str(tmp_path / "rosinality.pt"), truncation_cutoff=8)


def test_g_all_noise_each_layer_its_own_and_ganspaces_fixed_noise(tmp_path):
    path = g_all_file(tmp_path, make_g_all_state_dict(seed=2))
    gen = stylegan(weights=path)
    z = gen.sample_z(3, seed=0)
    with torch.no_grad():  # other batch sizes: other conv algorithms, float32 rounding only
        torch.testing.assert_close(gen.forward(z), gen.forward(z), rtol=0, atol=0)
        torch.testing.assert_close(gen.forward(z[1:2]), gen.forward(z)[1:2], rtol=1e-4, atol=1e-4)
    noise = gen.noise_maps(torch.cat([z, z[:1]]))
    assert len(noise) == 12
    torch.testing.assert_close(noise[-1][3], noise[-1][0], rtol=0, atol=0)  # the same latent, the same noise
    assert float((noise[-1][1] - noise[-1][0]).abs().max()) > 0.1  # another latent, other noise
    assert float((noise[-1][0] - noise[-2][0]).abs().max()) > 0.1  # the block's two layers: two maps
    assert abs(float(noise[-1].std()) - 1) < 0.1
    gen.noise_mode = "const"
    const = gen.noise_maps(z)
    with torch.random.fork_rng():  # GANSpace's StyleGAN.set_noise_seed(0), on the CPU
        for k, r in enumerate((4, 8, 16, 32, 64, 128)):
            torch.random.manual_seed(0)
            want = torch.randn(1, 1, r, r)
            for layer in (2 * k, 2 * k + 1):
                torch.testing.assert_close(const[layer], want.expand(3, 1, r, r), rtol=0, atol=0)
    gen.noise_mode = "zero"
    assert all(float(n.abs().max()) == 0 for n in gen.noise_maps(z))


def test_instance_eps_is_each_layouts_own_unless_chosen(tmp_path):
    s = make_g_all_state_dict(seed=3)
    path = g_all_file(tmp_path, s)
    gen = stylegan(weights=path, instance_eps=1e-5).double()  # nn.InstanceNorm2d's, as GANSpace's port runs
    assert gen.weights_info["instance_eps"] == 1e-5
    assert {gen.norm_module(s.name).eps for s in gen.norm_sites[1:]} == {1e-5}
    z = gen.sample_z(2, seed=1).double()
    noise = [n.double() for n in gen.noise_maps(z)]
    with torch.no_grad():
        torch.testing.assert_close(gen.forward(z), independent_g_all_forward(double(s), z, noise, eps=1e-5),
                                   rtol=1e-10, atol=1e-10)
    torch.save(make_state_dict(), tmp_path / "rosinality.pt")
    rosinality = stylegan(weights=str(tmp_path / "rosinality.pt"))
    assert isinstance(rosinality, StyleGANGenerator) and rosinality.weights_info["instance_eps"] == 1e-5
    rosinality = stylegan(weights=str(tmp_path / "rosinality.pt"), instance_eps=1e-8)
    assert {rosinality.norm_module(s.name).eps for s in rosinality.norm_sites[1:]} == {1e-8}
    with pytest.raises(CheckpointError, match="instance_eps must be positive, got 0"):
        stylegan(weights=path, instance_eps=0)


def test_g_all_registered_and_satisfies_the_generator_contract(tmp_path):
    path = g_all_file(tmp_path, make_g_all_state_dict(seed=4))
    registry = Registry(load_entry_points=False)
    registry.add_plugin(stylegan_plugin, "stylegan")
    gen = registry.create("generator", "stylegan", weights=path, resolution=128)
    check_contract(gen, Generator, "generator 'stylegan'")
    assert gen.default_layer == "16.conv2"
    with pytest.raises(KeyError, match="unknown layer '8.cnv1'; did you mean '8.conv1'"):
        gen.layer_module("8.cnv1")
    with pytest.raises(KeyError, match="unknown norm site '8.adian1'; did you mean '8.adain1'"):
        gen.norm_module("8.adian1")
    with pytest.raises(CheckpointError, match="is a 128 px g_all network, which runs at its own resolution only"):
        stylegan(weights=path, resolution=64)
    z = gen.sample_z(3, seed=4)
    with torch.no_grad():
        plain, stats = run_with_betas(gen, z, record=True)
        torch.testing.assert_close(plain, gen.forward(z), rtol=1e-5, atol=1e-5)
    assert stats["8.adain1"].shape == (3, 2, 8) and stats["128.adain2"].shape == (3, 2, 4)
    assert stats["style.0"].shape == (3, 1, 1, 1)


@pytest.mark.parametrize("layer, kind, channels", [("8.conv2", "ablate", (8, 8, 8, 6, 6)),
                                                   ("32.conv1", "insert_region", (8, 8, 8, 6, 6)),
                                                   ("128.conv1", "ablate", (8, 8, 8, 6, 6, 4))])
def test_g_all_did_arms_equal_naive_passes_with_recorded_statistics(layer, kind, channels, tmp_path):
    s = make_g_all_state_dict(channels, seed=7)
    gen = stylegan(weights=g_all_file(tmp_path, s), truncation=0.7).double()  # 64 and 128 px: not truncated
    s64, avg = double(s), gen.avg_latent.double()

    def forward(z, noise, **hooks):
        return independent_g_all_forward(s64, z, noise, 0.7, 8, avg, **hooks)

    check_did_arms(gen, forward, layer, kind)


def test_wrong_g_all_files_get_clear_errors(tmp_path):
    s = make_g_all_state_dict()
    del s["g_synthesis.blocks.16x16.epi2.top_epi.noise.weight"]
    s["g_synthesis.blocks.32x32.conv1.weight"] = torch.zeros(6, 6, 5, 5)
    s["g_synthesis.blocks.8x8.conv0_up.noise"] = torch.zeros(1)
    s["truncation.avg_latent"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as exc:
        stylegan(weights=g_all_file(tmp_path, s, "bad.pt"))
    text = str(exc.value)
    assert "in the g_all layout" in text
    assert "missing keys (1): g_synthesis.blocks.16x16.epi2.top_epi.noise.weight" in text
    assert "unexpected keys (1): g_synthesis.blocks.8x8.conv0_up.noise" in text
    assert "g_synthesis.blocks.32x32.conv1.weight: file has (6, 6, 5, 5), expected (6, 6, 3, 3)" in text
    assert "truncation.avg_latent: file has (7,), expected (8,)" in text
    s = make_g_all_state_dict()
    gap = {k: v for k, v in s.items() if ".16x16." not in k}
    with pytest.raises(CheckpointError, match=r"4x4, 8x8, 16x16, \.\.\. without gaps; the file has 4x4, 8x8, 32x32, "):
        stylegan(weights=g_all_file(tmp_path, gap, "gap.pt"))
    no_conv = {k: v for k, v in s.items() if k != "g_synthesis.blocks.8x8.conv0_up.weight"}
    with pytest.raises(CheckpointError, match=r"cannot tell block 8x8's channels: missing keys \(1\): "
                                              r"g_synthesis.blocks.8x8.conv0_up.weight"):
        stylegan(weights=g_all_file(tmp_path, no_conv, "no_conv.pt"))
    flat = dict(s, **{"g_mapping.dense0.weight": torch.zeros(8)})
    with pytest.raises(CheckpointError, match=r"g_mapping.dense0.weight must be a 2-d tensor, the file has \(8,\)"):
        stylegan(weights=g_all_file(tmp_path, flat, "flat.pt"))
    # lernapparat also saved the two halves alone: they cannot make images
    mapping = {k.removeprefix("g_mapping."): v for k, v in s.items() if k.startswith("g_mapping.")}
    with pytest.raises(CheckpointError, match="mapping network of the g_all layout alone"):
        stylegan(weights=g_all_file(tmp_path, mapping, "ffhq_mapping.pt"))
    synthesis = {k.removeprefix("g_synthesis."): v for k, v in s.items() if k.startswith("g_synthesis.")}
    with pytest.raises(CheckpointError, match="synthesis network of the g_all layout alone"):
        stylegan(weights=g_all_file(tmp_path, synthesis, "ffhq_synthesis.pt"))
    integer = dict(s, **{"g_synthesis.torgb.bias": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(CheckpointError, match="not floating-point weights .*g_synthesis.torgb.bias: torch.int64"):
        stylegan(weights=g_all_file(tmp_path, integer, "integer.pt"))


def test_both_layouts_are_recognised_and_convert_to_safetensors_and_back(tmp_path):
    from gandid.convert import convert
    from gandid.formats import detect_generator

    registry = Registry(load_entry_points=False)
    registry.add_plugin(stylegan_plugin, "stylegan")
    training_checkpoint(tmp_path / "train_step-5.model", make_state_dict(seed=1))
    torch.save(make_state_dict(seed=2), tmp_path / "000100.model")
    g_all_file(tmp_path, make_g_all_state_dict(seed=3, avg_latent=True), "karras2019stylegan-x.for_g_all.pt")
    cases = [("train_step-5.model", "checkpoint (g_running)", {}),
             ("000100.model", "generator state dict", {"resolution": 32}),
             ("karras2019stylegan-x.for_g_all.pt", "g_all layout", {"truncation": 0.7, "truncation_cutoff": 4})]
    for name, what, options in cases:
        found = detect_generator(registry, tmp_path / name)
        assert found[0] == "stylegan" and what in found[1]
        out = tmp_path / f"{name}.safetensors"
        done = convert(tmp_path / name, out, registry=registry, options=options)
        assert done["max_difference"] == 0
        original = registry.create("generator", "stylegan", weights=str(tmp_path / name), **options)
        again = registry.create("generator", "stylegan", weights=str(out), **options)
        z = original.sample_z(3, 5)
        with torch.no_grad():
            assert torch.equal(original.forward(z), again.forward(z))
    assert again.weights_info["avg_latent"] == "truncation.avg_latent (the file)"  # kept by checkpoint()
    torch.save({"layer1.conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
    from gandid.formats import peek
    assert stylegan_plugin.recognise(peek(tmp_path / "other.pth")) is None
