"""The stylegan2-ada generator: NVlabs network pickles read as data (never run), G_ema state dicts,
our forward against an independent float64 one, the protocol, the DID engine on demodulation sites,
and refusals that name what they refuse."""
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict

import nvlabs_files as nf
import pytest
import torch
from safetensors.torch import save_file

from gandid.contracts import check_contract
from gandid.errors import CheckpointError
from gandid.hooks import Trace
from gandid.intervene import BetaControl, Intervention, counterfactuals, counterfactuals_naive, run_with_betas
from gandid.model import Generator
from gandid.testing import registry_with
from gandid_plugins.generators import stylegan2_ada as plugin
from gandid_plugins.generators.stylegan2_ada.nvlabs_pickle import ALLOW_LIST, load_nvlabs_pickle

FAKE = set(nf._FAKE_MODULES)


def write_snapshot(tmp_path, G, name="network-snapshot-000040.pkl", protocol=pickle.DEFAULT_PROTOCOL):
    path, marker = tmp_path / name, tmp_path / "EXECUTED"
    nf.write_pickle(path, nf.snapshot(G), marker, protocol=protocol)
    return path, marker


def load(path, **options):
    """Through a registry holding only this plugin, as gandid run builds it."""
    return registry_with(plugin).create("generator", "stylegan2-ada", weights=str(path), **options)


def f64(G):
    return {k: v.double() for k, v in G.state_dict().items()}


@pytest.mark.parametrize("architecture,conv_clamp,protocol", [
    ("skip", 256, 4), ("skip", 0.5, 3), ("orig", 256, 5), ("resnet", 0.5, 4)])
def test_pickle_loads_as_data_and_matches_an_independent_forward(tmp_path, architecture, conv_clamp, protocol):
    G = nf.make_generator(seed=1, resolution=16, architecture=architecture, conv_clamp=conv_clamp)
    path, marker = write_snapshot(tmp_path, G, protocol=protocol)
    assert not FAKE & set(sys.modules)
    gen = load(path)
    assert not marker.exists() and not FAKE & set(sys.modules)  # the embedded code never ran, nothing imported
    assert (gen.z_dim, gen.resolution) == (32, 16)
    assert [(l.name, l.channels, l.size) for l in gen.layers] == [
        ("b4.conv1", 16, (4, 4)), ("b8.conv0", 16, (8, 8)), ("b8.conv1", 16, (8, 8)),
        ("b16.conv0", 8, (16, 16)), ("b16.conv1", 8, (16, 16))]
    assert [(s.name, s.kind, s.layer) for s in gen.norm_sites][:3] == [
        ("b4.conv1.demod", "demod", None), ("b8.conv0.demod", "demod", "b4.conv1"),
        ("b8.conv1.demod", "demod", "b8.conv0")]
    assert gen.weights_info["format"] == "NVlabs network pickle" and "assumed" not in gen.weights_info
    assert gen.weights_info["config"]["architecture"] == architecture
    z = gen.sample_z(3, seed=2)
    expected = nf.independent_forward(f64(G), z.double(), conv_clamp=conv_clamp, architecture=architecture)
    assert 0.5 < float((expected.abs() < 1).double().mean())  # the comparison is not of saturated pixels
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.images(z)
        torch.testing.assert_close(gen.forward(z), images.clamp(-1, 1))
    for info in gen.layers:
        assert trace[info.name].shape == (3, info.channels, *info.size)
    assert float((images.double() - expected).abs().max()) < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(load(path).double().images(z.double()), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("architecture", ["skip", "orig", "resnet"])
def test_state_dicts_load_with_the_config_inferred_from_shapes(tmp_path, architecture):
    G = nf.make_generator(seed=3, resolution=16, architecture=architecture, channel_base=256, channel_max=32)
    path, _ = write_snapshot(tmp_path, G)
    torch.save(G.state_dict(), tmp_path / "G_ema.pt")
    save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(tmp_path / "G_ema.safetensors"))
    torch.save({"G_ema": G.state_dict()}, tmp_path / "wrapped.pth")
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = load(path).images(z)
        for name in ("G_ema.pt", "G_ema.safetensors", "wrapped.pth"):
            gen = load(tmp_path / name)
            assert gen.weights_info["format"] == "G_ema state dict"
            assert gen.weights_info["assumed"]["conv_clamp"] == 256  # train.py's value, said out loud
            assert gen.weights_info["config"]["architecture"] == architecture
            assert gen.weights_info["config"]["channels"] == {"4": 32, "8": 32, "16": 16}
            torch.testing.assert_close(gen.images(z), reference, rtol=0, atol=0)


