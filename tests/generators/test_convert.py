"""`gandid convert` and `--generator auto`: every generator format is recognised by the right plugin,
converts to .safetensors with gandid's metadata and loads back to the same images (compared here with
the original file's images); what is not a generator file is named, and a plugin whose checkpoint()
loses something writes nothing."""
import errno
import json
import os
import resource
import subprocess
import sys
import types
from pathlib import Path

import nvlabs_files
import pggan_files
import pytest
import stylegan2_files
import stylegan_files
import torch

from gandid import hookimpl
from gandid.convert import convert
from gandid.errors import CheckpointError, ConfigError, GandidError, OutputExistsError
from gandid.formats import METADATA_KEY, converted_metadata, detect_generator
from gandid.registry import Registry


@pytest.fixture(scope="module")
def registry(checkpoint_generators):
    return checkpoint_generators


def write(tmp_path, fmt):
    """A random-weight file in one real layout; returns (path, plugin expected to read it)."""
    if fmt == "pggan":
        path = tmp_path / "proggan.pth"
        torch.save(pggan_files.make_state_dict(32), path)
    elif fmt == "pggan-wrapped":
        path = tmp_path / "wrapped.pth"
        torch.save({"state_dict": pggan_files.make_state_dict(16, seed=1)}, path)
    elif fmt == "stylegan2":
        path = tmp_path / "stylegan2.pt"
        torch.save({"g_ema": stylegan2_files.make_g_ema(), "latent_avg": torch.randn(8)}, path)
    elif fmt == "stylegan":
        path = tmp_path / "style-based.model"
        torch.save(stylegan_files.make_state_dict(), path)
    elif fmt == "stylegan-g_all":
        path = tmp_path / "stylegan_bedrooms_32.pt"
        torch.save(stylegan_files.make_g_all_state_dict(), path)
    elif fmt == "stylegan2-ada-pkl":
        path = tmp_path / "network-snapshot-000000.pkl"
        G = nvlabs_files.make_generator(conv_clamp=None)  # not train.py's 256: only the metadata can say so
        nvlabs_files.write_pickle(path, nvlabs_files.snapshot(G), tmp_path / "marker")
    elif fmt == "stylegan2-ada-pt":
        path = tmp_path / "G_ema.pt"
        torch.save(nvlabs_files.make_generator(seed=2).state_dict(), path)
    plugin = {"pggan-wrapped": "pggan", "stylegan-g_all": "stylegan", "stylegan2-ada-pkl": "stylegan2-ada",
              "stylegan2-ada-pt": "stylegan2-ada"}.get(fmt, fmt)
    return path, plugin


