"""intervene_pixelnorm: every backend against a float64 naive loop, on fresh random inputs.

Tolerances per dtype: see op_cases.TOL.
"""
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from op_cases import affordable, assert_matches, case_args, naive, random_case

from gandid.ops import backend_name, build, intervene_pixelnorm, intervene_pixelnorm_reference
from gandid.ops.groups import row_groups

BACKENDS = ["ext", "reference"]


@settings(max_examples=int(os.environ.get("GANDID_HYPOTHESIS_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=case_args)
@pytest.mark.slow
def test_float32_every_backend_matches_naive_loop(case):
    x, kw = random_case(**affordable(case))
    y_ref, beta_ref = naive(x, **kw)
    for backend in BACKENDS:
        y, beta = intervene_pixelnorm(x, backend=backend, **kw)
        assert y.shape == x.shape and beta.shape == (x.shape[0], 1, x.shape[2], x.shape[3])
        fmt = torch.channels_last if case["channels_last"] else torch.contiguous_format
        assert y.is_contiguous(memory_format=fmt)  # y keeps x's memory format
        assert_matches(x, kw, y, beta, y_ref, beta_ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_other_dtypes_accumulate_in_float32(dtype, channels_last, backend):
    for seed, (n, c, h, w) in enumerate([(4, 512, 8, 8), (3, 37, 5, 9), (8, 96, 4, 3)]):
        x, kw = random_case(seed, n, c, h, w, dtype=dtype, channels_last=channels_last, value=seed == 1,
                            region="per_row", rows=True, beta_src="random" if seed != 2 else "did")
        y_ref, beta_ref = naive(x, **kw)  # sees the same rounded input
        y, beta = intervene_pixelnorm(x, backend=backend, **kw)
        assert y.dtype == dtype and beta.dtype == dtype
        assert_matches(x, kw, y, beta, y_ref, beta_ref, dtype)


def test_borrowing_row_divides_by_lenders_beta_after_lenders_intervention():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 3, 3, generator=g)
    x[1] = x[0]  # the borrower holds the same activations, but is not intervened
    alpha = torch.tensor([1.0, 1.0, 0, 0, 0, 0])
    rows = torch.tensor([True, False])
    for backend in BACKENDS:
        y, beta = intervene_pixelnorm(x, alpha=alpha, rows=rows, beta_src=torch.tensor([0, 0]), backend=backend)
        ablated = x[0].clone()
        ablated[:2] = 0
        lender_beta = (ablated.pow(2).mean(0, keepdim=True) + 1e-8).sqrt()
        own_beta = (x[1].pow(2).mean(0, keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(y[0], ablated / lender_beta)
        torch.testing.assert_close(y[1], x[1] / lender_beta)  # original units, lender's (ablated) β
        torch.testing.assert_close(beta[1], own_beta)  # the returned β is the row's own
        assert not torch.allclose(lender_beta, own_beta)


def test_row_groups_put_each_lender_first_and_follow_in_place_changes():
    src = torch.tensor([0, 0, 2, 2, 4, 0])
    offsets, rows = row_groups(src, borrow=True)
    assert offsets.tolist() == [0, 3, 5, 6] and rows.tolist() == [0, 1, 5, 2, 3, 4]
    assert row_groups(src, borrow=True)[1] is rows  # computed once per tensor
    assert row_groups(src, borrow=False) is None  # beta_in or normalize=False: every row alone
    assert row_groups(torch.arange(4), borrow=True) is None  # nobody borrows
    src[5] = 5  # an in-place change is seen
    offsets, rows = row_groups(src, borrow=True)
    assert offsets.tolist() == [0, 2, 4, 5, 6] and rows.tolist() == [0, 1, 2, 3, 4, 5]
    src[1] = 3  # row 1 would borrow from row 3, which borrows from row 2
    with pytest.raises(ValueError, match="chains are refused"):
        row_groups(src, borrow=True)
    with torch.inference_mode():  # inference tensors have no version counter: computed each call
        offsets, rows = row_groups(torch.tensor([1, 1, 2]), borrow=True)
    assert offsets.tolist() == [0, 2, 3] and rows.tolist() == [1, 0, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_src_changed_in_place_between_calls(backend):
    x, kw = random_case(5, 6, 9, 3, 4, beta_src="random")
    src = torch.tensor([0, 0, 2, 2, 4, 0])
    for _ in range(2):
        y, _ = intervene_pixelnorm(x, backend=backend, **{**kw, "beta_src": src})
        y_ref, beta_ref = naive(x, **{**kw, "beta_src": src})
        assert torch.allclose(y.double(), y_ref, rtol=1e-5, atol=1e-6)
        src[1], src[5] = 1, 4


def test_beta_in_overrides_beta_src_and_normalize_false_returns_intervened():
    x, kw = random_case(5, 4, 16, 4, 4, region="shared", beta_src="random", beta_in=True)
    for backend in BACKENDS:
        y, _ = intervene_pixelnorm(x, backend=backend, **kw)
        y_plain, beta = intervene_pixelnorm(x, backend=backend, normalize=False, alpha=kw["alpha"],
                                            region=kw["region"])
        torch.testing.assert_close(y, y_plain / kw["beta_in"])
        torch.testing.assert_close(beta, (y_plain.pow(2).mean(1, keepdim=True) + 1e-8).sqrt())


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffers_are_filled_and_reused(backend):
    x, kw = random_case(6, 8, 64, 6, 6, value=True, beta_src="did")
    out, beta_out = torch.empty_like(x), x.new_empty(8, 1, 6, 6)
    y, beta = intervene_pixelnorm(x, backend=backend, **kw)
    for _ in range(2):
        r_y, r_b = intervene_pixelnorm(x, backend=backend, out=out, beta_out=beta_out, **kw)
        assert r_y.data_ptr() == out.data_ptr() and r_b.data_ptr() == beta_out.data_ptr()
        torch.testing.assert_close(out, y, rtol=0, atol=0)
        torch.testing.assert_close(beta_out, beta, rtol=0, atol=0)
    xl = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="memory format"):
        intervene_pixelnorm(xl, backend=backend, out=out, **kw)
    with pytest.raises(RuntimeError, match="do not support autograd"):
        intervene_pixelnorm(x.requires_grad_(), backend=backend, out=out, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input_is_handled(backend):
    x, kw = random_case(7, 5, 12, 7, 6, region="shared")
    view = x.transpose(2, 3)  # neither NCHW- nor NHWC-contiguous
    kw["region"] = kw["region"].transpose(1, 2)
    y, beta = intervene_pixelnorm(view, backend=backend, **kw)
    y_ref, beta_ref = naive(view.contiguous(), **kw)
    assert_matches(view, kw, y, beta, y_ref, beta_ref, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(alpha=torch.ones(5)), ValueError, r"alpha must have shape \(4,\)"),
    (dict(alpha=torch.ones(4), region=torch.ones(2, 3, 3)), ValueError, r"region must have shape \(3, 3, 3\) or "),
    (dict(alpha=torch.ones(4), rows=torch.ones(3)), TypeError, "rows must be bool"),
    (dict(region=torch.ones(1, 3, 3)), ValueError, "region given without alpha"),
    (dict(beta_src=torch.tensor([0, 0, 1])), ValueError, "chains are refused: row 2 borrows from row 1, which "
                                                         "itself borrows from row 0"),
    (dict(beta_src=torch.tensor([0, 3, 1])), ValueError, r"beta_src\[1\] = 3 is not a row"),
    (dict(beta_src=torch.tensor([0.0, 1.0, 2.0])), TypeError, "beta_src must be an integer"),
    (dict(beta_in=torch.ones(3, 4, 3, 3)), ValueError, r"beta_in must have shape \(3, 1, 3, 3\)"),
    (dict(alpha=torch.ones(4, device="meta")), ValueError, "alpha is on meta but x is on cpu"),
    (dict(alpha=torch.ones(4, dtype=torch.long)), TypeError, "alpha must be a floating-point"),
    (dict(eps=0), ValueError, "eps must be a positive"),
])
def test_bad_arguments_get_clear_errors(backend, kwargs, error, message):
    x = torch.randn(3, 4, 3, 3)
    with pytest.raises(error, match=message):
        intervene_pixelnorm(x, backend=backend, **kwargs)


def test_bad_x_gets_clear_errors():
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        intervene_pixelnorm(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="x must be float32"):
        intervene_pixelnorm(torch.ones(1, 2, 3, 3, dtype=torch.int32))


def _grad_inputs(seed, beta_mode):
    x, kw = random_case(seed, 4, 5, 3, 2, dtype=torch.float64, value=True, region="per_row", rows=True,
                        beta_src=beta_mode if beta_mode != "beta_in" else "none", beta_in=beta_mode == "beta_in")
    kw["alpha"] = kw["alpha"].double().clamp_min(0.2)  # every unit differentiable
    for key in ("alpha", "value", "region", "beta_in"):
        if key in kw:
            kw[key] = kw[key].double().requires_grad_()
    return x.requires_grad_(), kw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta_mode", ["none", "random", "did", "beta_in"])
@pytest.mark.slow
def test_gradcheck(backend, beta_mode):
    x, kw = _grad_inputs(11, beta_mode)
    keys = [k for k in ("alpha", "value", "region", "beta_in") if k in kw]
    fixed = {k: v for k, v in kw.items() if k not in keys}

    def f(x, *diff):
        return intervene_pixelnorm(x, backend=backend, **fixed, **dict(zip(keys, diff)))

    assert torch.autograd.gradcheck(f, (x, *[kw[k] for k in keys]), eps=1e-6, atol=1e-6)


def test_ext_backward_matches_reference_autograd_in_float32():
    x, kw = random_case(12, 8, 64, 5, 5, value=True, region="shared", rows=True, beta_src="did")
    kw["alpha"].requires_grad_()
    grads = []
    for backend in BACKENDS:
        xx = x.clone().requires_grad_()
        alpha = kw["alpha"].detach().clone().requires_grad_()
        y, beta = intervene_pixelnorm(xx, backend=backend, **{**kw, "alpha": alpha})
        (y.sin().sum() + beta.sum()).backward()
        grads.append((xx.grad, alpha.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_traces_a_module_calling_the_op():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x, alpha, beta_src):
            y, beta = intervene_pixelnorm(self.conv(x), alpha=alpha, beta_src=beta_src)
            return torch.nn.functional.leaky_relu(y, 0.2), beta

    torch.manual_seed(0)
    block = Block()
    x, alpha, src = torch.randn(4, 8, 6, 6), torch.rand(8), torch.tensor([0, 1, 0, 1])
    eager = block(x, alpha, src)
    compiled = torch.compile(block)(x, alpha, src)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)
    graph = torch._dynamo.explain(block)(x, alpha, src)
    assert graph.graph_break_count == 0, graph.break_reasons


def test_ext_is_the_cpu_backend_here():
    assert backend_name("cpu") == "ext-cpu", build.build_error()


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_error", None)

    def failing_load(verbose=False):
        raise RuntimeError("Error building extension 'gandid_fused':\nintervene_cpu.cpp:1: error: boom")

    monkeypatch.setattr(build, "load", failing_load)
    with pytest.warns(RuntimeWarning, match="(?s)using the PyTorch reference.*error: boom"):
        assert backend_name("cpu") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning per process
        assert backend_name("cpu") == "reference"
        x, kw = random_case(1, 2, 4, 3, 3)
        y, _ = intervene_pixelnorm(x, **kw)
    torch.testing.assert_close(y, intervene_pixelnorm_reference(x, **kw)[0])
    monkeypatch.setenv("GANDID_OP_BACKEND", "ext")
    with pytest.raises(RuntimeError, match="boom"):  # asked for explicitly: no silent fallback
        backend_name("cpu")


def test_build_name_changes_with_the_sources(tmp_path, monkeypatch):
    copy = tmp_path / "csrc"
    shutil.copytree(build.csrc_dir(), copy)
    monkeypatch.setattr(build, "csrc_dir", lambda: copy)
    before = build.build_name(False)
    assert build.build_name(False) == before
    (copy / "intervene.h").write_text((copy / "intervene.h").read_text() + "\n// changed\n")
    assert build.build_name(False) != before
    changed = build.build_name(False)
    kernels = copy / "cuda" / "intervene_kernels.cuh"  # included by the .cu file only
    kernels.write_text(kernels.read_text() + "\n// changed\n")
    assert build.build_name(False) != changed


def test_the_build_uses_this_environments_ninja(tmp_path, monkeypatch):
    """While building, the ninja next to this Python comes first on PATH (found without activating the
    environment), and PATH is restored afterwards."""
    scripts = tmp_path / "bin"
    scripts.mkdir()
    monkeypatch.setattr(build.sysconfig, "get_path", lambda name: str(scripts))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with build._this_environments_ninja():
        assert os.environ["PATH"] == "/usr/bin:/bin"  # no ninja there: PATH as it was
    (scripts / "ninja").write_text("")
    with build._this_environments_ninja():
        assert os.environ["PATH"].split(os.pathsep) == [str(scripts), "/usr/bin", "/bin"]
    assert os.environ["PATH"] == "/usr/bin:/bin"


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.slow
def test_cuda_sources_compile_with_nvcc(arch, tmp_path):
    src = Path(build.csrc_dir()) / "cuda" / "intervene_cuda.cu"
    cmd = [NVCC, "-c", "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", str(src),
           "-o", str(tmp_path / f"intervene_sm{arch}.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / f"intervene_sm{arch}.o").stat().st_size > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_naive_loop(dtype, channels_last):
    assert backend_name("cuda") == "ext-cuda", build.build_error()
    for seed, (n, c, h, w) in enumerate([(4, 512, 8, 8), (9, 37, 5, 33), (8, 600, 3, 1), (1, 1, 1, 1)]):
        x, kw = random_case(seed, n, c, h, w, dtype=dtype, channels_last=channels_last, value=seed % 2 == 0,
                            region="per_row", rows=True, beta_src="random" if seed != 2 else "did",
                            beta_in=seed == 3)
        y_ref, beta_ref = naive(x, **kw)
        y, beta = intervene_pixelnorm(x.cuda(), **{k: v.cuda() for k, v in kw.items() if torch.is_tensor(v)},
                                      **{k: v for k, v in kw.items() if not torch.is_tensor(v)})
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_matches(x, kw, y.cpu(), beta.cpu(), y_ref, beta_ref, dtype)


@pytest.mark.slow
def test_gandid_bench_and_build_ext_commands(tmp_path, capsys):
    from gandid.cli import main

    assert main(["build-ext"]) == 0
    assert "CUDA kernels" in capsys.readouterr().out
    report = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(report)]) == 0
    import json

    data = json.loads(report.read_text())
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"copy_", "clone", "eager_reference", "compiled_reference", "ext_alloc", "ext_out"}
    assert all(r["GB/s"] > 0 for r in data["rows"])
    assert {"ext_out / copy_", "ext_alloc / clone"} <= set(data["ratios"][0])
    assert main(["bench", "--quick", "--methods", "copy_,ext_ot"]) == 2  # unknown method named with a suggestion
    assert "did you mean 'ext_out'" in capsys.readouterr().err.replace("\n", "")


def test_a_first_build_says_what_happens_and_that_it_happens_once(tmp_path, monkeypatch, capsys):
    """The half minute of the first build: a line (logs show no spinner), a spinner, and the time taken."""
    import rich.console
    import torch.utils.cpp_extension

    compiled, spinners = [], []

    def fake_load(**kw):  # what torch's load leaves: the library in the (private) build folder
        compiled.append(kw["name"])
        (Path(kw["build_directory"]) / f"{kw['name']}.so").write_bytes(b"built")
        return "ext"

    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(build, "_import_library", lambda name, library: f"cached {library.read_bytes().decode()}")
    real_status = rich.console.Console.status
    monkeypatch.setattr(rich.console.Console, "status",
                        lambda self, text, **kw: spinners.append(text) or real_status(self, text, **kw))
    assert build.load() == "ext" and len(compiled) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "building gandid's fused C++" in said and "op once for this machine" in said, said
    assert f"later runs reuse it from {tmp_path / compiled[0]}" in said and "fused op built in" in said
    assert spinners == ["compiling the fused op"]
    # the library was moved into the cache and nothing else is left: a later load imports it, silently
    assert sorted(p.name for p in (tmp_path / compiled[0]).iterdir()) == [f"{compiled[0]}.so"]
    monkeypatch.setattr(build, "_module", None)
    assert build.load() == "cached built" and len(compiled) == 1 and capsys.readouterr().err == ""