def test_truncation_and_noise_modes(tmp_path):
    G = nf.make_generator(seed=4, resolution=8)
    path, _ = write_snapshot(tmp_path, G)
    z = load(path).sample_z(2, seed=5)
    with torch.no_grad():
        half = load(path, truncation=0.5).double()
        torch.testing.assert_close(half.images(z.double()), nf.independent_forward(f64(G), z.double(), truncation=0.5),
                                   rtol=0, atol=1e-10)
        quiet = load(path, noise_mode="none").double()
        torch.testing.assert_close(quiet.images(z.double()), nf.independent_forward(f64(G), z.double(), noise=False),
                                   rtol=0, atol=1e-10)
        gen = load(path)  # the fixed noise: an image depends only on its latent, not on its batch
        torch.testing.assert_close(gen.forward(z), gen.forward(z), rtol=0, atol=0)
        torch.testing.assert_close(gen.forward(z[1:]), gen.forward(z)[1:], rtol=1e-6, atol=1e-6)
    for bad, match in (({"truncation": 0}, "truncation must be in"), ({"noise_mode": "random"}, "noise_mode")):
        with pytest.raises(CheckpointError, match=match):
            load(path, **bad)


@pytest.mark.parametrize("architecture", ["skip", "orig", "resnet"])
def test_forward_from_continues_from_every_layer(tmp_path, architecture):
    gen = load(write_snapshot(tmp_path, nf.make_generator(seed=6, resolution=16, architecture=architecture))[0])
    z = gen.sample_z(2, seed=1)
    with torch.no_grad():
        for info in gen.layers:
            with Trace(gen, [info.name]) as trace:
                gen.forward(z)
            edited = trace[info.name] * 0.5 + 0.1
            with Trace(gen, edit={info.name: lambda out: edited}):
                expected = gen.forward(z)
            torch.testing.assert_close(gen.forward_from(info.name, edited, z), expected, rtol=1e-6, atol=1e-6)


def test_satisfies_the_generator_contract_through_a_registry(tmp_path):
    reg = registry_with(plugin)
    assert "stylegan2-ada" in reg.names("generator") and not reg.broken()
    gen = reg.create("generator", "stylegan2-ada", weights=str(write_snapshot(tmp_path, nf.make_generator())[0]))
    check_contract(gen, Generator, "generator 'stylegan2-ada'")
    assert isinstance(gen, Generator) and gen.default_layer == "b16.conv1"
    json.dumps(gen.weights_info)  # recorded in run.json


def test_did_on_demodulation_sites_matches_the_naive_four_passes(tmp_path):
    gen = load(write_snapshot(tmp_path, nf.make_generator(seed=7, resolution=16))[0])
    z = gen.sample_z(3, seed=2)
    iv = Intervention("b8.conv0", [0, 2, 5])
    controlled = BetaControl().resolve(gen, "b8.conv0")
    assert controlled == ["b8.conv1.demod", "b16.conv0.demod", "b16.conv1.demod"]
    arms, naive = counterfactuals(gen, z, iv), counterfactuals_naive(gen, z, iv)
    for name in ("original", "intervened", "intervened_fixed_beta", "original_swapped_beta"):
        torch.testing.assert_close(getattr(arms, name), getattr(naive, name), rtol=1e-5, atol=1e-5)
    assert (arms.intervened - arms.original).abs().max() > 1e-3  # the ablation did something
    with torch.no_grad():
        _, d = run_with_betas(gen, z, record=True)
        _, d_abl = run_with_betas(gen, z, iv, record=True)
    assert d["b16.conv0.demod"].shape == (3, 8)
    # Demodulation depends on the style w only: ablating units leaves every coefficient as it was.
    for site in controlled:
        torch.testing.assert_close(d[site], d_abl[site], rtol=0, atol=0)
    assert arms.did.abs().max() < 1e-5
    with torch.no_grad():  # the override is live: another latent's coefficients change the image
        _, d_other = run_with_betas(gen, gen.sample_z(3, seed=9), record=True)
        replayed, _ = run_with_betas(gen, z, (), {s: d_other[s] for s in controlled})
    assert (replayed - arms.original).abs().max() > 1e-3


