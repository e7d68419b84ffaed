"""The `noise` analysis: image variation across noise draws as units are ablated, against a plain loop
(forward passes under a hook that zeroes the units, no engine), on random StyleGAN2 models (rosinality's
and NVlabs's layouts) and a StyleGAN v1; noise draws are reproducible and leave the fixed noise as it was; a generator
without noise inputs gets a result that says so."""
import nvlabs_files
import pytest
import stylegan2_files
import stylegan_files
import torch

from gandid.hooks import Trace
from gandid.testing import TinyGenerator, run_analysis
from gandid_plugins.analyses.noise import Noise
from gandid_plugins.generators.stylegan2 import StyleGAN2Generator
from gandid_plugins.generators.stylegan2_ada import stylegan2_ada


def rosinality():
    return StyleGAN2Generator.from_state_dict(stylegan2_files.make_g_ema(size=16, channels=(16, 16, 8)))


def stylegan_v1(tmp_path):
    from gandid_plugins.generators.stylegan import stylegan

    torch.save(stylegan_files.make_state_dict(), tmp_path / "v1.model")
    return stylegan(weights=str(tmp_path / "v1.model"))


def nvlabs(tmp_path):
    torch.save(nvlabs_files.make_generator(seed=3).state_dict(), tmp_path / "G.pt")
    gen = stylegan2_ada(weights=str(tmp_path / "G.pt"))
    with torch.no_grad():  # the tiny file's noise strengths may be zero: give the noise a visible effect
        for name, p in gen.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return gen


@pytest.fixture(params=["rosinality", "nvlabs", "stylegan"])
def generator(request, tmp_path):
    return {"rosinality": rosinality, "nvlabs": nvlabs, "stylegan": stylegan_v1}[request.param](
        *(() if request.param == "rosinality" else (tmp_path,)))


def test_noise_draws_are_reproducible_and_restore_the_fixed_noise(generator):
    z = generator.sample_z(2, 0)
    with torch.no_grad():
        fixed = generator.forward(z)
        with generator.noise_draws(7):
            first = generator.forward(z)
        with generator.noise_draws(7):
            again = generator.forward(z)
        with generator.noise_draws(8):
            other = generator.forward(z)
        after = generator.forward(z)
    assert torch.equal(first, again) and torch.equal(fixed, after)
    assert not torch.equal(first, fixed) and not torch.equal(first, other)


def test_variation_matches_a_plain_loop(generator, tmp_path):
    analysis = Noise(samples=3, draws=3, fractions=[0, 0.5], order="random", seed=2)
    layer = generator.layers[1].name
    result = run_analysis(analysis, tmp_path, generator=generator, layers=[layer], name="noise")
    entry = result["layers"][layer]
    order = torch.randperm(generator.layers[1].channels, generator=torch.Generator().manual_seed(2)).tolist()
    z = generator.sample_z(3, 0)
    for i, count in enumerate(entry["units_ablated"]):
        units = order[:count]

        def zeroed(output):
            output = output.clone()
            output[:, units] = 0
            return output

        draws = []
        for d in range(3):
            with torch.no_grad(), generator.noise_draws(2 * 1_000_003 + d + 1), Trace(generator, edit={layer: zeroed}):
                draws.append(generator.forward(z).double())
        expected = torch.stack(draws).std(0).mean((1, 2, 3))  # (N,)
        assert entry["variation"][i] == pytest.approx(float(expected.mean()), rel=1e-4)
        assert entry["variation_se"][i] == pytest.approx(float(expected.std() / 3 ** 0.5), rel=1e-3, abs=1e-7)
    assert entry["units_ablated"] == [0, generator.layers[1].channels // 2]
    assert entry["variation"][0] > 0 and entry["ratio_to_none"][0] == 1.0
    assert (tmp_path / "noise.png").is_file()


def test_a_generator_without_noise_is_not_applicable(tmp_path):
    result = run_analysis(Noise(), tmp_path, generator=TinyGenerator(), name="noise")
    assert result["applicable"] is False and "no noise inputs" in result["why"]
    assert "Not applicable" in Noise().report_section(result, tmp_path)


def test_bad_options_are_refused():
    for kwargs, needle in (({"draws": 1}, "draws"), ({"fractions": [1.5]}, "fractions"), ({"order": "x"}, "order")):
        with pytest.raises(ValueError, match=needle):
            Noise(**kwargs)
