"""The CUDA kernels, run on the host under an emulation of the CUDA thread model, against the float64 loop.

No GPU has been lent to this project's sessions so far, so the kernels in csrc/cuda are checked
here instead: tests/cuda_emulation/emulator.cpp compiles them with the host compiler, supplies
threadIdx/blockIdx/warp shuffles (32 lanes in lockstep at every shuffle) and runs the production
launch shape. The whole Python path of the op runs unchanged, with the emulator standing in for
the extension. Checked: indexing, row groups and β borrowing, masks, dtype conversions, the
grid. Not checked: the CUDA runtime, coalescing, speed (tests/ops/test_ops.py::test_cuda_* on a GPU).
"""
import hashlib
import os
from pathlib import Path

import pytest
import torch
from cuda_toolkit import cuda_include_dir
from hypothesis import HealthCheck, given, settings
from op_cases import affordable, assert_matches, case_args, naive, random_case

from gandid.ops import build, intervene_pixelnorm

HERE = Path(__file__).resolve().parents[1]  # tests/


CUDA_INCLUDE = cuda_include_dir()
pytestmark = pytest.mark.skipif(CUDA_INCLUDE is None, reason="the CUDA toolkit's headers (cuda_fp16.h) are absent")


@pytest.fixture(scope="module")
def emulator():
    from torch.utils.cpp_extension import load

    csrc = build.csrc_dir()
    sources = [HERE / "cuda_emulation" / "emulator.cpp", csrc / "cuda" / "intervene_kernels.cuh",
               csrc / "intervene.h", csrc / "glue.h", csrc / "dtype.h"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + torch.__version__.encode()).hexdigest()[:16]
    name = f"gandid_cuda_emulator_{digest}"
    build_dir = build.cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(name=name, sources=[str(sources[0])], build_directory=str(build_dir),
                extra_include_paths=[str(csrc), str(CUDA_INCLUDE)], extra_cflags=["-O2"])


@pytest.fixture
def emulated(emulator, monkeypatch):
    """intervene_pixelnorm(backend='ext') runs the emulated CUDA kernels."""
    monkeypatch.setattr(build, "_module", emulator)
    return emulator


def _layout(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.slow
def test_emulated_cuda_kernels_match_naive_loop(emulated, dtype, channels_last):
    # The same cases as test_ops.py::test_cuda_matches_naive_loop, plus plain and DID ones.
    cases = [((4, 512, 8, 8), dict(value=True, region="per_row", rows=True, beta_src="random")),
             ((9, 37, 5, 33), dict(value=False, region="per_row", rows=True, beta_src="random")),
             ((8, 600, 3, 1), dict(value=True, region="per_row", rows=True, beta_src="did")),
             ((1, 1, 1, 1), dict(value=False, region="per_row", rows=True, beta_src="random", beta_in=True)),
             ((8, 33, 7, 6), dict(value=True, region="shared", beta_src="did")),
             ((3, 70, 4, 4), dict(alpha=False, normalize=False)),
             ((5, 16, 9, 2), dict(region="none", rows=True)),
             ((6, 3, 7, 5), dict(value=True, region="per_row", beta_src="random"))]
    for seed, (shape, options) in enumerate(cases):
        x, kw = random_case(seed, *shape, dtype=dtype, channels_last=channels_last, **options)
        y_ref, beta_ref = naive(x, **kw)
        y, beta = intervene_pixelnorm(x, backend="ext", **kw)
        assert y.is_contiguous(memory_format=_layout(channels_last))
        assert_matches(x, kw, y, beta, y_ref, beta_ref, dtype)


@settings(max_examples=int(os.environ.get("GANDID_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=case_args)
@pytest.mark.slow
def test_emulated_cuda_kernels_on_random_cases(emulated, case):
    # The random option combinations of test_ops.py's float32 test, through the CUDA kernels.
    x, kw = random_case(**affordable(case))
    y, beta = intervene_pixelnorm(x, backend="ext", **kw)
    assert_matches(x, kw, y, beta, *naive(x, **kw), torch.float32)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(6, 40, 5, 7), (3, 1000, 4, 5), (2, 24, 40, 30), (5, 16, 3, 7), (4, 3, 5, 5),
                                   (3, 1, 2, 9)])
@pytest.mark.slow
def test_emulation_runs_the_production_grid(emulated, channels_last, shape):
    # The kernels really ran under the emulator, on the grid intervene_cuda.cu launches. NHWC: L
    # lanes per pixel (C rounded up to a power of two, at most 32), so a warp takes 32 / L pixels
    # of one group, and log2(L) shuffle steps per row and warp. NCHW: one block per (group, tile
    # of P pixels), two barriers per row; the tile of x is staged in shared memory unless it is too
    # large (1000 float32 channels x 16 pixels), and the result is the same either way.
    n, c, h, w = shape
    x, kw = random_case(11, n, c, h, w, channels_last=channels_last, value=True, region="shared",
                        beta_src="random")
    groups = len(torch.unique(kw["beta_src"]))
    y, beta = intervene_pixelnorm(x, backend="ext", out=torch.full_like(x, float("nan")),
                                  beta_out=x.new_full((n, 1, h, w), float("nan")), **kw)
    assert_matches(x, kw, y, beta, *naive(x, **kw), torch.float32)
    launch = emulated.last_launch()
    assert launch["threads"] == 256
    if channels_last and not x.is_contiguous():  # with one channel the two layouts coincide: NCHW runs
        lanes = launch["lanes_per_pixel"]
        assert lanes == min(32, 1 << (c - 1).bit_length())
        warps_per_group = -(-h * w // (32 // lanes))
        assert launch["blocks"] == -(-groups * warps_per_group * 32 // 256)
        assert launch["shuffles"] == n * warps_per_group * (lanes.bit_length() - 1)
        assert launch["barriers"] == 0 and launch["shared_bytes"] == 0
    else:
        tiles = -(-h * w // launch["pixels_per_block"])
        assert launch["blocks"] == groups * tiles
        assert launch["barriers"] == 2 * n * tiles and launch["shuffles"] == 0
        reduce_bytes = (256 + 2 * launch["pixels_per_block"]) * 4  # partial sums, 1 / divisor, lender β
        tile_bytes = c * launch["pixels_per_block"] * 4
        staged = reduce_bytes + tile_bytes <= 48 * 1024  # the default shared-memory limit per block
        assert launch["shared_bytes"] == reduce_bytes + (tile_bytes if staged else 0)
        assert staged == (c != 1000)  # 1000 channels x 16 pixels x 4 bytes is 62.5 KiB


def test_emulated_kernels_fill_every_output_element(emulated):
    # NaN-filled outputs: a pixel or channel the grid missed would stay NaN.
    for channels_last in (False, True):
        x, kw = random_case(3, 7, 65, 11, 3, channels_last=channels_last, value=True, region="shared")
        out = torch.full_like(x, float("nan"))
        beta_out = x.new_full((7, 1, 11, 3), float("nan"))
        intervene_pixelnorm(x, backend="ext", out=out, beta_out=beta_out, **kw)
        assert not torch.isnan(out).any() and not torch.isnan(beta_out).any()
