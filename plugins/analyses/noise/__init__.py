"""`noise`: how much a StyleGAN's noise inputs move its images as more units of a layer are ablated.

``compute``: the Noise analysis; ``report``: its part of report.html and its figure.
"""
from gandid import hookimpl

from .compute import DEFAULT_FRACTIONS, RESULT_VERSION, Noise

__all__ = ["DEFAULT_FRACTIONS", "RESULT_VERSION", "Noise"]


@hookimpl
def gandid_register_analyses(register):
    register("noise", Noise, description="StyleGAN noise: image variation across noise draws as units are ablated")