# -- what is refused, and how it is said ---------------------------------------------------------
class Reduce:
    """An object that pickles as ``func(*args)``: what a malicious pickle does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class Payload:  # lives in a module that exists only while the file is written
    def __reduce__(self):
        return (Payload, ())


Payload.__module__ = "evil_payload_module"


class EmbeddedClass:  # a class "from the embedded source", as NVlabs's loader would create it
    def __reduce__(self):
        return (EmbeddedClass, ())


EmbeddedClass.__module__, EmbeddedClass.__qualname__ = "_imported_module_0123abcd", "Generator"


class TFNetwork:  # dnnlib.tflib.network.Network: what a TensorFlow-era StyleGAN pickle holds
    def __reduce__(self):
        return (TFNetwork, ())


TFNetwork.__module__, TFNetwork.__qualname__ = "dnnlib.tflib.network", "Network"


class BuildOnPersistent:  # a persistent-object reduce followed by a BUILD that sets state on the result
    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="", class_name="Generator", state={})
        return (nf._reconstruct_persistent_obj, (meta,), {"forward": "anything"})


def malicious_files(tmp_path):
    """name -> (payload object, the global the refusal must name); each payload would touch the marker."""
    marker = tmp_path / "EXECUTED"
    storage = torch.arange(4.0)
    return marker, {
        "os_system": (Reduce(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        "builtins_exec": (Reduce(exec, f"open({str(marker)!r}, 'w')"), "builtins.exec"),
        "builtins_eval": (Reduce(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        "unknown_module": (Payload(), "evil_payload_module.Payload"),
        "embedded_class": (EmbeddedClass(), "_imported_module_0123abcd.Generator"),
        "torch_module": (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
        "tensorflow_network": (TFNetwork(), "dnnlib.tflib.network.Network: a TensorFlow-era network"),
        "build_on_persistent": (BuildOnPersistent(), "BUILD"),
        "out_of_bounds_view": (Reduce(torch._utils._rebuild_tensor_v2, storage._typed_storage(), 2, (5,), (1,), False,
                                      OrderedDict()), "reaches element 7 of a storage of 4"),
    }


def write_malicious(tmp_path, name, payload):
    path = tmp_path / f"{name}.pkl"
    G = nf.make_generator(resolution=8)
    data = nf.snapshot(G)
    data["G_ema"].synthesis.b4.__dict__["payload"] = payload  # buried in the state, as an attribute
    nf.write_pickle(path, data, tmp_path / "EXECUTED",
                    extra_globals={"evil_payload_module": {"Payload": Payload},
                                   "_imported_module_0123abcd": {"Generator": EmbeddedClass},
                                   "dnnlib.tflib": {}, "dnnlib.tflib.network": {"Network": TFNetwork}})
    return path


def test_persistent_ids_are_refused(tmp_path):
    """torch.save's storages are persistent IDs; pickle.dump of a network never writes one."""
    class WithIds(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if isinstance(obj, str) and obj == "outside" else None

    with open(tmp_path / "ids.pkl", "wb") as f:
        WithIds(f, protocol=4).dump({"G_ema": "outside"})
    with pytest.raises(CheckpointError, match="refusing to load: it uses pickle persistent IDs"):
        load(tmp_path / "ids.pkl")


def test_the_embedded_source_would_run_if_executed(tmp_path):
    """The test's premise: executing the embedded source (what NVlabs's loader does) leaves the marker."""
    marker = tmp_path / "EXECUTED"
    exec(nf.FAKE_SOURCE.format(marker=str(marker)), {})
    assert marker.exists()


@pytest.mark.parametrize("name", ["os_system", "builtins_exec", "builtins_eval", "unknown_module", "embedded_class",
                                  "torch_module", "tensorflow_network", "build_on_persistent",
                                  "out_of_bounds_view"])
def test_anything_beyond_the_allow_list_is_refused_by_name_without_running(tmp_path, name):
    marker, cases = malicious_files(tmp_path)
    payload, named = cases[name]
    path = write_malicious(tmp_path, name, payload)
    with pytest.raises(CheckpointError) as exc:
        load(path)
    message = str(exc.value)
    assert named in message and "refusing to load" in message and "Nothing from the file was run" in message
    assert not marker.exists()
    assert not {"evil_payload_module", "_imported_module_0123abcd"} & set(sys.modules) and not FAKE & set(sys.modules)


@pytest.mark.slow
def test_loading_runs_and_imports_nothing_from_the_file(tmp_path):
    """In a fresh interpreter under an audit hook: loading the good snapshot and every malicious file
    raises no exec, compile, process or import event for anything the files name."""
    good, _ = write_snapshot(tmp_path, nf.make_generator(resolution=8))
    marker, cases = malicious_files(tmp_path)
    files = [str(good)] + [str(write_malicious(tmp_path, name, payload)) for name, (payload, _) in cases.items()]
    script = textwrap.dedent("""
        import json, sys
        from gandid_plugins.generators.stylegan2_ada import stylegan2_ada
        stylegan2_ada(sys.argv[1])  # warm up torch's own lazy imports on the good file
        events = []
        watched = ("exec", "compile", "import", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "ctypes.dlopen")
        sys.addaudithook(lambda e, a: events.append([e, str(a[0]) if a else ""]) if e in watched else None)
        results = {}
        for path in sys.argv[1:]:
            try:
                stylegan2_ada(path)
                results[path] = "loaded"
            except Exception as exc:
                results[path] = type(exc).__name__ + ": " + str(exc)
        print(json.dumps({"results": results, "events": events,
                          "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                                            ("torch_utils", "dnnlib", "evil_payload_module") or
                                            m.startswith("_imported_module_"))}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, *files], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["results"][str(good)] == "loaded"
    for path in files[1:]:
        assert out["results"][path].startswith("CheckpointError") and "refusing to load" in out["results"][path]
    assert out["events"] == [] and out["modules"] == []
    assert not marker.exists()


def test_allow_list_is_what_an_nvlabs_snapshot_needs_and_no_more():
    assert {f"{m}.{n}" for m, n in ALLOW_LIST} == {
        "torch_utils.persistence._reconstruct_persistent_obj", "dnnlib.util.EasyDict", "dnnlib.EasyDict",
        "collections.OrderedDict", "builtins.set", "builtins.frozenset", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
        "torch.storage._load_from_bytes", "numpy.dtype", "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar"}
    real = {os.system, exec, eval, pickle.loads, torch.load, OrderedDict, set, frozenset,
            torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter}
    assert not real & set(ALLOW_LIST.values())  # stand-ins, never the real functions


def test_unreadable_files_are_called_unreadable(tmp_path):
    g = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
    cases = {"random.pkl": b"\x13" + noise, "random_after_proto.pkl": b"\x80\x04" + noise, "empty.pkl": b""}
    good, _ = write_snapshot(tmp_path, nf.make_generator(resolution=8))
    cases["truncated.pkl"] = good.read_bytes()[:5000]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as exc:
            load(tmp_path / name)
        message = str(exc.value)
        assert "unreadable" in message and "code" not in message and "refusing" not in message, message
    with pytest.raises(CheckpointError, match=r"unreadable: not a pickle \(it starts with bytes 13 "):
        load(tmp_path / "random.pkl")
    with pytest.raises(CheckpointError, match="unreadable: not a pickle \\(it is empty\\)"):
        load(tmp_path / "empty.pkl")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.pkl")


def test_a_pickle_without_g_ema_names_what_it_has(tmp_path):
    data = nf.snapshot(nf.make_generator(resolution=8))
    del data["G_ema"]
    nf.write_pickle(tmp_path / "no_ema.pkl", data, tmp_path / "EXECUTED")
    with pytest.raises(CheckpointError) as exc:
        load(tmp_path / "no_ema.pkl")
    assert "no 'G_ema'" in str(exc.value)
    assert "'training_set_kwargs', 'G', 'D', 'augment_pipe'" in str(exc.value)
    nf.write_pickle(tmp_path / "list.pkl", [1, 2], tmp_path / "EXECUTED")
    with pytest.raises(CheckpointError, match="no 'G_ema' in this pickle: it holds a list"):
        load(tmp_path / "list.pkl")
    data["G_ema"] = data["D"]
    nf.write_pickle(tmp_path / "d.pkl", data, tmp_path / "EXECUTED")
    with pytest.raises(CheckpointError, match="G_ema is a persistent Discriminator object, not a persistent Generator"):
        load(tmp_path / "d.pkl")


def test_generators_this_plugin_cannot_draw_are_refused_with_why(tmp_path):
    conditional = nf.make_generator(resolution=8)
    conditional._init_kwargs["c_dim"] = 10
    stylegan3 = nf.make_generator(resolution=8)
    stylegan3.synthesis.input = nf.FullyConnectedLayer(2, 2)
    unknown = nf.make_generator(resolution=8)
    unknown._init_kwargs["synthesis_kwargs"]["magnitude_ema_beta"] = 0.999  # a StyleGAN3 option
    for name, G, match in (("conditional", conditional, "conditional generator \\(c_dim = 10\\)"),
                           ("sg3", stylegan3, "a StyleGAN3 generator"),
                           ("unknown", unknown, "does not implement: synthesis_kwargs.magnitude_ema_beta")):
        path = tmp_path / f"{name}.pkl"  # G_ema alone: its recorded kwargs no longer build a G
        nf.write_pickle(path, {"G_ema": G}, tmp_path / "EXECUTED")
        with pytest.raises(CheckpointError, match=match):
            load(path)


def test_state_dict_errors_lead_somewhere(tmp_path):
    state = nf.make_generator(resolution=8).state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("mapping.")}, tmp_path / "no_mapping.pt")
    with pytest.raises(CheckpointError, match="cannot infer z_dim .*there is no 'mapping.fc0.weight'"):
        load(tmp_path / "no_mapping.pt")
    bad = dict(state)
    bad["synthesis.b8.conv0.weight"] = torch.zeros(16, 16, 5, 5)
    del bad["synthesis.b8.conv1.noise_strength"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as exc:
        load(tmp_path / "bad.pt")
    assert "missing keys (1): synthesis.b8.conv1.noise_strength" in str(exc.value)
    assert "synthesis.b8.conv0.weight: file has (16, 16, 5, 5), expected (16, 16, 3, 3)" in str(exc.value)
    with nf.nvlabs_globals():  # torch.save of the network object itself: a pickle that needs NVlabs's code
        torch.save(nf.make_generator(resolution=8), tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="save G_ema.state_dict\\(\\) instead"):
        load(tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="needs a weights file"):
        plugin.stylegan2_ada()


def test_captured_objects_keep_class_names_kwargs_and_source_as_data(tmp_path):
    path, marker = write_snapshot(tmp_path, nf.make_generator(resolution=8))
    data = load_nvlabs_pickle(path)
    assert list(data) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    g = data["G_ema"]
    assert g.class_name == "Generator" and g.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 256
    assert type(g.init_kwargs["mapping_kwargs"]) is dict  # EasyDict captured as a plain dict
    assert g.child("synthesis.b8.conv0").class_name == "SynthesisLayer"
    assert g.child("mapping.fc0").attributes["weight_gain"] == pytest.approx(0.01 / 32 ** 0.5)  # a numpy float64
    assert "EXECUTED" in g.module_src and len(g.source_sha256) == 64 and not marker.exists()
    assert data["augment_pipe"].attributes["imgfilter_bands"] == [1, 1, 1, 1]


@pytest.mark.slow
def test_a_whole_run_with_dissect_ace_and_did(tmp_path):
    import gandid
    from gandid.testing import BrightnessSegmenter
    from gandid_plugins.analyses import ace, did, dissect

    path, marker = write_snapshot(tmp_path, nf.make_generator(seed=8, resolution=16))
    reg = registry_with(plugin, dissect, ace, did, segmenters={"bright": BrightnessSegmenter})
    gandid.run(dict(generator="stylegan2-ada", weights=str(path), segmenter="bright",
                    analysis=["dissect", "ace", "did"], samples=32, batch_size=16, device="cpu",
                    out=str(tmp_path / "out"), analysis_options={"ace": {"samples": 4}, "did": {"samples": 8}}), registry=reg)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "completed"
    assert {name: stage["status"] for name, stage in record["stages"].items()} == {
        "dissect": "done", "ace": "done", "did": "done"}
    assert record["weights"]["generator"]["format"] == "NVlabs network pickle" and not marker.exists()
