"""Reading NVlabs network pickles (``network-snapshot-*.pkl``) as data, without running their code.

What such a file is (facts from NVlabs/stylegan2-ada-pytorch, ``torch_utils/persistence.py``,
``training/training_loop.py`` and ``legacy.py``):

- ``training_loop.py`` writes a snapshot with plain ``pickle.dump`` (not ``torch.save``) of a dict
  ``{"training_set_kwargs": dict, "G": ..., "D": ..., "G_ema": ..., "augment_pipe": ...}``.
- Every network object is an instance of a class decorated with ``@persistence.persistent_class``,
  whose ``__reduce__`` pickles it as the call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
  with ``meta = {"type": "class", "version": 6, "module_src": <source text of the module defining the
  class>, "class_name": ..., "state": <the object's __dict__>}``. Loading it the ordinary way
  ``exec``s ``module_src``: the file carries code, and unpickling runs it.
- The state is a ``torch.nn.Module``'s ``__dict__``: ``_parameters``, ``_buffers`` and ``_modules``
  (ordered dicts), empty hook dicts, ``training``, the ``_init_args`` / ``_init_kwargs`` the decorator
  recorded (``dnnlib.util.EasyDict`` for nested option dicts) and plain attributes, some of them numpy
  scalars (``weight_gain = lr_multiplier / np.sqrt(in_features)``).
- Tensors inside are pickled by torch's own ``__reduce_ex__``: ``torch._utils._rebuild_tensor_v2`` /
  ``_rebuild_parameter`` around a storage pickled as ``torch.storage._load_from_bytes(b)``, where
  ``b`` is a legacy-format ``torch.save`` of that one storage.

This module reads the stream with a :class:`pickle.Unpickler` whose ``find_class`` answers only the
globals listed in :data:`ALLOW_LIST`, each with a stand-in written here that turns its arguments into
inert data (it never returns the real function or class). ``_reconstruct_persistent_obj`` is answered
by capturing ``meta`` as a :class:`PersistentObject` (class name, init kwargs, parameters, buffers,
submodules, attributes); ``module_src`` is kept as text and its hash, and is never compiled, imported
or executed. Storages are decoded by ``torch.load(..., weights_only=True)``, torch's own tensors-only
unpickler. Any other global (``os.system``, ``builtins.eval``, a class of the embedded module, a torch
module class, ...) stops loading with a :class:`~gandid.errors.CheckpointError` that names it.
Objects the stand-ins produce refuse pickle's BUILD instruction, so a crafted stream cannot set state on them.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gandid.checkpoints import load_error, truncation_error
from gandid.errors import CheckpointError

PICKLE_PROTO = 0x80  # every pickle of protocol 2 or later starts with the PROTO opcode
_TORCH_LEGACY_MAGIC_OPCODE = 0x8A  # legacy torch.save files start with PROTO then LONG1 (its magic number)


class _Refused(CheckpointError):
    """Raised from inside the unpickler; the loader adds the file name."""


# -- inert stand-ins ---------------------------------------------------------------------------
class _Inert:
    """Base of every object the stand-ins return: pickle's BUILD instruction (which would set state on
    it) is refused, so a crafted stream cannot turn one into something else."""

    __slots__ = ()
    what = "rebuilt object"

    def __setstate__(self, state):
        raise _Refused(f"it sets state on a {self.what} with pickle instruction BUILD, which a network pickle "
                       "never does")


class _Storage(_Inert):
    __slots__ = ("storage",)
    what = "tensor storage"

    def __init__(self, storage):
        self.storage = storage


class _Tensor(_Inert):
    __slots__ = ("tensor", "parameter")
    what = "tensor"

    def __init__(self, tensor, parameter=False):
        self.tensor, self.parameter = tensor, parameter


class _Persistent(_Inert):
    """What ``_reconstruct_persistent_obj(meta)`` leaves on the unpickler's stack; converted to a
    :class:`PersistentObject` once the stream is read."""

    __slots__ = ("meta",)
    what = "persistent network object"

    def __init__(self, meta):
        self.meta = meta


class _EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict subclass with attribute access): pickled with
    NEWOBJ and SETITEMS, so a dict subclass rebuilds it; a BUILD may only carry more items."""

    def __setstate__(self, state):
        if state is None:
            return
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _Refused("it sets a non-dict state on a dnnlib.util.EasyDict")
        self.update(state)