FORMATS = ["pggan", "pggan-wrapped", "stylegan2", "stylegan", "stylegan-g_all", "stylegan2-ada-pkl",
           "stylegan2-ada-pt"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_recognised_converted_and_loaded_back(registry, tmp_path, fmt):
    path, plugin = write(tmp_path, fmt)
    name, found = detect_generator(registry, path)
    assert name == plugin and found
    out = tmp_path / "converted.safetensors"
    done = convert(path, out, registry=registry)
    assert done["generator"] == plugin and out.is_file() and not list(tmp_path.glob("*.partial.safetensors"))
    meta = converted_metadata(out)
    assert meta["generator"] == plugin and meta["source"] == path.name and meta["format"] == 1
    assert detect_generator(registry, out)[0] == plugin  # the metadata names its plugin
    original = registry.create("generator", plugin, weights=str(path))
    again = registry.create("generator", plugin, weights=str(out))
    z = original.sample_z(3, 5)
    with torch.no_grad():
        assert torch.equal(original.forward(z), again.forward(z))
    assert not (tmp_path / "marker").exists()  # the pickle's embedded code never ran


def test_options_are_kept_and_the_output_is_checked(registry, tmp_path):
    path, _ = write(tmp_path, "stylegan2")
    out = tmp_path / "g.safetensors"
    convert(path, out, generator="stylegan2", options={"truncation": 0.5}, registry=registry)
    assert converted_metadata(out)["options"] == {"truncation": 0.5}
    with pytest.raises(OutputExistsError, match="--force"):
        convert(path, out, registry=registry)
    convert(path, out, registry=registry, force=True)
    with pytest.raises(ConfigError, match=".safetensors"):
        convert(path, tmp_path / "g.pt", registry=registry)


def test_a_flat_safetensors_with_a_wrong_latent_avg_gets_gandids_message(registry, tmp_path):
    from safetensors.torch import save_file

    state = dict(stylegan2_files.make_g_ema(), latent_avg=torch.randn(5))  # w has 8 values
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(CheckpointError, match="latent_avg has shape \\(5,\\).*8 values"):
        registry.create("generator", "stylegan2", weights=str(tmp_path / "flat.safetensors"))


def test_what_no_generator_reads_is_named(registry, tmp_path):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="unreadable as weights"):
        detect_generator(registry, noise)
    other = tmp_path / "segmenter.pth"
    torch.save({"encoder.conv1.weight": torch.randn(4, 3, 3, 3)}, other)
    with pytest.raises(ConfigError) as caught:
        detect_generator(registry, other)
    message = str(caught.value)
    assert "no installed generator recognises" in message and "encoder.conv1.weight" in message
    assert all(name in message for name in ("pggan", "stylegan2", "stylegan2-ada", "stylegan"))
    with pytest.raises(CheckpointError, match="does not exist"):
        detect_generator(registry, tmp_path / "missing.pth")


def test_a_checkpoint_that_loses_something_writes_nothing(tmp_path):
    from gandid.testing import TinyGenerator

    class Lossy(TinyGenerator):
        def __init__(self, weights=None):
            super().__init__()
            if weights is not None and str(weights).endswith(".safetensors"):
                return  # the converted file's tensors are ignored: its images differ from the original's
            torch.manual_seed(1)
            for p in self.parameters():
                p.data.normal_()

        def checkpoint(self):
            return {"nothing": torch.zeros(1)}, {}

    module = types.ModuleType("lossy")
    module.gandid_register_generators = hookimpl(lambda register: register("lossy", Lossy))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "lossy")
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(GandidError, match="does not reproduce"):
        convert(tmp_path / "w.pt", tmp_path / "out.safetensors", generator="lossy", registry=reg)
    assert not (tmp_path / "out.safetensors").exists() and not list(tmp_path.glob("*.partial.safetensors"))


@pytest.mark.slow
def test_run_with_generator_auto_records_what_it_found(registry, tmp_path):
    import gandid_plugins.analyses.dissect
    from gandid.config import RunConfig
    from gandid.runner import run
    from gandid.testing import BrightnessSegmenter

    path, _ = write(tmp_path, "pggan")
    module = types.ModuleType("seg")
    module.gandid_register_segmenters = hookimpl(lambda register: register("tiny", BrightnessSegmenter))
    registry.add_plugin(module, "seg")
    registry.add_plugin(gandid_plugins.analyses.dissect, "dissect")
    cfg = RunConfig(generator="auto", weights=str(path), segmenter="tiny", analysis=["dissect"], samples=8,
                    batch_size=8, device="cpu", out=str(tmp_path / "run"),
                    analysis_options={"dissect": {"fit_samples": 8}})
    assert run(cfg, registry=registry).status == "completed"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["generator"] == "pggan"
    assert any("--generator auto" in note and "PG-GAN" in note for note in record["notes"])
    with pytest.raises(ConfigError, match="give --weights"):
        run(RunConfig(generator="auto", out=str(tmp_path / "run2")), registry=registry)
    assert METADATA_KEY == "gandid"


