"""pytest-benchmark suite of the fused op: `python -m pytest benchmarks/test_bench_op.py`.

Every case is timed with every method in the same run (see gandid.bench); the summary at the end
prints the ratios that benchmarks/RESULTS.md records. GANDID_BENCH_QUICK=1 uses one small shape.
"""
import os

import pytest
import torch

from gandid import bench
from gandid.ops import backend_name

QUICK = os.environ.get("GANDID_BENCH_QUICK") == "1"
DEVICE = os.environ.get("GANDID_BENCH_DEVICE", "cpu")
CASES = {c.name: c for c in bench.make_cases(QUICK, DEVICE)}
_compiled: dict = {}


@pytest.mark.parametrize("method", bench.METHODS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_op(benchmark, record_median, case_name, method):
    if method.startswith("ext") and backend_name(DEVICE) == "reference":
        pytest.skip("the fused op could not be built here")
    case = CASES[case_name]
    fn = bench.method_fn(method, case, _compiled)
    fn(), fn()  # warm-up: torch.compile compiles here, outside the timing
    sync = torch.cuda.synchronize if DEVICE.startswith("cuda") else (lambda: None)

    def timed():
        fn()
        sync()

    benchmark.extra_info.update(case=case_name, method=method, MB=case.x.nbytes / 2**20)
    benchmark.pedantic(timed, rounds=10 if not QUICK else 3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["GB/s"] = case.bytes_moved / benchmark.stats.stats.median / 1e9
    record_median(case_name, method, benchmark)