class _NumpyDtype(_Inert):
    """``numpy.dtype(name, align, copy)`` then BUILD (byte order); only the name and byte order are kept."""

    __slots__ = ("name", "byteorder")
    what = "numpy dtype"

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str):
            raise _Refused(f"it builds a numpy dtype from {type(name).__name__}")
        self.name, self.byteorder = name, "<"

    def __setstate__(self, state):  # numpy writes (version, byteorder, subarray, names, fields, ...)
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Refused("it gives a numpy dtype an unexpected state")
        if any(part is not None for part in state[2:5]):
            raise _Refused("it uses a structured or subarray numpy dtype, which a network pickle never stores")
        self.byteorder = state[1]


# struct formats of the numpy scalar types a network's attributes use (np.float64 gains, np.float32, ints)
_NUMPY_SCALARS = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
                  "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar(dtype, bytes)`` decoded to a Python number with ``struct``."""
    if not isinstance(dtype, _NumpyDtype) or dtype.name not in _NUMPY_SCALARS:
        name = dtype.name if isinstance(dtype, _NumpyDtype) else type(dtype).__name__
        raise _Refused(f"it holds a numpy scalar of type {name!r}; only numbers and booleans are read")
    fmt = ("<" if dtype.byteorder in "<|=" else ">") + _NUMPY_SCALARS[dtype.name]
    if not isinstance(data, bytes) or len(data) != struct.calcsize(fmt):
        raise _Refused(f"it holds a numpy {dtype.name} scalar with {type(data).__name__} data of the wrong size")
    return struct.unpack(fmt, data)[0]


def _ordered_dict(*args):
    """``collections.OrderedDict``: a plain dict (ordered since Python 3.7), filled by SETITEMS."""
    if len(args) > 1:
        raise _Refused("it calls collections.OrderedDict with more than one argument")
    return dict(*args)


def _set(items=()):
    return set(items)


def _frozenset(items=()):
    return frozenset(items)


