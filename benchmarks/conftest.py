"""Prints speed ratios measured in this run (fused op vs the baselines) after the benchmark table."""
import pytest

from gandid import bench

_medians: dict[tuple[str, str], float] = {}


@pytest.fixture
def record_median():
    def record(case: str, method: str, benchmark):
        _medians[(case, method)] = benchmark.stats.stats.median

    return record


def pytest_terminal_summary(terminalreporter):
    if not _medians:
        return
    rows = [{"case": c, "method": m, "seconds": s} for (c, m), s in _medians.items()]
    terminalreporter.write_sep("=", "speed ratios measured in this run (higher = fused op faster)")
    for entry in bench.ratios(rows):
        parts = [f"{name} {entry[name]:.2f} (target {target})" for name, _, _, target in bench.RATIOS
                 if name in entry]
        if parts:
            terminalreporter.write_line(f"{entry['case']}: " + "; ".join(parts))
