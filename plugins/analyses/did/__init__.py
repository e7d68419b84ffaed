"""`did`: what pixel normalisation (or instance normalisation, weight demodulation) does under ablation
(Liu et al., "Difference-in-Differences").

``compute``: the DID analysis and its four-arm passes; ``results``: ``did.json``'s type and reader;
``report``: its part of report.html and its figures; ``explore``: what `gandid serve` shows of it.
"""
from gandid import hookimpl

from .compute import DID, ablation_effect, areas, site_kinds, uncontrolled_sites
from .report import demod_sentence, uncontrolled_sentence
from .results import ARMS, NORM_NAMES, RESULT_VERSION, AreaDid, DidClassResult, DidResult, norm_name, read_did_result

__all__ = ["ARMS", "DID", "NORM_NAMES", "RESULT_VERSION", "AreaDid", "DidClassResult", "DidResult", "ablation_effect",
           "areas", "demod_sentence", "norm_name", "read_did_result", "site_kinds", "uncontrolled_sentence",
           "uncontrolled_sites"]


@hookimpl
def gandid_register_analyses(register):
    register("did", DID, description="difference-in-differences of pixel norm (or instance norm, weight "
                                     "demodulation) under ablation: pixels and areas")
