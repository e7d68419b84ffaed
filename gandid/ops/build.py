"""JIT build of the fused op with torch.utils.cpp_extension.load and ninja, cached per user.

A build's name hashes everything its library depends on: the sources, torch's version (CUDA's
included), the Python ABI, the compiler flags, the CPU and the CUDA flag. A library found under that
name is imported as is, in milliseconds, whichever environment built it (two virtualenvs with the same
torch and Python share one build); a change to any of them builds afresh. Builds run under a lock the
kernel drops when its holder dies, in a private folder, and are renamed into place when finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sysconfig
import tempfile
import warnings
from pathlib import Path

from ..locks import ProcessLock, describe_holder

# -fopenmp makes at::parallel_for (inline OpenMP in torch's headers) parallel; the soname libgomp.so.1
# resolves to the runtime torch already loaded, so there is one OpenMP pool.
FLAGS = ("-O3", "-march=native", "-fopenmp")
DEFAULT_WAIT_S = 900.0  # a CUDA build takes minutes; a lock held longer than this is someone's problem

_module = None
_error: str | None = None  # why the op is unavailable in this process (None: not tried or built)
_cache_note: str | None = None  # something a run should record about how the op was obtained
built_here = False  # whether this process compiled the op (False: imported a cached build)


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
    # EXT_SUFFIX names the Python version and ABI the module is compiled against (cpython-311-x86_64-...)
    h.update(f"{torch.__version__}|{torch.version.cuda}|{sysconfig.get_config_var('EXT_SUFFIX')}|{with_cuda}|"
             f"{' '.join(flags)}|{_cpu_signature()}".encode())
    return f"gandid_fused_{h.hexdigest()[:16]}"


def _source_files() -> list[Path]:
    """Every C++/CUDA source and header (.cpp, .cu, .h, .cuh) under csrc, in a fixed order: what the
    build's name hashes (a CPU build hashes the CUDA files too, which costs nothing and keeps one rule)."""
    root = csrc_dir()
    return [f for f in sorted(root.rglob("*")) if f.suffix in (".h", ".cuh", ".cpp", ".cu")]


class BuildWaitTimeout(RuntimeError):
    """Another living process held the build lock for longer than the bound."""


def wait_limit_s() -> float:
    """How long a run waits for another process's build of the same op (``GANDID_BUILD_WAIT``, seconds)."""
    raw = os.environ.get("GANDID_BUILD_WAIT", "")
    try:
        return float(raw) if raw.strip() else DEFAULT_WAIT_S
    except ValueError:
        raise ValueError(f"GANDID_BUILD_WAIT={raw!r}: give a number of seconds") from None


@contextlib.contextmanager
def _this_environments_ninja():
    """PATH with this Python environment's scripts folder first while building, so that the ninja pip
    installed with gandid is found even when the environment is not activated."""
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


