"""`entangle`: the DID paper's taxonomy of entanglement under ablation, automated (its sec. 4.2, 5.2).

``compute``: the calls from the ace and did results; ``report``: their names, its part of report.html
and its figure; ``explore``: what `gandid serve` shows of it.
"""
from gandid import hookimpl

from .compute import BACKGROUND, Entangle
from .report import CALLS

__all__ = ["BACKGROUND", "CALLS", "Entangle"]


@hookimpl
def gandid_register_analyses(register):
    register("entangle", Entangle, description="entanglement taxonomy: disentangled / type 1 / type 2, with evidence")