def _load_from_bytes(data):
    """``torch.storage._load_from_bytes``: one storage in torch.save's legacy format, read by torch's
    tensors-only unpickler (``weights_only=True``)."""
    if not isinstance(data, bytes):
        raise _Refused(f"it gives torch.storage._load_from_bytes a {type(data).__name__}, not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notes: the format is what it is
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _Refused(f"a tensor storage inside needs more than tensors ({load_error(exc)})") from None
    except Exception as exc:
        raise _Refused(f"a tensor storage inside is damaged ({load_error(exc)})") from None
    if not isinstance(storage, torch.TypedStorage):
        raise _Refused(f"a tensor storage inside holds a {type(storage).__name__}, not a storage")
    return _Storage(storage)


def _int_tuple(value, what):
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise _Refused(f"it rebuilds a tensor with an invalid {what} {value!r}")
    return tuple(value)


def _empty_hooks(hooks, what):
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _Refused(f"it attaches {what} to a tensor, which a network pickle never does")


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor_v2``: a view of a storage, bounds-checked here (``Tensor.set_``
    does not check that a view stays inside its storage)."""
    if not isinstance(storage, _Storage):
        raise _Refused(f"it rebuilds a tensor from a {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or offset < 0:
        raise _Refused(f"it rebuilds a tensor at storage offset {offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise _Refused(f"it rebuilds a tensor with size {size} and stride {stride} of different lengths")
    _empty_hooks(backward_hooks, "backward hooks")
    _empty_hooks(metadata, "metadata")
    typed = storage.storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, and it is what this format holds
        length = typed.size()
        if all(size):
            end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
            if end > length:
                raise _Refused(f"a tensor of size {size} reaches element {end} of a storage of {length}")
        tensor = torch.empty(0, dtype=typed.dtype).set_(typed.untyped(), offset, size, stride)
    return _Tensor(tensor)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """``torch._utils._rebuild_parameter`` (and ``_rebuild_parameter_with_state``): the tensor, marked."""
    if not isinstance(data, _Tensor):
        raise _Refused(f"it rebuilds a parameter from a {type(data).__name__}, not a tensor")
    _empty_hooks(backward_hooks, "backward hooks")
    _empty_hooks(state, "Python state")
    return _Tensor(data.tensor, parameter=True)


def _reconstruct_persistent_obj(meta):
    """``torch_utils.persistence._reconstruct_persistent_obj``: captured, never run (the real one
    exec()s meta['module_src'])."""
    return _Persistent(meta)


#: (module, name) -> stand-in: everything an NVlabs network snapshot needs, nothing else.
ALLOW_LIST = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _set,  # protocol 3 and older pickle sets (nn.Module's _non_persistent_buffers_set) this way
    ("builtins", "frozenset"): _frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x writes this name
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}


def _refusal(module: str, name: str) -> str:
    what = f"{module}.{name}"
    if module.startswith("_imported_module_"):
        why = "a class of the code embedded in the pickle, which gandid never runs"
    elif module.startswith("dnnlib.tflib"):
        why = ("a TensorFlow-era network (StyleGAN2/StyleGAN2-ADA TensorFlow pickles); convert it with NVlabs's "
               "legacy.py in an environment you trust and give gandid the PyTorch snapshot or "
               "G_ema.state_dict() saved as .safetensors")
    elif module.startswith("torch.nn"):
        why = "a torch.nn module class that NVlabs's networks do not pickle this way"
    else:
        why = "not something an NVlabs network pickle needs"
    return f"it asks for the Python object {what}: {why}"


class NVlabsUnpickler(pickle.Unpickler):
    """Reads an NVlabs network pickle as data: ``find_class`` answers only :data:`ALLOW_LIST` with inert
    stand-ins and refuses every other global by name; persistent IDs (which ``pickle.dump`` of a network
    never writes) are refused too."""

    def find_class(self, module, name):
        stand_in = ALLOW_LIST.get((module, name))
        if stand_in is None:
            raise _Refused(_refusal(module, name))
        return stand_in

    def persistent_load(self, pid):
        raise _Refused("it uses pickle persistent IDs (as torch.save does), which a network-snapshot pickle "
                       "written by pickle.dump never contains")


# -- the captured objects ------------------------------------------------------------------------
@dataclass
class PersistentObject:
    """One persistent network object of an NVlabs pickle, as plain data.

    ``class_name``: its class in the embedded source (``Generator``, ``SynthesisLayer``, ...);
    ``init_args`` / ``init_kwargs``: what its constructor was called with (nested EasyDicts as dicts);
    ``parameters`` / ``buffers``: its own tensors (None for an absent bias); ``modules``: its children;
    ``attributes``: the rest of its state (plain values); ``source_sha256``: hash of the embedded source
    (``module_src`` keeps the text, which is never run).
    """

    class_name: str
    init_args: tuple = ()
    init_kwargs: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)
    non_persistent_buffers: frozenset = frozenset()
    version: int | None = None
    module_src: str = field(default="", repr=False)
    source_sha256: str = ""

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers of this object and its children, keyed like
        ``torch.nn.Module.state_dict()`` (``mapping.fc0.weight``, ...)."""
        out = {}
        for name, value in self.parameters.items():
            if value is not None:
                out[prefix + name] = value
        for name, value in self.buffers.items():
            if value is not None and name not in self.non_persistent_buffers:
                out[prefix + name] = value
        for name, child in self.modules.items():
            if child is not None:
                out.update(child.state_dict(f"{prefix}{name}."))
        return out

    def child(self, path: str) -> "PersistentObject | None":
        obj = self
        for part in path.split("."):
            obj = obj.modules.get(part) if obj is not None else None
        return obj


_MODULE_INTERNALS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


class _Converter:
    """Turns what the unpickler built into plain data: stand-ins unwrapped, captures made into
    :class:`PersistentObject`; anything else (a bare storage, a dtype) is refused by name."""

    def __init__(self):
        self.memo: dict[int, Any] = {}

    def __call__(self, obj, depth=0):
        if depth > 200:
            raise _Refused("its objects nest more than 200 levels deep")
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            return obj
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        if isinstance(obj, _Tensor):
            out = obj.tensor
        elif isinstance(obj, _Persistent):
            out = self.persistent(obj.meta, depth)
        elif isinstance(obj, dict):  # also _EasyDict: attribute access is the only difference
            out = {}
            self.memo[key] = out
            for k, v in obj.items():
                out[self(k, depth + 1)] = self(v, depth + 1)
        elif isinstance(obj, list):
            out = []
            self.memo[key] = out
            out.extend(self(v, depth + 1) for v in obj)
        elif isinstance(obj, tuple):
            out = tuple(self(v, depth + 1) for v in obj)
        elif isinstance(obj, (set, frozenset)):
            out = type(obj)(self(v, depth + 1) for v in obj)
        else:
            raise _Refused(f"it holds a bare {getattr(obj, 'what', type(obj).__name__)} where network state was "
                           "expected")
        self.memo[key] = out
        return out

    def persistent(self, meta, depth):
        if not isinstance(meta, dict) or not {"type", "class_name", "state", "module_src"} <= set(meta):
            keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
            raise _Refused(f"it calls torch_utils.persistence._reconstruct_persistent_obj with {keys}, not the "
                           "meta dict (type, version, module_src, class_name, state) NVlabs's persistence writes")
        if meta["type"] != "class":
            raise _Refused(f"it holds a persistent object of type {meta['type']!r}; only 'class' exists")
        class_name, src, state = meta["class_name"], meta["module_src"], meta["state"]
        if not isinstance(class_name, str) or not class_name.isidentifier():
            raise _Refused(f"it names a persistent class {class_name!r}")
        if not isinstance(src, str):
            raise _Refused(f"persistent object {class_name}: its module_src is a {type(src).__name__}")
        if not isinstance(state, dict):
            raise _Refused(f"persistent object {class_name}: its state is a {type(state).__name__}, not a dict")
        state = self(state, depth + 1)
        obj = PersistentObject(class_name, version=meta.get("version"), module_src=src,
                               source_sha256=hashlib.sha256(src.encode("utf-8", "replace")).hexdigest())
        for attr, target in (("_parameters", obj.parameters), ("_buffers", obj.buffers)):
            for name, value in (state.get(attr) or {}).items():
                if value is not None and not isinstance(value, torch.Tensor):
                    raise _Refused(f"persistent object {class_name}: {attr[1:-1]} {name!r} is a "
                                   f"{type(value).__name__}, not a tensor")
                target[name] = value
        for name, child in (state.get("_modules") or {}).items():
            if child is not None and not isinstance(child, PersistentObject):
                raise _Refused(f"persistent object {class_name}: submodule {name!r} is a {type(child).__name__}")
            obj.modules[name] = child
        obj.non_persistent_buffers = frozenset(state.get("_non_persistent_buffers_set") or ())
        args, kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
        obj.init_args = tuple(args) if isinstance(args, (tuple, list)) else ()
        obj.init_kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
        obj.attributes = {k: v for k, v in state.items()
                          if k not in _MODULE_INTERNALS and k not in ("_init_args", "_init_kwargs")}
        return obj


def sniff(path: Path) -> str:
    """What a weights file looks like from its first bytes: 'zip' (torch.save), 'torch-legacy' (old
    torch.save), 'pickle', 'empty' or 'unknown'."""
    with Path(path).open("rb") as f:
        head = f.read(3)
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return "zip"
    if head[0] == PICKLE_PROTO:
        return "torch-legacy" if len(head) > 2 and head[2] == _TORCH_LEGACY_MAGIC_OPCODE else "pickle"
    return "unknown"


def load_nvlabs_pickle(path) -> Any:
    """The content of an NVlabs network pickle as plain data (dicts, lists, numbers, strings, tensors and
    :class:`PersistentObject`), read without importing or running anything from the file.

    Raises :class:`CheckpointError` for a file that is not a readable pickle ("unreadable") and for one
    that asks for anything beyond :data:`ALLOW_LIST` (naming what it asked for).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights {str(path)!r} is a directory: give the network-snapshot-*.pkl file inside it")
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    kind = sniff(path)
    if kind in ("empty", "unknown"):
        with path.open("rb") as f:
            head = f.read(8)
        what = "it is empty" if kind == "empty" else f"it starts with bytes {head.hex(' ')}"
        raise CheckpointError(f"{path}: unreadable: not a pickle ({what}); an NVlabs network-snapshot-*.pkl is a "
                              "pickle written by pickle.dump (its first byte is 0x80)")
    try:
        with path.open("rb") as f:
            raw = NVlabsUnpickler(f).load()
        return _Converter()(raw)
    except _Refused as exc:
        raise CheckpointError(f"{path}: refusing to load: {exc}. Nothing from the file was run. gandid reads "
                              "NVlabs pickles with a fixed allow-list (see docs/nvlabs.md).") from None
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable: its objects nest too deeply to be a network pickle") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError ... from a damaged stream
        # a stream cut short fails as whatever its last bytes look like: say so, with the size
        cut = truncation_error(path, exc)
        if cut is not None:
            raise cut from None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: unreadable: not a valid pickle, damaged or truncated "
                              f"({type(exc).__name__}: {detail})") from None


def describe(obj) -> str:
    """A short description of a top-level pickle object, for error messages."""
    if isinstance(obj, PersistentObject):
        return f"a persistent {obj.class_name} object"
    if isinstance(obj, dict):
        return "a dict with keys " + ", ".join(repr(k) for k in list(obj)[:20]) + (" ..." if len(obj) > 20 else "")
    return f"a {type(obj).__name__}"


__all__ = ["ALLOW_LIST", "NVlabsUnpickler", "PersistentObject", "load_nvlabs_pickle", "sniff", "describe"]
