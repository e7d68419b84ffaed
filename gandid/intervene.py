"""The public face of the counterfactual engine: one import for users and plugins.

The pieces live in modules with one job each: the data types in :mod:`gandid.interventions`, the
engines in :mod:`gandid.engine`, the memory policy and buffer pool in :mod:`gandid.buffers`, layer
and norm-site hooks in :mod:`gandid.hooks`.
"""
from .buffers import CACHE_FRIENDLY_BYTES, DEFAULT_MEMORY_BUDGET, BufferPool, preferred_layout, rows_per_chunk
from .engine import (
                     counterfactuals,
                     counterfactuals_naive,
                     generator_output_shape,
                     per_unit,
                     run_with_betas,
                     units_per_chunk,
                     variants,
)
from .hooks import norm_site_reading
from .interventions import ARM_TITLES, CONTROLLABLE, Arms, BetaControl, Intervention, not_controllable_reason

__all__ = ["Intervention", "BetaControl", "Arms", "ARM_TITLES", "CONTROLLABLE", "BufferPool", "DEFAULT_MEMORY_BUDGET",
           "CACHE_FRIENDLY_BYTES", "rows_per_chunk", "preferred_layout", "counterfactuals", "counterfactuals_naive",
           "per_unit", "units_per_chunk", "variants", "run_with_betas", "generator_output_shape", "norm_site_reading",
           "not_controllable_reason"]