def test_plugin_options_on_the_command_line():
    from gandid.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--generator-option", "inputs=photos", "--generator-option",
                                      "truncation=0.7", "--segmenter-option", "segsizes=[256, 384]"])
    cfg = config_from_args(args)
    assert cfg.generator_options == {"inputs": "photos", "truncation": 0.7}
    assert cfg.segmenter_options == {"segsizes": [256, 384]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config_from_args(build_parser().parse_args(["run", "--generator-option", "inputs"]))


def test_errors_that_lead_somewhere(registry, tmp_path):
    import gandid

    path, _ = write(tmp_path, "pggan")
    with pytest.raises(GandidError, match="truncaton.*did you mean|truncaton"):
        registry.create("generator", "stylegan2", weights=str(path), truncaton=0.5)
    with pytest.raises(GandidError, match="unknown option of generator 'pggan' 'clamp'; did you mean 'output_clamp'"):
        gandid.load_generator("pggan", weights=str(path), clamp=True)
    training = tmp_path / "train.pt"
    torch.save({"g": stylegan2_files.make_g_ema(), "d": {"convs.0.weight": torch.randn(2)}}, training)
    with pytest.raises(CheckpointError, match="no 'g_ema'.*it has 'g'"):
        registry.create("generator", "stylegan2", weights=str(training))


def test_an_unsupported_layout_is_named(registry, tmp_path):
    swagan = dict(stylegan2_files.make_g_ema(), **{"iwt.ll": torch.ones(1, 1, 2, 2), "to_rgbs.0.iwt.ll": torch.ones(1, 1, 2, 2)})
    torch.save({"g_ema": swagan}, tmp_path / "swagan.pt")
    with pytest.raises(ConfigError, match="looks most like rosinality's SWAGAN"):
        detect_generator(registry, tmp_path / "swagan.pt")
    torch.save({"synthesis.input.weight": torch.ones(2), "synthesis.L0_36_512.weight": torch.ones(2)},
               tmp_path / "sg3.pt")
    with pytest.raises(ConfigError, match="StyleGAN3"):
        detect_generator(registry, tmp_path / "sg3.pt")
    torch.save({"d": {"final_linear.0.weight": torch.ones(2), "convs.0.0.weight": torch.ones(2)}}, tmp_path / "d.pt")
    with pytest.raises(ConfigError, match="a discriminator"):
        detect_generator(registry, tmp_path / "d.pt")


def test_gandid_convert_on_the_command_line(tmp_path, capsys):
    """`gandid convert IN OUT.safetensors` with the installed plugins: what it found, what it wrote, and a
    refusal (exit 2, no traceback) for an existing output without --force."""
    from gandid.cli import main

    path, plugin = write(tmp_path, "stylegan2")
    out = tmp_path / "g.safetensors"
    assert main(["convert", str(path), str(out), "--option", "truncation=0.7"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"-> generator '{plugin}'" in said and "wrote" in said and "loaded back, images equal to" in said
    assert converted_metadata(out)["generator"] == plugin and converted_metadata(out)["options"] == {"truncation": 0.7}
    assert main(["convert", str(path), str(out)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "--force" in said and "Traceback" not in said


# -- the destination: checked before anything loads; written whole or not at all -------------------------
def recording_registry():
    """A registry whose one generator records every time it is built (a stand-in for loading a model)."""
    from gandid.testing import TinyGenerator

    built = []

    def factory(weights=None):
        built.append(weights)
        return TinyGenerator()

    module = types.ModuleType("recording")
    module.gandid_register_generators = hookimpl(lambda register: register("recording", factory))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "recording")
    return reg, built


def test_a_read_only_destination_is_named_before_anything_loads(tmp_path, monkeypatch):
    """The filesystem refuses the probe file (EROFS from os.open, what a read-only mount answers): the
    message names the folder, says why and what to do, and no model was loaded."""
    reg, built = recording_registry()
    (tmp_path / "w.pt").write_bytes(b"")
    folder = tmp_path / "mounted"
    folder.mkdir()
    real_open = os.open

    def read_only_open(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(ConfigError) as caught:
        convert(tmp_path / "w.pt", folder / "g.safetensors", generator="recording", registry=reg)
    message = str(caught.value)
    assert f"folder {str(folder)!r}" in message and "the filesystem is read-only" in message, message
    assert "choose an OUT in a folder you can write to" in message
    assert built == [] and not list(folder.iterdir())
    monkeypatch.undo()
    convert(tmp_path / "w.pt", folder / "g.safetensors", generator="recording", registry=reg)  # the same, writable
    assert built and (folder / "g.safetensors").is_file()


def test_a_folder_the_system_refuses_is_named_before_anything_loads(tmp_path):
    """A real refusal by the kernel: a folder without write permission (0o555) for a normal user; root
    writes there anyway, so as root sysfs, which refuses new files to everyone."""
    reg, built = recording_registry()
    (tmp_path / "w.pt").write_bytes(b"")
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
    else:
        folder = Path("/sys/kernel")
    try:
        (folder / "gandid-probe").write_bytes(b"")
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            pytest.skip(f"{folder} refuses files with {errno.errorcode[exc.errno]}, not a permission error")
    else:
        (folder / "gandid-probe").unlink()
        pytest.skip(f"{folder} is writable here")
    try:
        with pytest.raises(ConfigError) as caught:
            convert(tmp_path / "w.pt", folder / "g.safetensors", generator="recording", registry=reg)
    finally:
        if folder.is_relative_to(tmp_path):
            folder.chmod(0o755)
    message = str(caught.value)
    assert f"folder {str(folder)!r}" in message and ("permission denied" in message
                                                     or "operation not permitted" in message), message
    assert built == [] and not (folder / "g.safetensors").exists()


def test_a_missing_destination_folder_is_named_before_anything_loads(tmp_path, capsys):
    from gandid.cli import main

    reg, built = recording_registry()
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        convert(tmp_path / "w.pt", tmp_path / "no" / "such" / "g.safetensors", generator="recording", registry=reg)
    message = str(caught.value)
    assert f"folder {str(tmp_path / 'no' / 'such')!r}" in message and "no such folder" in message, message
    assert "create it first" in message and built == []
    assert main(["convert", str(tmp_path / "w.pt"), str(tmp_path / "no" / "g.safetensors")]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "no such folder" in said and "Traceback" not in said, said
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        convert(tmp_path / "w.pt", tmp_path / "dir.safetensors", generator="recording", registry=reg, force=True)
    assert built == []


@pytest.mark.parametrize("failure", ["oserror", "safetensors"])
def test_a_write_that_fails_midway_leaves_out_as_it_was(registry, tmp_path, monkeypatch, failure):
    """The disk fills while the file is written (after part of it is on disk): OUT keeps what it held
    before (here an older file replaced with force), no partial file is left, the message names OUT."""
    import safetensors.torch
    from safetensors import SafetensorError

    path, _ = write(tmp_path, "stylegan2")
    out = tmp_path / "g.safetensors"
    out.write_bytes(b"the previous file")

    def fill_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # part of the file is written
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", fill_the_disk)
    with pytest.raises(GandidError) as caught:
        convert(path, out, registry=registry, force=True)
    message = str(caught.value)
    assert str(out) in message and "the disk is full" in message and "nothing was written" in message, message
    assert out.read_bytes() == b"the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, out.name])


@pytest.mark.slow
def test_a_file_size_limit_leaves_no_half_written_file(tmp_path):
    """`gandid convert` in a process that may write at most 16 KiB per file (RLIMIT_FSIZE: the kernel
    answers EFBIG past it, as a full disk answers ENOSPC): exit 2, a message naming OUT, no traceback, and
    nothing in the output folder."""
    path, _ = write(tmp_path, "stylegan2")
    folder = tmp_path / "converted"
    folder.mkdir()
    out = folder / "g.safetensors"
    limit = 16 * 1024
    assert path.stat().st_size > 2 * limit  # the converted file cannot fit under the limit

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="400", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-m", "gandid", "convert", str(path), str(out)], capture_output=True,
                          text=True, env=env, preexec_fn=limit_file_size, timeout=300)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert str(out) in said and "file-size limit" in said and "nothing was written" in said, said
    assert "Traceback" not in said
    assert list(folder.iterdir()) == []
