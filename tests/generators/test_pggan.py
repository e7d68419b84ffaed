import math
import pathlib

import pytest
import torch
from pggan_files import make_state_dict, manual_forward
from safetensors.torch import save_file

from gandid.errors import CheckpointError
from gandid.hooks import Trace, features_at
from gandid_plugins.generators.pggan import PGGANGenerator, pggan

RESOLUTIONS = [8, 16, 32, 64, 128, 256]


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_every_resolution_loads_and_matches_an_independent_forward(resolution, tmp_path):
    state = make_state_dict(resolution, seed=resolution)
    path = tmp_path / "g.pth"
    torch.save({"state_dict": state} if resolution % 16 == 0 else state, path)  # both wrappings
    gen = pggan(weights=str(path))
    n_layers = 2 * int(math.log2(resolution // 4)) + 2
    assert [l.name for l in gen.layers] == [f"layer{i}" for i in range(1, n_layers + 1)]
    assert gen.resolution == resolution and gen.z_dim == 16
    assert [s.name for s in gen.norm_sites][-1] == f"output_{resolution}x{resolution}.norm"
    assert gen.norm_sites[1].layer == "layer1" and gen.norm_sites[0].layer is None
    z = gen.sample_z(3, seed=7)
    state64 = {k: v.double() for k, v in state.items()}
    with torch.no_grad(), Trace(gen, [l.name for l in gen.layers]) as trace:
        images = gen.forward(z)
        expected32 = manual_forward(state, z)
        expected64 = manual_forward(state64, z.double())
        images64 = PGGANGenerator.from_state_dict(state64).double().forward(z.double())
    assert images.shape == (3, 3, resolution, resolution)
    # The layout check: in float64 the plugin and the independent forward agree to rounding.
    torch.testing.assert_close(images64, expected64, rtol=1e-9, atol=1e-9)
    # In float32 random-weight nets amplify rounding (~1e-4 at 256 px), so the plugin is held to
    # the independent float32 forward's own error against float64.
    naive_error = float((expected32.double() - expected64).abs().max())
    assert float((images.double() - expected64).abs().max()) <= max(1e-5, 2 * naive_error)
    for info in gen.layers:  # declared channel counts and sizes are the real ones
        assert trace[info.name].shape[1:] == (info.channels, *info.size)


def test_sample_z_depends_only_on_seed_and_index():
    gen = PGGANGenerator.from_state_dict(make_state_dict(8))
    whole = gen.sample_z(6, seed=3)
    torch.testing.assert_close(gen.sample_z(2, seed=3, start=4), whole[4:])
    assert not torch.allclose(gen.sample_z(6, seed=4), whole)


def test_safetensors_and_old_names_load_to_the_same_generator(tmp_path):
    state = make_state_dict(32, seed=1)
    save_file(state, str(tmp_path / "g.safetensors"))
    old = make_state_dict(32, seed=1, old_names=True, with_scale=True)
    torch.save(old, tmp_path / "old.pth")
    z = torch.randn(2, 16)
    with torch.no_grad():
        a = pggan(weights=str(tmp_path / "g.safetensors")).forward(z)
        b = pggan(weights=str(tmp_path / "old.pth")).forward(z)
    torch.testing.assert_close(a, b)


def test_stored_wscale_scale_is_used():
    old = make_state_dict(8, old_names=True, with_scale=True)
    old["features.0.wscale.scale"] = old["features.0.wscale.scale"] * 2
    gen = PGGANGenerator.from_state_dict(old)
    assert gen.net.layer1.wscale.scale == pytest.approx(2 * math.sqrt(2) / 4 / math.sqrt(16))


def test_features_at_stops_at_the_layer_and_forward_from_continues():
    gen = PGGANGenerator.from_state_dict(make_state_dict(32))
    z = gen.sample_z(2, seed=0)
    with torch.no_grad():
        feats = features_at(gen, z, "layer4")
        torch.testing.assert_close(gen.forward_from("layer4", feats, z), gen.forward(z))


def test_wrong_checkpoint_lists_what_is_wrong(tmp_path):
    state = make_state_dict(16)
    del state["layer3.wscale.b"]
    state["layer2.conv.weight"] = torch.zeros(16, 16, 5, 5)
    state["mapping.fc.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        pggan(weights=str(tmp_path / "bad.pth"))
    message = str(exc.value)
    assert "missing keys (1): layer3.wscale.b" in message
    assert "unexpected keys (1): mapping.fc.weight" in message
    assert "layer2.conv.weight: file has (16, 16, 5, 5), expected (16, 16, 3, 3)" in message

    torch.save({"g_ema": {"style.1.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a PG-GAN generator checkpoint"):
        pggan(weights=str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match="does not exist"):
        pggan(weights=str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match="needs a weights file"):
        pggan()


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"layer1.conv.weight": torch.zeros(1), "payload": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        pggan(weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_registered_through_the_entry_point():
    from gandid.registry import Registry

    entry = Registry().get("generator", "pggan")
    assert entry.plugin.package == "gandid"
