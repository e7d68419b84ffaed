"""The one way gandid reaches inside a generator: record, edit or stop at layers, and override norm sites.

Every hook in gandid and its first-party plugins goes through this module:

- :class:`Trace` records layers' outputs, optionally edits them (``edit={layer: fn}``) and optionally
  stops the forward pass once the last traced layer has run (``stop=True``);
- :func:`features_at` is ``Trace(stop=True)`` for one layer: the prefix of the network, nothing more;
- :func:`norm_overrides` replaces what norm sites compute (pixel norm's division by β, weight
  demodulation's coefficients, instance norm's statistics) for the duration of a ``with`` block;
- :func:`norm_site_reading` names the pixel-norm site that reads a layer's output directly.

Norm-site modules (:class:`gandid.model.PixelNorm`, :class:`gandid.model.InstanceNorm`, a generator's
own demodulating conv) expose an ``override`` attribute that they consult in ``forward``; only
:func:`norm_overrides` sets it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Mapping

import torch

from .model import Generator, find_layer


class StopForward(Exception):
    """Raised inside a forward pass by ``Trace(stop=True)`` once every traced layer has run."""


class Trace(contextlib.AbstractContextManager):
    """Record (and optionally edit) the outputs of some of a generator's layers; optionally stop after them.

    >>> with Trace(gen, ["layer4"]) as trace:
    ...     gen.forward(z)
    >>> trace["layer4"].shape   # (N, C, H, W)

    ``edit`` maps a layer name to ``fn(output) -> new_output``, applied before recording (the new output
    is what the rest of the network sees). With ``stop=True`` the forward pass raises
    :class:`StopForward` as soon as all traced layers have produced their output; the ``with`` block
    swallows it, so ``with Trace(..., stop=True) as t: gen.forward(z)`` runs only the prefix.
    ``detach=False`` keeps outputs in the autograd graph.
    """

    def __init__(self, generator: Generator, layers: Iterable[str] = (), edit: Mapping[str, Callable] | None = None,
                 stop: bool = False, detach: bool = True):
        self.outputs: dict[str, torch.Tensor] = {}
        edit = dict(edit or {})
        names = list(dict.fromkeys(list(layers) + list(edit)))
        self._pending = set(names)
        self._stop = stop
        self._handles = []
        for name in names:
            find_layer(generator, name)
            module = generator.layer_module(name)
            self._handles.append(module.register_forward_hook(self._hook(name, edit.get(name), detach)))

    def _hook(self, name, fn, detach):
        def hook(module, inputs, output):
            if fn is not None:
                output = fn(output)
            self.outputs[name] = output.detach() if detach else output
            self._pending.discard(name)
            if self._stop and not self._pending:
                raise StopForward
            return output

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


def features_at(generator: Generator, z: torch.Tensor, layer: str) -> torch.Tensor:
    """Layer ``layer``'s output (N, C, h, w) for latents z, running only the layers up to it."""
    with Trace(generator, [layer], stop=True) as trace:
        generator.forward(z)
    if layer not in trace.outputs:
        raise RuntimeError(f"layer {layer!r} was not reached by the generator's forward pass")
    return trace.outputs[layer]


@contextlib.contextmanager
def norm_overrides(generator: Generator, fns: Mapping[str, Callable]):
    """Within the block, norm site ``site`` computes ``fns[site](x)`` instead of its own formula.

    For a pixel-norm site ``fn`` maps the layer output x (N, C, h, w) to the normalised output; for a
    demodulation site it maps the coefficients d (N, out) to the coefficients used; for an
    instance-norm site the statistics (N, 2, C) (means, stds) to the statistics used. On exit (also
    when the block raises) each site gets back the override it had, so blocks nest.
    """
    previous = []  # (module, its override before this block), in the order set
    try:
        for site, fn in fns.items():
            module = generator.norm_module(site)
            if not hasattr(module, "override"):
                raise TypeError(f"norm site {site!r} ({type(module).__name__}) has no 'override' attribute; the "
                                "engine cannot control it (pixel norms should be gandid.model.PixelNorm, instance norms "
                                "gandid.model.InstanceNorm)")
            previous.append((module, module.override))
            module.override = fn
        yield
    finally:
        for module, before in reversed(previous):
            module.override = before


def norm_site_reading(generator: Generator, layer: str) -> str | None:
    """The pixel-norm site that reads ``layer``'s output directly (where an intervention can be fused
    into the normalisation), or None."""
    for site in generator.norm_sites:
        if site.layer == layer and site.kind == "pixelnorm":
            return site.name
    return None
