"""The plugin contract (pluggy project "gandid").

Each hook receives a ``register`` callback so that one plugin may register several things::

    from gandid import hookimpl

    @hookimpl
    def gandid_register_analyses(register):
        register("mystat", MyStat, description="per-unit mean activation")

``register(name, factory, description="")``; ``factory(**options)`` returns the object
(a Generator, Segmenter or Analysis, see :mod:`gandid.model` and :mod:`gandid.analysis`).
"""
import pluggy

PROJECT = "gandid"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def gandid_register_generators(register):
    """Register generators: ``register(name, factory, description=..., recognise=...)``, factory -> Generator.

    ``recognise(peek)`` (optional) says whether a weights file is in a format this generator loads: it
    gets a :class:`gandid.formats.Peek` (the file read safely once) and returns a short description of
    what it found, or None. It is what ``--generator auto`` and ``gandid convert`` ask."""


@hookspec
def gandid_register_segmenters(register):
    """Register segmenters: ``register(name, factory, description=...)``, factory -> Segmenter."""


@hookspec
def gandid_register_analyses(register):
    """Register analyses: ``register(name, factory, description=...)``, factory -> Analysis."""
