"""`ace`: the average causal effect of units on a class (Bau et al., "On the Units of GANs").

``compute``: the ACE analysis and its counterfactual passes; ``estimates``: the screen's first-order
estimates and the uncertainty of the exact values; ``results``: ``ace.json``'s type and readers;
``report``: its part of report.html and its figures; ``explore``: what `gandid serve` shows of it.
"""
from gandid import hookimpl

from .compute import ACE, NOT_OBJECTS, block_fractions, check_class_names
from .estimates import ace_uncertainty, rank_correlation, screen_estimates
from .results import RESULT_VERSION, AceClassResult, AceResult, best_unit_ace, read_ace_result

__all__ = ["ACE", "NOT_OBJECTS", "RESULT_VERSION", "AceClassResult", "AceResult", "ace_uncertainty", "best_unit_ace",
           "block_fractions", "check_class_names", "rank_correlation", "read_ace_result", "screen_estimates"]


@hookimpl
def gandid_register_analyses(register):
    register("ace", ACE, description="average causal effect of units on classes: ranking, top-k curves, context, alpha")
