"""gandid: a plugin-based engine for looking inside GANs.

The core knows no concrete model: generators, segmenters and analyses are plugins
registered through the ``gandid`` entry-point group (see :mod:`gandid.hookspecs`).
"""
from .hookspecs import hookimpl, hookspec
from .version import __version__

__all__ = ["__version__", "hookimpl", "hookspec", "run", "load_generator", "load_segmenter", "load_analysis"]


def run(config, **kwargs):
    """Run an analysis session; ``config`` is a :class:`gandid.config.RunConfig` or a dict.

    Mirrors ``gandid run``; returns a :class:`gandid.stages.RunResult`.
    """
    from .runner import run as _run

    return _run(config, **kwargs)


def load_generator(name, **options):
    """Build the generator plugin ``name`` with its factory options (e.g. ``weights=PATH``)."""
    from .registry import get_registry

    return get_registry().create("generator", name, **options)


def load_segmenter(name, **options):
    """Build the segmenter plugin ``name`` with its factory options."""
    from .registry import get_registry

    return get_registry().create("segmenter", name, **options)


def load_analysis(name, **options):
    """Build the analysis plugin ``name`` with its factory options."""
    from .registry import get_registry

    return get_registry().create("analysis", name, **options)
