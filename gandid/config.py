"""Run configuration: a TOML file plus command-line flags (flags win), validated before any work."""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownNameError

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunConfig:
    """Everything that determines a run. Same config + same seed = same numbers."""

    generator: str = "toyroom"
    weights: str | None = None
    generator_options: dict[str, Any] = field(default_factory=dict)
    segmenter: str | None = "toyroom"
    seg_weights: str | None = None
    segmenter_options: dict[str, Any] = field(default_factory=dict)
    analysis: list[str] | None = None  # None: every installed analysis
    analysis_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    layer: list[str] = field(default_factory=list)  # empty: the generator's default layer
    samples: int = 200
    seed: int = 0
    batch_size: int = 16
    device: str = "auto"
    out: str = "runs/default"
    resume: bool = False
    force: bool = False
    shard: str | None = None  # "K/N": this run is shard K of N (gandid merge joins them)
    require_fused: bool = False  # refuse to run on the PyTorch reference when the fused op is unavailable

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, base_dir: Path | None = None) -> "RunConfig":
        """Build from a dict (TOML file, JSON or API call); unknown keys are errors with suggestions."""
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            name = {"analyses": "analysis", "layers": "layer"}.get(name, name)
            if name not in known:
                raise UnknownNameError("config key", key, sorted(known))
            clean[name] = value
        for key in ("analysis", "layer"):
            if isinstance(clean.get(key), str):
                clean[key] = split_list([clean[key]])
        if base_dir is not None:  # paths in a file are relative to that file
            for key in ("weights", "seg_weights", "out"):
                if clean.get(key) and not Path(clean[key]).is_absolute():
                    clean[key] = str(base_dir / clean[key])
        return cls(**clean)

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_dict(data, base_dir=path.resolve().parent)

    def merged(self, overrides: dict) -> "RunConfig":
        """A copy with every non-None override applied (flags over file)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **values)

    def shard_of(self) -> tuple[int, int] | None:
        """(K, N) when this run is shard K of N, else None."""
        return None if self.shard is None else parse_shard(self.shard)

    def check(self) -> None:
        """Checks that need no plugin: types and ranges."""
        def need_int(name, minimum):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")

        need_int("samples", 1)
        need_int("batch_size", 1)
        need_int("seed", 0)
        if self.device not in DEVICES:
            raise UnknownNameError("device", self.device, DEVICES)
        self.shard_of()
        if not isinstance(self.require_fused, bool):
            raise ConfigError(f"require_fused must be true or false, got {self.require_fused!r}")
        if self.resume and self.force:
            raise ConfigError("--resume and --force contradict each other: resume keeps the folder, force clears it")
        if self.analysis is not None and not self.analysis:
            raise ConfigError("no analysis selected (give --analysis NAME[,NAME...] or leave it out for all)")
        for key in ("generator_options", "segmenter_options", "analysis_options"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key} must be a table of option = value")


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 0 <= K < N; anything else is refused with the expected form."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like K/N (shard K of N, counting from 0), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: K must be in 0..N-1 (shards count from 0)")
    return index, count


def split_list(values) -> list[str]:
    """['a,b', 'c'] -> ['a', 'b', 'c'] (flags may be repeated or comma-separated)."""
    out = []
    for value in values or []:
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def option_names(factory) -> list[str] | None:
    """Keyword options a plugin factory takes; None when it takes any (``**options``) or cannot be read."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_options(what: str, factory, options: dict) -> None:
    """Refuse options the factory does not take (naming the closest valid ones) and values whose type
    does not match the factory's annotation (``samples: int`` refuses ``"abc"``)."""
    valid = option_names(factory)
    if valid is not None:
        for key in options:
            if key not in valid:
                raise UnknownNameError(f"option of {what}", key, valid)
    hints = option_types(factory)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not value_matches(value, hint):
            raise ConfigError(f"option {key!r} of {what} must be {describe_type(hint)}, got {value!r} "
                              f"({type(value).__name__})")


def option_types(factory) -> dict[str, Any]:
    """The factory's parameter annotations, resolved (``from __future__ import annotations`` makes them
    strings); {} when they cannot be read, so an unannotated plugin is checked by name only."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable names in a third party's annotations: skip, never fail the run
        return {}


def value_matches(value, hint) -> bool:
    """Whether a TOML/CLI value fits an annotation (int is a float; bool is not an int; NaN is no number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, (str, Path))
    container = origin or hint
    if container in (list, tuple, set, frozenset, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(value_matches(v, a) for v, a in zip(value, args))
        return not args or all(value_matches(v, args[0]) for v in value)
    if container is dict:
        return isinstance(value, dict)
    return isinstance(value, container) if isinstance(container, type) else True


def describe_type(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (or left out)" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
             dict: "a table"}
    if hint in names:
        return names[hint]
    if (origin or hint) in (list, tuple, set, frozenset):
        inner = describe_type(args[0]) if args else "values"
        return f"a list of {inner.replace('an ', '').replace('a ', '')}s" if args else "a list"
    return getattr(hint, "__name__", str(hint))
