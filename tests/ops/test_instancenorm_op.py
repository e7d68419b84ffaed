"""instance_norm (gandid.ops): every backend against a float64 computation, on fresh random inputs.

The float64 "naive" side is torch.var_mean in float64 on the same (rounded) input, then
(x - mean) / std in float64. Tolerances per dtype (TOL): float32 1e-6, float64 1e-12, float16 2e-3,
bfloat16 1.6e-2 (one rounding of the output), scaled by (|x| + |mean|) / std + |y| + 1 at each
element: the size of the terms (x - mean) and the quotient round at.
The CUDA kernels run on the host under the thread-model emulator (tests/cuda_emulation), and
compile with nvcc for sm_80 / sm_90 where nvcc is installed, as intervene_pixelnorm's do.
"""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cuda_toolkit import cuda_include_dir

from gandid.model import InstanceNorm
from gandid.ops import build, instance_norm

HERE = Path(__file__).resolve().parents[1]  # tests/
BACKENDS = ["ext", "reference"]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# The reference accumulates float32 input in float32 (torch.var_mean): its statistics are a little
# less exact than the kernels' float64 sums.
STATS_TOL = {("ext", torch.float64): 1e-13, ("reference", torch.float64): 1e-12}


def naive(x, eps=1e-5, stats_in=None, stats_src=None):
    xd = x.double()
    var, mean = torch.var_mean(xd, dim=(2, 3), correction=0)
    stats = torch.stack([mean, torch.sqrt(var + eps)], 1)
    d = stats_in.double() if stats_in is not None else stats[stats_src] if stats_src is not None else stats
    y = (xd - d[:, 0, :, None, None]) / d[:, 1, :, None, None]
    return y, stats, d


def assert_matches(x, y, stats, y_ref, stats_ref, d, dtype, backend):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert y.dtype == x.dtype and stats.dtype == acc and stats.shape == stats_ref.shape
    st = STATS_TOL.get((backend, dtype), 1e-6 if backend == "ext" else 2e-5)
    mean, std = stats_ref[:, 0], stats_ref[:, 1]
    err_mean = (stats[:, 0].double() - mean).abs()
    err_std = (stats[:, 1].double() - std).abs()
    assert bool((err_mean <= st * (mean.abs() + std)).all()), f"mean off by {err_mean.max().item()}"
    assert bool((err_std <= st * std).all()), f"std off by {err_std.max().item()}"
    tol = max(TOL[dtype], st)
    dm, ds = d[:, 0, :, None, None], d[:, 1, :, None, None]
    bound = tol * ((x.double().abs() + dm.abs()) / ds + y_ref.abs() + 1)
    err = (y.double() - y_ref).abs()
    assert bool((err <= bound).all()), f"y off by {(err / bound).max().item():.3g} x the bound ({dtype}, {backend})"