def _import_library(name: str, library: Path):
    """Import the Python extension module ``name`` from ``library`` (what torch's ``load`` does last)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_path(name: str) -> Path:
    """Where the finished library of build ``name`` lives in the cache."""
    return cache_root() / name / f"{name}.so"


def cached_extension(name: str, sources: list, *, announce: str | None = None, verbose: bool = False,
                     rebuild: bool = False, **build_kwargs):
    """Import extension ``name`` from the cache, building it first if no process has yet.

    ``name`` must say everything the library depends on (see :func:`build_name`): a library found under
    it is imported as is, whichever environment built it. A build runs under an ``flock`` on
    ``build.lock`` (dropped by the kernel when its holder dies) in a private ``tmp-*`` folder, and the
    finished library is renamed into place, so a build killed at any moment leaves nothing that a later
    run trusts or waits for. A living builder is waited for (it is named on the console) for at most
    :func:`wait_limit_s`. A cache that cannot be written builds in a temporary folder, uncached.
    A cached library that does not import, or ``rebuild=True``, is built again.
    ``announce`` (a phrase, e.g. "gandid's fused C++ op") prints a line, a spinner and the time taken.
    """
    global _cache_note
    library = library_path(name)
    why = "once for this machine (half a minute to a minute)"
    failed = None  # (inode, mtime) of a cached library that did not import
    if rebuild:
        why = "again, as asked"
    elif library.exists():
        try:
            return _import_library(name, library)
        except (ImportError, OSError) as exc:
            why = f"again: the cached library {library} did not load ({type(exc).__name__}: {exc})"
            failed = _identity(library)
    folder = library.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = ProcessLock(folder / "build.lock")
        holder = lock.acquire_waiting(wait_limit_s(), on_wait=lambda who: _say_waiting(who, folder))
    except OSError as exc:
        _cache_note = (f"the build cache {folder.parent} cannot be written ({exc.strerror or exc}): the op was built "
                       "in a temporary folder for this process only; set GANDID_CACHE_DIR to a writable folder "
                       "to build it once")
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as scratch:
            return _compile(name, sources, Path(scratch), announce, why, verbose, build_kwargs, cached_in=None)
    if holder is not None:
        raise BuildWaitTimeout(f"waited {wait_limit_s():g} s for {describe_holder(holder)} to finish building "
                               f"{name} in {folder}; it is still running. Wait for it, stop it, or set "
                               "GANDID_BUILD_WAIT=SECONDS to wait longer")
    try:
        # A library that appeared (or was replaced) while we waited was built by that process: use it. The
        # old one stays in place until the new one replaces it (os.replace), so a failed rebuild loses nothing.
        if not rebuild and library.exists() and _identity(library) != failed:
            return _import_library(name, library)
        for stale in folder.glob("tmp-*"):  # builds killed midway (we hold the lock: nobody else builds)
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix="tmp-", dir=folder))
        try:
            return _compile(name, sources, scratch, announce, why, verbose, build_kwargs, cached_in=library)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        lock.release()


def _identity(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _say_waiting(holder: dict, folder: Path) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"waiting for {describe_holder(holder)}, which is building the fused op in {folder} "
                               f"(giving up after {wait_limit_s():g} s; GANDID_BUILD_WAIT sets the bound)", soft_wrap=True)


def _compile(name: str, sources: list, scratch: Path, announce: str | None, why: str, verbose: bool,
             build_kwargs: dict, cached_in: Path | None):
    """Compile and import ``name`` in ``scratch``; move the library to ``cached_in`` (atomically) if given."""
    import time

    import torch.utils.cpp_extension as cpp_extension

    global built_here, _cache_note
    # torch numbers repeated builds of one name in one process (name_v1, ...), which would change the
    # module's init symbol: every build here is the first of its name.
    getattr(getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None), "entries", {}).pop(name, None)
    kwargs = dict(build_kwargs, name=name, sources=[str(s) for s in sources], build_directory=str(scratch),
                  verbose=verbose)
    if announce and not verbose:
        from rich.console import Console

        console = Console(stderr=True)
        # A line as well as the spinner: a log file or CI output shows no spinner.
        where = f"later runs reuse it from {cached_in.parent}" if cached_in else "it will not be kept"
        console.print(f"building {announce} {why}; {where}", soft_wrap=True)
        t0 = time.perf_counter()
        with console.status("compiling the fused op"), _this_environments_ninja():
            module = cpp_extension.load(**kwargs)
        console.print(f"fused op built in {time.perf_counter() - t0:.0f} s", soft_wrap=True)
    else:
        with _this_environments_ninja():
            module = cpp_extension.load(**kwargs)
    built_here = True
    if cached_in is not None:
        try:
            os.replace(scratch / f"{name}.so", cached_in)  # the loaded mapping stays valid; later runs import the cached file
        except OSError as exc:  # the cache folder vanished or filled up meanwhile: this run still has the op
            _cache_note = (f"the fused op was built but could not be kept in {cached_in.parent} "
                           f"({exc.strerror or exc}): the next run builds it again")
    return module


def load(verbose: bool = False, rebuild: bool = False):
    """Build (first time on this machine, or ``rebuild``) and import the extension; raises on failure."""
    global _module
    if _module is not None and not rebuild:
        return _module
    with_cuda = _with_cuda()
    flags = list(FLAGS)
    _module = cached_extension(build_name(with_cuda, flags), sources(with_cuda), verbose=verbose, rebuild=rebuild,
                               announce=f"gandid's fused C++{'/CUDA' if with_cuda else ''} op",
                               extra_cflags=flags + (["-DGANDID_WITH_CUDA"] if with_cuda else []),
                               extra_ldflags=["-fopenmp"], extra_cuda_cflags=["-O3", "-DGANDID_WITH_CUDA"],
                               with_cuda=with_cuda)
    return _module


def try_load():
    """The extension, or None after one warning with the error's tail (kept for :func:`build_error`)."""
    global _error
    if _module is not None:
        return _module
    if _error is not None:
        return None
    try:
        return load()
    except Exception as exc:  # any build failure falls back to the reference
        tail = "\n".join(str(exc).strip().splitlines()[-15:])
        _error = summary(exc)
        warnings.warn("gandid: the fused op could not be built; using the PyTorch reference (slower). "
                      f"The build said:\n{tail}", RuntimeWarning, stacklevel=3)
        return None


def summary(exc: BaseException) -> str:
    """One line for a failed build: the exception's type and its last meaningful lines (a compiler's
    error comes last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' | '.join(lines[-3:]) or 'no message'}"


def build_error() -> str | None:
    """Why the op could not be built or loaded in this process, or None."""
    return _error


def cache_note() -> str | None:
    """How this process obtained the op when a run should know (e.g. an unwritable cache), or None."""
    return _cache_note
