"""Benchmark cases of the fused op, shared by `gandid bench` and the pytest-benchmark suite.

Bandwidth counts one read of x and one write of y (the floor of a memory-bound op); every method
is measured in the same process, so ratios against `copy_` (the ceiling for a preallocated output)
and `clone()` (the ceiling for anything that allocates its output) compare like with like.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .ops import intervene_pixelnorm, intervene_pixelnorm_reference

# Real PG-GAN layer shapes (N, C, H, W); the DID case runs 4N rows with β borrowed across arms.
OP_SHAPES = [(256, 512, 8, 8), (1024, 512, 8, 8), (64, 512, 16, 16), (32, 256, 32, 32), (16, 128, 64, 64),
             (8, 32, 256, 256)]
DID_LATENTS = 256  # 4 x 256 rows of (512, 8, 8)
QUICK_SHAPES = [(16, 64, 8, 8)]
ABLATED_UNITS = 20  # a top-20 ablation, as in the papers

METHODS = ("copy_", "clone", "eager_reference", "compiled_reference", "ext_alloc", "ext_out")


@dataclass
class Case:
    name: str
    x: torch.Tensor
    kwargs: dict
    out: torch.Tensor = field(init=False)
    beta_out: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.out = torch.empty_like(self.x)
        self.beta_out = self.x.new_empty((self.x.shape[0], 1, *self.x.shape[2:]))
        self.out.zero_()  # touch the pages once: the reuse case must not pay first-touch faults
        self.beta_out.zero_()

    @property
    def bytes_moved(self) -> int:
        return 2 * self.x.numel() * self.x.element_size()


def did_kwargs(latents: int, channels: int, device) -> dict:
    """The four DID arms: Y(β,u), Y(β',u'), Y(β,u') borrowing arm 1's β, Y(β',u) borrowing arm 2's."""
    arm = torch.arange(latents, device=device)
    beta_src = torch.cat([arm, arm + latents, arm, arm + latents])
    rows = torch.zeros(4 * latents, dtype=torch.bool, device=device)
    rows[latents:3 * latents] = True  # arms 2 and 3 carry the intervention u'
    return {"alpha": _alpha(channels, device), "rows": rows, "beta_src": beta_src}


def _alpha(channels: int, device) -> torch.Tensor:
    alpha = torch.zeros(channels, device=device)
    alpha[: min(ABLATED_UNITS, channels)] = 1
    return alpha


def make_cases(quick: bool = False, device="cpu", dtype=torch.float32, channels_last: bool = False) -> list[Case]:
    g = torch.Generator(device="cpu").manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def x_of(shape):
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)

    cases = []
    for shape in QUICK_SHAPES if quick else OP_SHAPES:
        cases.append(Case("x".join(map(str, shape)), x_of(shape), {"alpha": _alpha(shape[1], device)}))
    latents = 4 if quick else DID_LATENTS
    c, h, w = (64, 8, 8) if quick else (512, 8, 8)
    cases.append(Case(f"DID 4x{latents}x{c}x{h}x{w}", x_of((4 * latents, c, h, w)), did_kwargs(latents, c, device)))
    return cases


def method_fn(method: str, case: Case, compiled_cache: dict) -> Callable[[], object]:
    x, kw = case.x, case.kwargs
    if method == "copy_":
        return lambda: case.out.copy_(x)
    if method == "clone":
        return lambda: x.clone()
    if method == "eager_reference":
        return lambda: intervene_pixelnorm_reference(x, **kw)
    if method == "compiled_reference":
        key = (tuple(x.shape), x.dtype, x.device.type, tuple(sorted(kw)))
        if key not in compiled_cache:
            compiled_cache[key] = torch.compile(intervene_pixelnorm_reference, dynamic=False)
        fn = compiled_cache[key]
        return lambda: fn(x, **kw)
    if method == "ext_alloc":
        return lambda: intervene_pixelnorm(x, backend="ext", **kw)
    if method == "ext_out":
        return lambda: intervene_pixelnorm(x, backend="ext", out=case.out, beta_out=case.beta_out, **kw)
    raise ValueError(f"unknown benchmark method {method!r}; use one of {METHODS}")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device="cpu", min_time: float = 0.3, min_reps: int = 5) -> float:
    """Median seconds per call after two warm-up calls (compilation happens there)."""
    fn(), fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def run_op_bench(quick=False, device="cpu", methods=METHODS, channels_last=False, progress=None) -> list[dict]:
    """One row per (case, method): seconds, GB/s."""
    rows, compiled = [], {}
    cases = make_cases(quick, device, channels_last=channels_last)
    for case in cases:
        for method in methods:
            seconds = time_fn(method_fn(method, case, compiled), device)
            rows.append({"case": case.name, "method": method, "seconds": seconds, "MB": case.x.nbytes / 2**20,
                         "GB/s": case.bytes_moved / seconds / 1e9})
            if progress:
                progress()
    return rows


RATIOS = [  # (name, numerator method, denominator method, target on CPU)
    ("ext_out / copy_", "ext_out", "copy_", 0.60),
    ("ext_alloc / clone", "ext_alloc", "clone", 0.80),
    ("ext_alloc / eager_reference", "ext_alloc", "eager_reference", 2.0),
    ("ext_alloc / compiled_reference", "ext_alloc", "compiled_reference", 1.2),
    ("ext_out / compiled_reference", "ext_out", "compiled_reference", 3.0),
]


def ratios(rows: list[dict]) -> list[dict]:
    """Speed ratios (higher = ext faster) per case, from rows measured in one run."""
    by_case: dict[str, dict[str, float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["method"]] = r["seconds"]
    out = []
    for case, t in by_case.items():
        entry = {"case": case}
        for name, num, den, _ in RATIOS:
            if num in t and den in t:
                entry[name] = t[den] / t[num]
        out.append(entry)
    return out