def random_x(seed, shape, dtype=torch.float32, layout="contiguous", offset=1.0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    # per-channel offsets and scales, so statistics differ across channels and rows
    base = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    x = base * (scale * torch.rand(n, c, 1, 1, generator=g, dtype=torch.float64) + 0.1) \
        + offset * torch.randn(n, c, 1, 1, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other channel of a wider tensor: neither NCHW nor NHWC dense
        wide = torch.zeros(n, 2 * c, h, w, dtype=dtype)
        wide[:, ::2] = x
        x = wide[:, ::2]
    elif layout == "transposed":  # H and W swapped views
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


SHAPES = [(4, 512, 8, 8), (3, 37, 5, 9), (2, 16, 64, 64), (8, 3, 1, 1), (2, 5, 1, 300), (1, 1, 7, 3)]
LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]


def did_src(n4):
    n = n4 // 4
    r = torch.arange(n)
    return torch.cat([r, r + n, r, r + n])  # arm 3 borrows arm 1's statistics, arm 4 arm 2's


def options(seed, n, c):
    g = torch.Generator().manual_seed(1000 + seed)
    yield {}
    if n % 4 == 0:
        yield {"stats_src": did_src(n)}
    src = torch.arange(n)
    if n > 1:
        src[1:] = torch.where(torch.rand(n - 1, generator=g) < 0.5, torch.zeros(n - 1, dtype=torch.long), src[1:])
    yield {"stats_src": src}
    stats_in = torch.stack([torch.randn(n, c, generator=g), torch.rand(n, c, generator=g) + 0.2], 1)
    yield {"stats_in": stats_in}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.slow
def test_every_backend_matches_float64(backend, layout, dtype):
    for seed, shape in enumerate(SHAPES):
        x = random_x(seed, shape, dtype, layout)
        for kw in options(seed, shape[0], shape[1]):
            y_ref, stats_ref, d = naive(x, **kw)
            y, stats = instance_norm(x, 1e-5, backend=backend, **kw)
            if layout == "channels_last" and not x.is_contiguous():
                assert y.is_contiguous(memory_format=torch.channels_last)  # y keeps x's memory format
            assert_matches(x, y, stats, y_ref, stats_ref, d, dtype, backend)


def test_kernel_statistics_survive_a_large_mean():
    # mean 1000, std 0.01: float64 sums around a shift keep the variance exact to float32 rounding.
    for layout in ("contiguous", "channels_last"):
        x = random_x(5, (2, 8, 128, 128), torch.float32, layout, offset=0.0, scale=0.01) + 1000.0
        y_ref, stats_ref, d = naive(x)
        y, stats = instance_norm(x, backend="ext")
        assert_matches(x, y, stats, y_ref, stats_ref, d, torch.float32, "ext")


def test_statistics_only_and_normalise_only_paths():
    x = random_x(3, (4, 24, 9, 7))
    y_ref, stats_ref, _ = naive(x)
    for backend in BACKENDS:
        y, stats = instance_norm(x, backend=backend, normalize=False)
        assert y is None
        torch.testing.assert_close(stats.double(), stats_ref, rtol=2e-5, atol=1e-6)
        y, none = instance_norm(x, stats_in=stats, return_stats=False, backend=backend)
        assert none is None
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    out = torch.full_like(x, float("nan"))
    y, _ = instance_norm(x, out=out, backend="ext")
    assert y is out and not torch.isnan(out).any()
    with pytest.raises(ValueError, match="chains"):
        instance_norm(x, stats_src=torch.tensor([0, 0, 1, 3]))
    with pytest.raises(ValueError, match="stats_in must be"):
        instance_norm(x, stats_in=torch.ones(4, 2, 23))
    with pytest.raises(ValueError, match="ask for nothing"):
        instance_norm(x, normalize=False, return_stats=False)


def test_gradients_match_float64():
    x0 = random_x(7, (4, 6, 5, 5), torch.float64)
    for kw in ({}, {"stats_src": torch.tensor([0, 1, 0, 1])}, {"stats_in": torch.rand(4, 2, 6, dtype=torch.float64)
                                                                  + 0.5}):
        g = torch.randn_like(x0)
        x = x0.clone().requires_grad_(True)
        extra = {}
        if "stats_in" in kw:
            extra["stats_in"] = kw["stats_in"].clone().requires_grad_(True)
        y, stats = instance_norm(x, backend="ext", **{**kw, **extra})
        ((y * g).sum() + stats.pow(2).sum()).backward()
        xr = x0.clone().requires_grad_(True)
        sin = kw["stats_in"].clone().requires_grad_(True) if "stats_in" in kw else None
        yr, sr, _ = naive(xr, stats_in=sin, stats_src=kw.get("stats_src"))
        ((yr * g).sum() + sr.pow(2).sum()).backward()
        torch.testing.assert_close(x.grad, xr.grad)
        if sin is not None:
            torch.testing.assert_close(extra["stats_in"].grad, sin.grad)
    assert torch.autograd.gradcheck(lambda t: instance_norm(t, backend="ext")[0], (x0[:2, :3].clone().requires_grad_(),))


def test_instancenorm_module_runs_the_op_and_keeps_the_override_contract():
    norm = InstanceNorm(eps=1e-5)
    x = random_x(9, (4, 10, 6, 6))
    y_ref, stats_ref, _ = naive(x)
    torch.testing.assert_close(norm(x).double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(x), torch.nn.functional.instance_norm(x, eps=1e-5), rtol=1e-5, atol=1e-5)
    seen = []

    def override(stats):
        seen.append(stats.clone())
        return stats[torch.tensor([0, 1, 0, 1])]

    norm.override = override
    y = norm(x)
    assert len(seen) == 1 and seen[0].shape == (4, 2, 10)
    torch.testing.assert_close(seen[0].double(), stats_ref, rtol=2e-6, atol=1e-6)
    y_src, _, _ = naive(x, stats_src=torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(y.double(), y_src, rtol=1e-5, atol=1e-5)
    # gradients flow through the override's statistics too (ACE optimises α through instance norms)
    xg = x.clone().requires_grad_(True)
    norm(xg).pow(2).sum().backward()
    xr = x.double().clone().requires_grad_(True)
    yr, _, _ = naive(xr, stats_src=torch.tensor([0, 1, 0, 1]))
    yr.pow(2).sum().backward()
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)


def test_falls_back_to_the_reference_without_the_extension(monkeypatch):
    from gandid import ops

    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_error", "no compiler here (simulated)")
    monkeypatch.delenv("GANDID_OP_BACKEND", raising=False)
    assert ops.choose_backend("cpu") == "reference"
    x = random_x(2, (4, 8, 5, 5))
    y, stats = instance_norm(x, stats_src=did_src(4))
    y_ref, stats_ref, d = naive(x, stats_src=did_src(4))
    assert_matches(x, y, stats, y_ref, stats_ref, d, torch.float32, "reference")
    torch.testing.assert_close(InstanceNorm()(x).double(), naive(x)[0], rtol=1e-5, atol=1e-5)


# --- the CUDA kernels: host emulation and nvcc ---------------------------------------------------

CUDA_INCLUDE = cuda_include_dir()


def _build_emulator():
    from torch.utils.cpp_extension import load

    csrc = build.csrc_dir()
    emu = HERE / "cuda_emulation"
    sources = [emu / "instnorm_emulator.cpp", emu / "emulator.cpp"] + sorted(
        p for p in csrc.rglob("*") if p.suffix in (".h", ".cuh"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + torch.__version__.encode()).hexdigest()[:16]
    name = f"gandid_instnorm_emulator_{digest}"
    build_dir = build.cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(name=name, sources=[str(sources[0])], build_directory=str(build_dir),
                extra_include_paths=[str(csrc), str(CUDA_INCLUDE), str(emu)], extra_cflags=["-O2"])


@pytest.fixture(scope="module")
def emulator():
    if CUDA_INCLUDE is None:
        pytest.skip("the CUDA toolkit's headers (cuda_fp16.h) are absent")
    return _build_emulator()


@pytest.fixture
def emulated(emulator, monkeypatch):
    """instance_norm(backend='ext') runs the emulated CUDA kernels."""
    monkeypatch.setattr(build, "_module", emulator)
    return emulator


EMU_SHAPES = [(4, 40, 8, 8), (3, 37, 5, 9), (2, 3, 20, 17), (8, 3, 1, 1), (1, 33, 1, 300)]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.slow
def test_emulated_cuda_kernels_match_float64(emulated, layout, dtype):
    for seed, shape in enumerate(EMU_SHAPES):
        x = random_x(seed, shape, dtype, layout)
        for kw in options(seed, shape[0], shape[1]):
            y_ref, stats_ref, d = naive(x, **kw)
            out = torch.full_like(x, float("nan"))  # a missed element would stay NaN
            y, stats = instance_norm(x, 1e-5, backend="ext", out=out, **kw)
            assert_matches(x, y, stats, y_ref, stats_ref, d, dtype, "ext")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 40, 8, 8), (2, 70, 30, 30), (3, 5, 2, 3)])
