"""Every file the documentation and the docstrings point a reader to exists in the repository, and
nothing points to a design document that the repository does not contain."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a repository path as prose cites it: `docs/serve.md`, tests/generators/test_stylegan.py, csrc/cpu/intervene_cpu.cpp
CITED_PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|benchmarks|plugins|gandid|examples|csrc)/[\w/.-]*\w\."
                        r"(?:md|py|json|png|safetensors|toml|cpp|cuh|cu|h|js|css|html))(?![\w])")


def _readable_files():
    yield ROOT / "README.md"
    yield ROOT / "benchmarks" / "RESULTS.md"
    for folder, pattern in (("docs", "*.md"), ("gandid", "*.py"), ("gandid", "*.js"), ("plugins", "*.py"),
                            ("plugins", "*.md")):
        yield from sorted((ROOT / folder).rglob(pattern))


def test_every_cited_repository_path_exists():
    missing = [f"{path.relative_to(ROOT)} cites {cited}" for path in _readable_files()
               for cited in CITED_PATH.findall(path.read_text()) if not (ROOT / cited).exists()]
    assert not missing, missing


def test_the_path_pattern_finds_what_prose_cites():
    text = "see `docs/serve.md`, tests/ops/test_ops.py::test_x and csrc/cuda/intervene_kernels.cuh; not x/docs/a.md"
    assert CITED_PATH.findall(text) == ["docs/serve.md", "tests/ops/test_ops.py", "csrc/cuda/intervene_kernels.cuh"]


def test_no_reference_to_a_design_document_outside_the_repository():
    outside = [str(path.relative_to(ROOT)) for path in _readable_files() if "ARCHITECTURE" in path.read_text()]
    assert not outside, f"these cite an ARCHITECTURE document the repository does not contain: {outside}"
