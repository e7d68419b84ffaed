import types

import pytest
import torch

from gandid import hookimpl
from gandid.errors import UnknownNameError
from gandid.registry import Registry


def make_plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_kinds_are_registered(registry):
    assert registry.names("generator") == ["tiny"]
    assert registry.names("segmenter") == ["tiny"]
    assert registry.names("analysis") == ["count", "failing", "unitstats"]
    entry = registry.get("analysis", "unitstats")
    assert entry.plugin.name == "unitstats" and "example plugin" in entry.description


def test_duplicate_name_is_refused_naming_both(registry):
    def gandid_register_generators(register):
        register("tiny", object, description="impostor")

    info = registry.add_plugin(make_plugin("impostor", gandid_register_generators=gandid_register_generators),
                               "impostor")
    assert info.status == "broken"
    assert "'impostor'" in info.error and "'testkit'" in info.error and "'tiny'" in info.error
    # the first registration is kept, untouched
    assert registry.get("generator", "tiny").plugin.name == "testkit"


def test_registration_is_all_or_nothing_per_hook(registry):
    def gandid_register_analyses(register):
        register("fresh", object)
        register("count", object)  # duplicate: the whole hook call is refused

    registry.add_plugin(make_plugin("half", gandid_register_analyses=gandid_register_analyses), "half")
    assert "fresh" not in registry.names("analysis")


def test_plugin_raising_while_registering_is_isolated(registry):
    def gandid_register_segmenters(register):
        raise RuntimeError("no weights")

    info = registry.add_plugin(make_plugin("bad", gandid_register_segmenters=gandid_register_segmenters), "bad")
    assert info.status == "broken" and "RuntimeError: no weights" in info.error
    assert registry.names("segmenter") == ["tiny"]
    rows = {(r["name"], r["kind"]): r for r in registry.rows()}
    assert rows[("bad", "plugin")]["status"] == "broken"
    assert rows[("tiny", "generator")]["status"] == "ok"


def test_hook_with_wrong_signature_is_reported():
    def gandid_register_generators(registr):  # typo in the argument name
        pass

    reg = Registry(load_entry_points=False)
    info = reg.add_plugin(make_plugin("typo", gandid_register_generators=gandid_register_generators), "typo")
    assert info.status == "broken" and "registr" in info.error


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(UnknownNameError) as exc:
        registry.get("analysis", "unitstat")
    assert "did you mean 'unitstats'" in str(exc.value)
    with pytest.raises(UnknownNameError, match="did you mean 'generator'"):
        registry.names("generater")


def test_factory_options_reach_the_object(registry):
    assert registry.create("analysis", "unitstats", top=2).top == 2


def test_a_plugin_object_is_checked_against_its_protocol(tmp_path):
    """Building a generator without the engine's members is refused before any work, naming each."""
    from gandid.config import RunConfig
    from gandid.errors import ConfigError
    from gandid.runner import run
    from gandid.testing import BrightnessSegmenter, TinyGenerator, registry_with

    class NoEngine(TinyGenerator):
        norm_module = forward_from = None

    def no_engine():
        gen = NoEngine()
        del gen.layers  # an instance attribute, gone
        return gen

    class NoRun:
        pass

    reg = registry_with(generators={"half": no_engine, "tiny": TinyGenerator}, segmenters={"tiny": BrightnessSegmenter},
                        analyses={"norun": NoRun})
    config = RunConfig(generator="half", segmenter="tiny", analysis=["norun"], out=str(tmp_path / "o"), device="cpu")
    with pytest.raises(ConfigError, match=r"generator 'half' \(plugin 'gandid.testing factories'\) does not provide "
                                          r"layers \(required of a Generator: z_dim, resolution, layers"):
        run(config, registry=reg)
    config.generator = "tiny"
    with pytest.raises(ConfigError, match=r"analysis 'norun' .* does not provide run"):
        run(config, registry=reg)
    assert not (tmp_path / "o").exists()


def run_ace_and_did(generator_factory, layer: str, out) -> dict:
    """ace then did (small options) on a generator with gandid.testing's brightness segmenter, through
    the runner; checks that did ablated each class's top 3 ACE units and returns the results."""
    import gandid_plugins.analyses.ace
    import gandid_plugins.analyses.did
    from gandid.config import RunConfig
    from gandid.runner import run
    from gandid.testing import BrightnessSegmenter, registry_with

    reg = registry_with(gandid_plugins.analyses.ace, gandid_plugins.analyses.did, generators={"gen": generator_factory},
                        segmenters={"bright": BrightnessSegmenter})
    config = RunConfig(generator="gen", segmenter="bright", analysis=["ace", "did"], samples=8, batch_size=8,
                       layer=[layer], out=str(out), device="cpu",
                       analysis_options={"ace": {"samples": 4, "top_k": 3, "context_locations": 2, "alpha_steps": 2,
                                                 "alpha_samples": 2, "min_area": 0.0},
                                         "did": {"samples": 4, "resamples": 50, "top_k": 3}})
    result = run(config, registry=reg)
    assert result.status == "completed", result.errors
    ace, did = result.results["ace"], result.results["did"]
    assert ace["classes"] and set(did["classes"]) == set(ace["classes"])
    for name, entry in did["classes"].items():
        assert entry["units"] == ace["classes"][name]["ranking"][:3] and entry["samples"] == 4
    return result.results


