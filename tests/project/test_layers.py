"""The design's rules, checked on the source (docs/architecture.md draws them): gandid's modules form
no import cycle, each imports only its own layer or the layers below, the core never reaches a plugin,
plugins use only gandid's public names and know no CLI, and no product file grows past ~500 lines
without saying why in its docstring.

Imports are read from the AST, function-level ones included (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module may import its own layer and the layers below, never above.
LAYERS = {
    "foundation": ["gandid.version", "gandid.errors", "gandid.faults", "gandid.locks", "gandid.interrupts",
                   "gandid.hookspecs", "gandid.stats", "gandid.segmentation", "gandid.plotting", "gandid.config",
                   "gandid.contracts", "gandid.checkpoints", "gandid.formats", "gandid.outdir", "gandid.registry"],
    "ops": ["gandid.ops", "gandid.ops.*"],
    "model": ["gandid.model", "gandid.hooks", "gandid.buffers", "gandid.interventions", "gandid.engine",
              "gandid.intervene"],
    "analysis api": ["gandid.analysis", "gandid.state", "gandid.distributed", "gandid.testing"],
    "run": ["gandid.record", "gandid.planning", "gandid.building", "gandid.models", "gandid.stages",
            "gandid.samples", "gandid.progress", "gandid.runner", "gandid.merge", "gandid.convert",
            "gandid.bench", "gandid.report", "gandid.report.*"],
    "serve": ["gandid.serve", "gandid.serve.*"],
    "entry": ["gandid", "gandid.cli", "gandid.__main__"],
}
LIMIT = 500  # lines; longer only with "Longer than 500 lines:" and the reason in the module docstring


def _modules(package_dir: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package,) + path.relative_to(package_dir).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: dict) -> set[str]:
    """Modules of ``known`` that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` imports pkg
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in candidates:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                targets.add(target)
    return targets


def _layer_of(module: str) -> int:
    for rank, members in enumerate(LAYERS.values()):
        for pattern in members:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")


GANDID = _modules(ROOT / "gandid", "gandid")
GRAPH = {name: _imports(name, path, GANDID) for name, path in GANDID.items()}


def test_no_import_cycle_among_gandids_modules():
    state: dict[str, str] = {}
    cycles = []

    def visit(module, chain):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(chain[chain.index(target):] + [target]))
            elif target not in state:
                visit(target, chain + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_each_module_imports_only_its_layer_and_below():
    names = list(LAYERS)
    upward = [f"{module} ({names[_layer_of(module)]}) imports {target} ({names[_layer_of(target)]})"
              for module, targets in sorted(GRAPH.items()) for target in sorted(targets)
              if _layer_of(target) > _layer_of(module)]
    assert not upward, "imports against the layers: " + "; ".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checks above can fail: a core module importing the CLI is caught."""
    package = tmp_path / "gandid"
    (package / "serve").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("def f():\n    from .cli import main\n")
    (package / "cli.py").write_text("from . import errors\n")
    (package / "serve" / "__init__.py").write_text("from ..errors import f\n")
    modules = _modules(package, "gandid")
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["gandid.errors"] == {"gandid.cli"} and graph["gandid.serve"] == {"gandid.errors"}
    assert _layer_of("gandid.cli") > _layer_of("gandid.errors")


def test_the_core_never_imports_a_plugin():
    offenders = [f"{name} imports {module}" for name, path in GANDID.items()
                 for module in _imported_names(path) if module.split(".")[0] == "gandid_plugins"]
    assert not offenders, offenders


def _imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_plugins_use_only_gandids_public_names_and_know_no_cli():
    """First-party plugins can do only what a third party can."""
    offenders = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for name in _imported_names(path):
            parts = name.split(".")
            if parts[0] != "gandid":
                continue
            if any(part.startswith("_") for part in parts[1:]):
                offenders.append(f"{path.relative_to(ROOT)}: {name} is private")
            if len(parts) > 1 and parts[1] in ("cli", "serve", "runner", "planning", "stages"):
                offenders.append(f"{path.relative_to(ROOT)}: {name} is the command line or the run's machinery")
    assert not offenders, offenders


def _product_files():
    for folder in ("gandid", "plugins"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".js") and "_csrc" not in path.parts:
                yield path


def test_no_file_above_500_lines_without_a_reason():
    long = []
    for path in _product_files():
        text = path.read_text()
        if text.count("\n") > LIMIT and "Longer than 500 lines:" not in text[:3000]:
            long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, ("split these by job, or say in the docstring 'Longer than 500 lines: <why it is one "
                      "thing>': " + ", ".join(long))