def test_emulation_runs_the_production_grid(emulated, layout, shape):
    # NCHW: one block per (group, channel), 32..256 threads (HW rounded up to a power of two),
    # per row two barriers and 2 x 5 shuffles per warp. NHWC: one block per (group, 32 channels),
    # 256 threads, two barriers per row, no shuffles.
    n, c, h, w = shape
    x = random_x(4, shape, torch.float32, layout)
    src = did_src(n)
    if n % 4:
        src = torch.arange(n)
        src[1] = 0  # row 1 borrows row 0's statistics
    groups = len(torch.unique(src))
    y, stats = instance_norm(x, stats_src=src, backend="ext")
    assert_matches(x, y, stats, *naive(x, stats_src=src), torch.float32, "ext")
    launch = emulated.last_launch()
    if layout == "channels_last" and not x.is_contiguous():
        assert launch["threads"] == 256
        assert launch["blocks"] == groups * -(-c // 32)
        assert launch["barriers"] == 2 * n * -(-c // 32) and launch["shuffles"] == 0
    else:
        threads = 32
        while threads < 256 and threads < h * w:
            threads *= 2
        assert launch["threads"] == threads and launch["blocks"] == groups * c
        assert launch["barriers"] == 2 * n * c
        assert launch["shuffles"] == n * c * (threads // 32) * 10
    # statistics given, none wanted: no reduction, one barrier per row
    instance_norm(x, stats_in=stats, return_stats=False, backend="ext")
    launch = emulated.last_launch()
    assert launch["shuffles"] == 0
    assert launch["barriers"] == n * (-(-c // 32) if layout == "channels_last" and not x.is_contiguous() else c)


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.slow
def test_cuda_sources_compile_with_nvcc(arch, tmp_path):
    src = Path(build.csrc_dir()) / "cuda" / "instnorm_cuda.cu"
    obj = tmp_path / f"instnorm_sm{arch}.o"
    cmd = [NVCC, "-c", "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert obj.stat().st_size > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cuda_matches_float64(layout, dtype):
    for seed, shape in enumerate(SHAPES):
        x = random_x(seed, shape, dtype, layout)
        for kw in options(seed, shape[0], shape[1]):
            y_ref, stats_ref, d = naive(x, **kw)
            y, stats = instance_norm(x.cuda(), **{k: v.cuda() for k, v in kw.items()})
            assert_matches(x, y.cpu(), stats.cpu(), y_ref, stats_ref, d, dtype, "ext")