@pytest.mark.slow
def test_a_generator_written_from_the_readme_works_with_ace_and_did(tmp_path):
    """gandid.testing's TinyGenerator has exactly the documented members; ace and did run on it."""
    from gandid.testing import TinyGenerator

    results = run_ace_and_did(TinyGenerator, "layer1", tmp_path / "o")
    assert set(results["ace"]["classes"]) == {"dark", "bright"}


@pytest.mark.slow
def test_a_generator_written_in_the_test_from_the_readme_alone_works_with_ace_and_did(tmp_path):
    """A generator written here from the README's member list only (not gandid.testing's): a plain
    conv net with pixel norms, gandid.model's PixelNorm/LayerInfo/NormSite/normal_rows and nothing
    else from gandid; ace and did run on it through the runner, and did ablates ace's top units."""
    from torch import nn

    from gandid.model import LayerInfo, NormSite, PixelNorm, normal_rows

    class ReadmeGenerator(nn.Module):
        z_dim, resolution = 6, 16

        def __init__(self):
            super().__init__()
            torch.manual_seed(11)
            self.stem = nn.Sequential(nn.Linear(6, 12 * 8 * 8), nn.Unflatten(1, (12, 8, 8)))
            self.block = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.LeakyReLU(0.2))
            self.norm_block, self.norm_out = PixelNorm(), PixelNorm()
            self.rgb = nn.Conv2d(12, 3, 1)
            self.layers = [LayerInfo("stem", 12, (8, 8)), LayerInfo("block", 12, (8, 8))]
            self.norm_sites = [NormSite("block.norm", "pixelnorm", "stem"), NormSite("out.norm", "pixelnorm", "block")]

        def sample_z(self, n, seed, start=0):
            return normal_rows(seed, start, n, self.z_dim)

        def layer_module(self, name):
            return {"stem": self.stem, "block": self.block}[name]

        def norm_module(self, site):
            return {"block.norm": self.norm_block, "out.norm": self.norm_out}[site]

        def forward(self, z):
            return self.forward_from("stem", self.stem(z), z)

        def forward_from(self, layer, features, z=None):
            x = features
            if layer == "stem":
                x = self.block(self.norm_block(x))
            x = nn.functional.interpolate(self.norm_out(x), scale_factor=2)
            return torch.tanh(self.rgb(x))

    results = run_ace_and_did(ReadmeGenerator, "block", tmp_path / "o")
    assert results["did"]["sites"] == ["out.norm"]


def test_run_analysis_runs_one_analysis_without_the_runner(tmp_path):
    from gandid.stats import Moments
    from gandid.testing import TinyGenerator, run_analysis

    class MeanActivation:
        def run(self, ctx):
            moments = Moments((16,))
            stream = ctx.tally({"m": moments}, key="m", segment=False)
            for batch in stream:
                feats = batch.features[ctx.layers[0]]
                moments.update(feats.transpose(1, 3).reshape(-1, 16))
            return {"samples": stream.done, "mean": moments.mean.tolist()}

    result = run_analysis(MeanActivation(), tmp_path, samples=6)
    gen = TinyGenerator()
    from gandid.hooks import Trace

    with Trace(gen, ["layer2"]) as trace:
        gen.forward(gen.sample_z(6, 0))
    expected = trace["layer2"].double().mean((0, 2, 3))
    assert result["samples"] == 6
    assert torch.allclose(torch.tensor(result["mean"], dtype=torch.float64), expected, rtol=1e-6)


def test_norm_overrides_nest_and_give_back_what_was_there():
    from gandid.hooks import norm_overrides
    from gandid.testing import TinyGenerator

    gen = TinyGenerator()
    z = gen.sample_z(3, 0)
    plain = gen.forward(z)
    zero, double = (lambda x: x * 0), (lambda x: x * 2)
    with norm_overrides(gen, {"out.norm": zero}):
        outer = gen.forward(z)
        with norm_overrides(gen, {"out.norm": double, "layer2.norm": double}):
            assert gen.norm_module("out.norm").override is double
        assert gen.norm_module("out.norm").override is zero and gen.norm_module("layer2.norm").override is None
        assert torch.equal(gen.forward(z), outer)
        with pytest.raises(RuntimeError), norm_overrides(gen, {"out.norm": double}):
            raise RuntimeError("the block fails")
        assert gen.norm_module("out.norm").override is zero
    assert gen.norm_module("out.norm").override is None and torch.equal(gen.forward(z), plain)
    assert not torch.equal(outer, plain)
