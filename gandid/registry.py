"""Plugin manager: every plugin, first-party or third-party, comes from entry-point group ``gandid``.

Registrations are kept per kind (generator, segmenter, analysis). A plugin that fails to import,
fails pluggy's validation, or raises while registering is recorded as broken with its error; the
others keep working.
"""
from __future__ import annotations

import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, UnknownNameError

KINDS = {
    "generator": "gandid_register_generators",
    "segmenter": "gandid_register_segmenters",
    "analysis": "gandid_register_analyses",
}


@dataclass
class PluginInfo:
    name: str
    package: str | None = None
    version: str | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        return "ok" if self.error is None else "broken"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: PluginInfo = field(compare=False)
    # generators: recognise(peek) -> what the weights file is, or None (see gandid.formats)
    recognise: Callable[[Any], str | None] | None = field(default=None, compare=False)


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Registry:
    """Per-kind registries filled from plugins. ``Registry()`` loads the installed entry points."""

    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        if load_entry_points:
            self.load_entry_points()

    # -- loading -------------------------------------------------------------------------
    def load_entry_points(self, group: str = hookspecs.PROJECT) -> None:
        seen: dict[str, str | None] = {}  # entry-point name -> the distribution it was loaded from
        # gandid's own plugins first, whatever the order of sys.path: a third party taking a built-in
        # name is then the one refused, visibly, not the built-in.
        eps = sorted(md.entry_points(group=group),
                     key=lambda ep: getattr(getattr(ep, "dist", None), "metadata", {}).get("Name") != "gandid")
        for ep in eps:
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist else None
            if ep.name in seen:
                if seen[ep.name] == package:  # the same distribution visible twice on sys.path
                    continue
                # Another package chose a name already taken (e.g. 'ace'): list it and say why it is out.
                info = PluginInfo(f"{ep.name} ({package})", package, dist.version if dist else None,
                                  error=f"not loaded: its entry point {ep.name!r} = {ep.value!r} has the name of the "
                                        f"plugin {ep.name!r} from package {seen[ep.name]!r}, loaded first; rename "
                                        f"the entry point in {package}'s packaging metadata")
                self.plugins[info.name] = info
                continue
            seen[ep.name] = package
            info = PluginInfo(ep.name, package, dist.version if dist else None)
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                info.error = f"import failed: {_short_error(exc)}"
                self.plugins[info.name] = info
                continue
            self.add_plugin(obj, info=info)

    def add_plugin(self, obj: Any, name: str | None = None, *, info: PluginInfo | None = None) -> PluginInfo:
        """Register a plugin object (module or instance) and collect what its hooks register."""
        info = info or PluginInfo(name or getattr(obj, "__name__", repr(obj)))
        if info.name in self.plugins:
            info.error = f"a plugin named {info.name!r} is already loaded"
            self.plugins[info.name + " (duplicate)"] = info
            return info
        self.plugins[info.name] = info
        try:
            self.pm.register(obj, name=info.name)
            self.pm.check_pending()
        except Exception as exc:
            info.error = f"invalid plugin: {_short_error(exc)}"
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            return info
        for kind, hook_name in KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is obj:
                    self._collect(kind, impl.function, info)
        return info

    def _collect(self, kind: str, hook_function: Callable, info: PluginInfo) -> None:
        staged: dict[str, Entry] = {}

        def register(name: str, factory: Callable[..., Any], description: str = "",
                     recognise: Callable[[Any], str | None] | None = None) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
            if not callable(factory):
                raise TypeError(f"{kind} {name!r}: factory must be callable, got {type(factory).__name__}")
            if recognise is not None and (kind != "generator" or not callable(recognise)):
                raise TypeError(f"{kind} {name!r}: recognise must be a callable, and only generators take one")
            previous = self._entries[kind].get(name) or staged.get(name)
            if previous is not None:
                raise DuplicateNameError(kind, name, previous.plugin.name, info.name)
            staged[name] = Entry(kind, name, factory, description or "", info, recognise)

        try:
            hook_function(register=register)
        except Exception as exc:
            # All or nothing per hook: a half-registered plugin would be confusing.
            message = str(exc) if isinstance(exc, DuplicateNameError) else _short_error(exc)
            info.error = f"{KINDS[kind]} failed: {message}"
            return
        self._entries[kind].update(staged)

    # -- lookup ----------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[self._kind(kind)])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[self._kind(kind)][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Entry:
        table = self._entries[self._kind(kind)]
        if name not in table:
            raise UnknownNameError(kind, name, table)
        return table[name]

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """The plugin's object; options are checked against the factory's signature first (names, with the
        closest valid ones, and types), as `gandid run` checks them."""
        from .config import check_options

        entry = self.get(kind, name)
        check_options(f"{kind} {name!r}", entry.factory, options)
        return entry.factory(**options)

    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def rows(self) -> list[dict]:
        """One row per registered thing, then one per broken plugin (for ``gandid plugins``)."""
        rows = []
        for kind in KINDS:
            for e in self.entries(kind):
                rows.append(dict(name=e.name, kind=kind, plugin=e.plugin.name, package=e.plugin.package,
                                 version=e.plugin.version, description=e.description, status=e.plugin.status,
                                 error=e.plugin.error))
        for p in self.broken():
            rows.append(dict(name=p.name, kind="plugin", plugin=p.name, package=p.package, version=p.version,
                             description="", status="broken", error=p.error))
        return rows

    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in KINDS:
            raise UnknownNameError("plugin kind", kind, KINDS)
        return kind


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reset_registry() -> None:
    global _registry
    _registry = None
