"""Weights files that cannot be read say why in words a user can act on: a file cut short (an incomplete
download or copy) is called truncated, with its size, whatever instruction its last bytes happen to
look like; a complete file in a pickle protocol torch's tensors-only reader does not know says so; and
torch's note about the pickle protocol does not reach the console."""
import pickle
import re
import warnings

import nvlabs_files
import pytest
import stylegan_files
import torch

from gandid.checkpoints import TruncatedFileError, load_state_dict_file
from gandid.errors import CheckpointError
from gandid.formats import detect_generator

PROTOCOL_NOTE = re.compile(r"pickle protocol", re.IGNORECASE)


def save(path, fmt):
    """A small real StyleGAN (rosinality) checkpoint written one way: torch.save's zip or legacy format in
    a pickle protocol, a plain pickle.dump, or safetensors."""
    state = stylegan_files.make_state_dict()
    if fmt == "legacy-p2":  # torch.save before 1.6, as rosinality's released .model files are
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif fmt == "legacy-p4":
        torch.save(state, path, pickle_protocol=4, _use_new_zipfile_serialization=False)
    elif fmt == "zip-p2":
        torch.save(state, path)
    elif fmt == "zip-p4":
        torch.save(state, path, pickle_protocol=4)
    elif fmt == "pickle-p4":
        path.write_bytes(pickle.dumps(state, protocol=4))
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    return path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path.stat().st_size


FORMATS = ["legacy-p2", "legacy-p4", "zip-p2", "zip-p4", "pickle-p4", "safetensors"]


@pytest.fixture(scope="module")
def registry(checkpoint_generators):
    return checkpoint_generators


def check_truncated(message, path, size):
    assert str(path) in message and f"{size:,} bytes" in message, message
    assert "truncated" in message and "incomplete download or copy" in message, message
    assert "Download or copy it again" in message, message
    assert "instruction" not in message and "149" not in message, message


@pytest.mark.parametrize("fmt", FORMATS)
def test_half_a_checkpoint_is_called_truncated(registry, tmp_path, fmt):
    """--generator stylegan and --generator auto on the first half of a real checkpoint."""
    path = save(tmp_path / ("g.safetensors" if fmt == "safetensors" else "g.model"), fmt)
    size = truncate(path)
    with pytest.raises(TruncatedFileError) as caught:
        registry.create("generator", "stylegan", weights=str(path))
    check_truncated(str(caught.value), path, size)
    if fmt.startswith("zip"):  # a zip archive damaged at its end also loses its directory
        assert "damaged or truncated" in str(caught.value)
    with pytest.raises(TruncatedFileError) as caught:  # not "no installed generator recognises this file"
        detect_generator(registry, path)
    check_truncated(str(caught.value), path, size)


@pytest.mark.parametrize("fmt", ["legacy-p2", "legacy-p4", "pickle-p4", "zip-p2", "safetensors"])
@pytest.mark.slow
def test_a_checkpoint_cut_anywhere_is_called_truncated(tmp_path, fmt):
    """Cut at many places (inside an instruction, its argument, a line of text, the tensor data): always
    gandid's message, never an IndexError or struct.error from torch's reader, never a refusal."""
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    whole = save(tmp_path / f"whole{suffix}", fmt).read_bytes()
    path = tmp_path / f"cut{suffix}"
    for size in sorted({1, 2, 3, 7, 30, 61, 100, 200, 333, len(whole) - 1}
                       | set(range(500, len(whole), len(whole) // 37))):
        path.write_bytes(whole[:size])
        with pytest.raises(TruncatedFileError) as caught:
            load_state_dict_file(path)
        check_truncated(str(caught.value), path, size)
    path.write_bytes(whole)
    if fmt.endswith("p4"):  # whole, it is refused for its protocol, not called truncated
        with pytest.raises(CheckpointError, match="pickle protocol 4") as caught:
            load_state_dict_file(path)
        assert not isinstance(caught.value, TruncatedFileError)
    else:
        assert set(load_state_dict_file(path)) == set(stylegan_files.make_state_dict())


def test_a_truncated_nvlabs_snapshot_is_called_truncated(registry, tmp_path):
    """The data-only NVlabs reader (its own unpickler, which reads protocol 4) says truncated too, as does
    --generator auto; the embedded code never runs."""
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "network-snapshot-000040.pkl"
    snapshot = nvlabs_files.snapshot(nvlabs_files.make_generator(resolution=8))
    nvlabs_files.write_pickle(path, snapshot, marker, protocol=4)
    size = truncate(path)
    with pytest.raises(CheckpointError) as caught:
        registry.create("generator", "stylegan2-ada", weights=str(path))
    check_truncated(str(caught.value), path, size)
    assert "unreadable" in str(caught.value) and "refusing" not in str(caught.value)
    with pytest.raises(TruncatedFileError) as caught:
        detect_generator(registry, path)
    check_truncated(str(caught.value), path, size)
    assert not marker.exists()


def test_random_bytes_after_a_pickle_header_are_not_called_truncated(tmp_path):
    """An unknown instruction in the middle of a file is damage: the message must not blame the copy."""
    path = tmp_path / "noise.pth"
    path.write_bytes(b"\x80\x02" + bytes([0xff]) + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_file(path)
    message = str(caught.value)
    assert not isinstance(caught.value, TruncatedFileError), message
    assert "the file is truncated" not in message and "incomplete download" not in message, message


@pytest.mark.parametrize("fmt", ["legacy-p4", "zip-p4", "pickle-p4"])
def test_a_whole_protocol_4_file_names_its_protocol(tmp_path, fmt):
    """torch's tensors-only reader knows protocol 2's instructions only; a complete protocol-4 file is
    refused in those words, not as 'instruction 149, which a plain tensor file never needs'."""
    path = save(tmp_path / "g.pt", fmt)
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_file(path)
    message = str(caught.value)
    assert not isinstance(caught.value, TruncatedFileError)
    assert "pickle protocol 4 or later (instruction FRAME)" in message and "torch.save writes protocol 2" in message
    assert "149" not in message and "never needs" not in message and "weights_only" not in message


def test_torchs_pickle_protocol_note_does_not_reach_the_console(tmp_path):
    """A protocol-3 file loads; torch.load's UserWarning about its protocol is silenced where gandid
    loads, and only that one."""
    path = tmp_path / "g.pt"
    torch.save(stylegan_files.make_state_dict(), path, pickle_protocol=3)
    with pytest.warns(UserWarning, match="pickle protocol 3"):  # what the filter is for: torch does warn
        torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = load_state_dict_file(path)
    assert set(state) == set(stylegan_files.make_state_dict())
    assert not [w for w in caught if PROTOCOL_NOTE.search(str(w.message))], [str(w.message) for w in caught]


def test_other_warnings_while_loading_still_reach_the_console(tmp_path, monkeypatch):
    path = tmp_path / "g.pt"
    torch.save({"w": torch.zeros(2)}, path)
    real_load = torch.load

    def load_with_notes(*args, **kwargs):
        warnings.warn("Detected pickle protocol 5 in the checkpoint, which was not the default", UserWarning)
        warnings.warn("a different note about this checkpoint", UserWarning)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_with_notes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_state_dict_file(path)
    assert [str(w.message) for w in caught] == ["a different note about this checkpoint"]
