"""Loading weights safely (never unpickling code) and checking them against an expected layout."""
from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = 0x80  # legacy torch.save files and plain pickles start with the PROTO opcode
_LEGACY_PICKLES = 5  # a legacy torch.save: magic number, protocol version, sys info, the object, storage keys
# torch.load's weights_only reader warns about every pickle protocol but 2; the file's protocol is not the
# user's to fix (a protocol it cannot read fails with its own message), so the note is noise on the console
PROTOCOL_WARNING = r"Detected pickle protocol \d+ in the checkpoint"


class TruncatedFileError(CheckpointError):
    """A weights file that ends before its data does: an incomplete download or copy."""


def quiet_torch_load(*args, **kwargs):
    """``torch.load`` without its pickle-protocol note (:data:`PROTOCOL_WARNING`); other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PROTOCOL_WARNING, category=UserWarning)
        return torch.load(*args, **kwargs)


class _Bounded:
    """A file for :func:`pickletools.genops` whose reads stop at its end and remember running past it;
    a count no real file reaches is damage (a length field of a corrupted stream), not an early end."""

    def __init__(self, f, size: int):
        self.f, self.size, self.short, self.damaged = f, size, False, False

    def tell(self) -> int:
        return self.f.tell()

    def read(self, n: int) -> bytes:
        left = self.size - self.f.tell()
        if n >= 1 << 40:
            self.damaged = True
        if n > left:
            self.short = True
            n = left
        return self.f.read(n)

    def readline(self) -> bytes:
        line = self.f.readline()
        if not line.endswith(b"\n"):
            self.short = True
        return line


class _EndsEarly(Exception):
    """A pickle of the file ends before its STOP instruction."""


def _read_pickles(f, size: int, count: int, keep: bool = True) -> list[list]:
    """The instructions ``(opcode name, argument)`` of the next ``count`` pickles in ``f`` (parsed, never
    run; none kept unless ``keep``: an NVlabs pickle's arguments are its tensors); raises
    :class:`_EndsEarly` for one cut short, ValueError for one damaged otherwise."""
    reader = _Bounded(f, size)
    pickles = []
    for _ in range(count):
        try:
            pickles.append([(op.name, arg) for op, arg, _pos in pickletools.genops(reader) if keep])
        except (ValueError, struct.error, IndexError):
            if reader.short and not reader.damaged:
                raise _EndsEarly from None
            raise ValueError("damaged") from None
    return pickles


def _is_legacy_torch(head: bytes) -> bool:
    """A legacy torch.save file: its first pickle's first value is torch's magic number."""
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(head)):
            if op.name not in ("PROTO", "FRAME"):
                return op.name == "LONG1" and arg == torch.serialization.MAGIC_NUMBER
    except (ValueError, struct.error, IndexError):
        pass
    return False


def _element_size(type_name) -> int | None:
    """Bytes per element of a legacy storage class (``torch FloatStorage``), None if not torch's."""
    module, _, name = str(type_name).rpartition(" ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some storage classes note that TypedStorage is deprecated
        dtype = getattr(getattr(torch, name, None), "dtype", None) if module == "torch" else None
    return dtype.itemsize if isinstance(dtype, torch.dtype) else None


def _legacy_data_size(objects: list, keys: list) -> int | None:
    """Bytes of a legacy torch.save's tensor data after its pickles: per storage (in the order of the keys
    pickle) its element count (8 bytes) and its elements. Each storage is a persistent ID ('storage',
    class, key, location, count, ...) in the object pickle; the strings and classes are followed through
    the memo, as a second use of one is a memo reference. None where the layout is not torch's."""
    memo, pushed, storages = {}, [], {}
    for name, arg in objects:
        if name in ("GLOBAL", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1",
                    "BININT2", "LONG1", "INT", "LONG"):
            pushed.append(arg)
        elif name == "STACK_GLOBAL" and len(pushed) >= 2:
            pushed[-2:] = [f"{pushed[-2]} {pushed[-1]}"]
        elif name == "MEMOIZE" and pushed:
            memo[len(memo)] = pushed[-1]
        elif name in ("BINPUT", "LONG_BINPUT", "PUT") and pushed:
            memo[arg] = pushed[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        elif name == "BINPERSID":
            recent = range(len(pushed) - 1, max(len(pushed) - 10, -1), -1)  # the tuple's items, just pushed
            at = next((i for i in recent if pushed[i] == "storage"), None)
            if at is None or len(pushed) < at + 5:
                return None
            _, type_name, key, _location, count = pushed[at:at + 5]
            storages[key] = (type_name, count)
        else:
            pushed.append(None)  # anything else: a value these storages never are
    total = 0
    for key in keys:
        type_name, count = storages.get(key, (None, None))
        element = _element_size(type_name)
        if element is None or not isinstance(count, int):
            return None
        total += 8 + count * element
    return total


def truncation_error(path, exc: BaseException | None = None) -> TruncatedFileError | None:
    """The error for a weights file that ends before its data does, or None when it is whole as far as
    its structure shows: a pickle (plain or a legacy torch.save) cut before its end mark, a zip archive
    (torch.save's format) without the directory written last, a safetensors file shorter than its header
    says; ``exc``, torch.load's failure, adds what torch saw (a legacy file's tensor data ending early)."""
    path = Path(path)
    verdict = "unreadable: the file is truncated"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(32)
            f.seek(0)
            why = None
            if path.suffix == ".safetensors":
                if size < 8:
                    why = "it ends inside its 8-byte header size"
                else:
                    length = struct.unpack("<Q", head[:8])[0]
                    if 8 + length > size:
                        why = f"its header alone says it is {8 + length:,} bytes"
                    else:
                        f.seek(8)
                        header = json.loads(f.read(length))
                        end = max([e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"] or [0])
                        if 8 + length + end > size:
                            why = f"its header says it is {8 + length + end:,} bytes"
            elif head and len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head):
                verdict = "not a readable PyTorch file, damaged or truncated"
                why = "it ends inside the zip header that torch.save writes first"
            elif head.startswith(_ZIP_MAGIC):
                try:
                    zipfile.ZipFile(f).close()
                except zipfile.BadZipFile:
                    # an archive cut anywhere loses its directory; so does one damaged at its end
                    verdict = "not a readable PyTorch file, damaged or truncated"
                    why = "the zip directory that torch.save writes last is missing"
            elif head[:1] == bytes([_PICKLE_PROTO]):
                try:
                    legacy = _is_legacy_torch(head)
                    pickles = _read_pickles(f, size, _LEGACY_PICKLES if legacy else 1, keep=legacy)
                except _EndsEarly:
                    why = "it ends inside its pickle data, before the end mark"
                else:
                    keys = [arg for _name, arg in pickles[-1] if isinstance(arg, str)] if legacy else []
                    need = _legacy_data_size(pickles[3], keys) if legacy else None
                    if need is not None and f.tell() + need > size:
                        why = f"its tensor data needs {f.tell() + need:,} bytes in all"
                    elif exc is not None and "unexpected EOF" in str(exc):
                        why = "its tensor data ends early"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None  # unreadable in another way: the caller's own message says so
    if why is None:
        return None
    return TruncatedFileError(f"{path}: {verdict} ({size:,} bytes; {why}): most likely an incomplete download or "
                              "copy. Download or copy it again and compare its size with the original's")


def refusal_reason(exc: Exception) -> str:
    """What the tensors-only unpickler objected to, without torch's advice to disable it."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it needs the Python object {found.group(1)}"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        op = pickletools.code2op.get(chr(int(found.group(1))))
        if op is not None and op.proto >= 3:
            # torch's reader knows protocol 2's instructions only: the file may hold nothing but tensors
            return (f"it is written with pickle protocol {op.proto} or later (instruction {op.name}), which torch's "
                    "tensors-only reader does not read (torch.save writes protocol 2 unless told otherwise)")
        return f"it uses pickle instruction {found.group(1)}, which a plain tensor file never needs"
    return "it holds objects beyond tensors and plain containers"


def load_error(exc: Exception) -> str:
    """``torch.load``'s failure in a few words, for a message: the unpickler's objection (see
    :func:`refusal_reason`) or the error's first line, never torch's advice to load without
    ``weights_only``."""
    if isinstance(exc, pickle.UnpicklingError):
        return refusal_reason(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = next((line for line in lines if "weights_only" not in line), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_state_dict_file(path) -> dict:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file read with ``weights_only=True``.

    A pickle that would run code (or build arbitrary objects) is refused with a clear error.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights {str(path)!r} is a directory: give the weights file inside it")
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            cut = truncation_error(path)
            if cut is not None:
                raise cut from None
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith(_ZIP_MAGIC) and (not head or head[0] != _PICKLE_PROTO):
        cut = truncation_error(path)  # the first bytes of a zip archive, and nothing after them
        if cut is not None:
            raise cut
        what = "it is empty" if not head else "it is neither a zip archive nor a pickle"
        raise CheckpointError(f"{path}: not a PyTorch file ({what}); give a file written by torch.save "
                              "(.pth/.pt) or a .safetensors file")
    try:
        data = quiet_torch_load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # a file cut short fails in any of torch's readers, as whatever its last bytes happen to look like
        cut = truncation_error(path, exc)
        if cut is not None:
            raise cut from None
        if isinstance(exc, pickle.UnpicklingError):
            raise CheckpointError(f"{path}: refusing to load: {refusal_reason(exc)}, and gandid never unpickles "
                                  "code or arbitrary objects. Convert it to a plain state dict (names to tensors) "
                                  "or .safetensors in an environment you trust.") from None
        raise CheckpointError(f"{path}: not a readable PyTorch file, damaged or truncated ({load_error(exc)})"
                              ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                              f"{type(data).__name__}")
    return data


def check_state_dict(state: dict, expected: dict, what: str, integer_keys=()) -> None:
    """Raise one error that lists every missing key, unexpected key, shape mismatch and tensor that is
    not floating point (weights stored as integers or booleans load into garbage, silently);
    ``integer_keys`` are counters that are integers by design."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file has {tuple(state[k].shape)}, expected {tuple(expected[k])}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    not_float = [f"{k}: {getattr(state[k], 'dtype', type(state[k]).__name__)}" for k in expected
                 if k in state and k not in integer_keys
                 and not (isinstance(state[k], torch.Tensor) and state[k].is_floating_point())]
    if not (missing or unexpected or mismatched or not_float):
        return
    lines = [f"{what} does not match the expected layout:"]

    def show(title, items):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))

    show("missing keys", missing)
    show("unexpected keys", unexpected)
    show("shape mismatches", mismatched)
    show("not floating-point weights (expected float32, float16, bfloat16 or float64)", not_float)
    raise CheckpointError("\n".join(lines))


def to_float(state: dict, dtype: torch.dtype = torch.float32) -> tuple[dict, dict]:
    """Floating tensors converted to ``dtype`` on purpose (float16/bfloat16 files run in float32);
    returns the converted dict and a record of what the file stored, for run.json."""
    stored: dict[str, int] = {}
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            name = str(value.dtype).removeprefix("torch.")
            stored[name] = stored.get(name, 0) + 1
            value = value.to(dtype)
        out[key] = value
    info = {"stored_dtypes": stored, "loaded_as": str(dtype).removeprefix("torch.")}
    if any(name != info["loaded_as"] for name in stored):
        info["converted"] = True
    return out, info
