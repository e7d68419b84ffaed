"""JIT build of the fused op with torch.utils.cpp_extension.load and ninja, cached per user.

The build directory's name hashes the sources, torch's version, the CPU and the CUDA flag, so a
change to any of them builds afresh and an unchanged one loads in milliseconds.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sysconfig
import warnings
from pathlib import Path

_module = None
_error: str | None = None


def csrc_dir() -> Path:
    """The C++/CUDA sources: shipped inside the package, or the repository's csrc/ (editable install)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_csrc", here.parent / "csrc"):
        if (candidate / "bindings.cpp").exists():
            return candidate
    raise FileNotFoundError(f"gandid's C++ sources are missing (looked in {here / '_csrc'} and {here.parent / 'csrc'})")


def cache_root() -> Path:
    base = os.environ.get("GANDID_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                              or os.path.expanduser("~/.cache"), "gandid")
    return Path(base) / "ext"


def _cpu_signature() -> str:
    # -march=native code must not be loaded on a different CPU that shares the cache.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _with_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return bool(torch.cuda.is_available() and CUDA_HOME and os.environ.get("GANDID_NO_CUDA") != "1")


def sources(with_cuda: bool) -> list[Path]:
    root = csrc_dir()
    files = [root / "bindings.cpp", root / "cpu" / "intervene_cpu.cpp", root / "cpu" / "instnorm_cpu.cpp"]
    if with_cuda:
        files += [root / "cuda_glue.cpp", root / "cuda" / "intervene_cuda.cu", root / "cuda" / "instnorm_cuda.cu"]
    return files


def build_name(with_cuda: bool, flags=()) -> str:
    import torch

    h = hashlib.sha256()
    root = csrc_dir()
    for f in _source_files():
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    h.update(f"{torch.__version__}|{with_cuda}|{' '.join(flags)}|{_cpu_signature()}".encode())
    return f"gandid_fused_{h.hexdigest()[:16]}"


def _source_files() -> list[Path]:
    """Every C++/CUDA source and header (.cpp, .cu, .h, .cuh) under csrc, in a fixed order: what the
    build's name hashes (a CPU build hashes the CUDA files too, which costs nothing and keeps one rule)."""
    root = csrc_dir()
    return [f for f in sorted(root.rglob("*")) if f.suffix in (".h", ".cuh", ".cpp", ".cu")]


def build_needed(build_dir: Path, name: str, with_cuda: bool) -> str | None:
    """Why ``load`` will compile ``name`` in ``build_dir`` (a phrase), or None when it will only load it.
    ninja rebuilds when one of the build's inputs (its sources and the headers they include) is newer
    than the library even if its contents are the same (a fresh checkout gives every file a new time),
    which took as long as the first build, without a word."""
    library = build_dir / f"{name}.so"
    if not library.exists():
        return "once for this machine (half a minute to a minute)"
    headers = (".h", ".cuh") if with_cuda else (".h",)
    inputs = sources(with_cuda) + [f for f in _source_files() if f.suffix in headers]
    if max(f.stat().st_mtime for f in inputs) > library.stat().st_mtime:
        return "again: its source files are newer than the build (new file times, e.g. a fresh checkout)"
    return None


@contextlib.contextmanager
def _this_environments_ninja():
    """PATH with this Python environment's scripts folder first while building, so that the ninja pip
    installed with gandid builds every time. Two ninja versions on one build folder (1.13 from pip when
    a venv is activated, 1.11 from the system when it is not) hash the commands differently, so each
    took the other's build for stale and compiled it all again, without a word."""
    scripts = Path(sysconfig.get_path("scripts"))
    path = os.environ.get("PATH", "")
    if not (scripts / "ninja").exists() or path.split(os.pathsep)[0] == str(scripts):
        yield
        return
    os.environ["PATH"] = str(scripts) + os.pathsep + path
    try:
        yield
    finally:
        os.environ["PATH"] = path


def load(verbose: bool = False):
    """Build (first time) and import the extension; raises on failure."""
    global _module
    if _module is not None:
        return _module
    from torch.utils.cpp_extension import load as cpp_load

    with_cuda = _with_cuda()
    # -fopenmp makes at::parallel_for (inline OpenMP in torch's headers) parallel; the soname
    # libgomp.so.1 resolves to the runtime torch already loaded, so there is one OpenMP pool.
    flags = ["-O3", "-march=native", "-fopenmp"]
    name = build_name(with_cuda, flags)
    build_dir = cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(name=name, sources=[str(s) for s in sources(with_cuda)], build_directory=str(build_dir),
                  extra_cflags=flags + (["-DGANDID_WITH_CUDA"] if with_cuda else []),
                  extra_ldflags=["-fopenmp"], extra_cuda_cflags=["-O3", "-DGANDID_WITH_CUDA"], with_cuda=with_cuda,
                  verbose=verbose)
    why = build_needed(build_dir, name, with_cuda)
    if why and not verbose:
        import time

        from rich.console import Console

        console = Console(stderr=True)
        # A line as well as the spinner: a log file or CI output shows no spinner.
        console.print(f"building gandid's fused C++{'/CUDA' if with_cuda else ''} op {why}; later runs "
                      f"reuse it from {build_dir}")
        t0 = time.perf_counter()
        with console.status("compiling the fused op"), _this_environments_ninja():
            _module = cpp_load(**kwargs)
        console.print(f"fused op built in {time.perf_counter() - t0:.0f} s")
    else:
        with _this_environments_ninja():
            _module = cpp_load(**kwargs)
    return _module


def try_load():
    """The extension, or None after one warning with the compiler's error tail."""
    global _error
    if _module is not None:
        return _module
    if _error is not None:
        return None
    try:
        return load()
    except Exception as exc:  # any build failure falls back to the reference
        tail = "\n".join(str(exc).strip().splitlines()[-15:])
        _error = f"{type(exc).__name__}: {tail}"
        warnings.warn("gandid: the fused op could not be built; using the PyTorch reference (slower). "
                      f"Compiler said:\n{tail}", RuntimeWarning, stacklevel=3)
        return None


def build_error() -> str | None:
    return _error
