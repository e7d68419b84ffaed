"""The README tells the truth: its plugin recipe installs and works as written."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def writing_a_plugin() -> str:
    return README[README.index("## Writing a plugin"):]


@pytest.mark.slow
def test_the_readme_pyproject_installs_and_registers_the_plugin(tmp_path):
    toml = re.search(r"```toml\n(.*?)```", writing_a_plugin(), re.S).group(1)
    toml = "\n".join(line[3:] if line.startswith("   ") else line for line in toml.splitlines())
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(toml)
    shutil.copytree(ROOT / "examples" / "gandid-unitstats" / "gandid_unitstats", src / "gandid_unitstats")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(site), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "gandid.cli", "plugins", "--json"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(site)), timeout=300)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["unitstats"]["package"] == "gandid-unitstats" and rows["unitstats"]["status"] == "ok"


def test_the_readme_documents_ctx_batches_arguments_as_they_are():
    import inspect

    from gandid.analysis import RunContext

    params = [p for p in inspect.signature(RunContext.batches).parameters if p != "self"]
    documented = re.search(r"`ctx\.batches\((.*?)\)`", writing_a_plugin(), re.S).group(1)
    assert [part.split("=")[0].strip() for part in documented.split(",")] == params


def test_the_readme_covers_every_hook_and_protocol_member():
    """A plugin written from the README alone must know every member gandid uses (datasette's test_docs idea)."""
    from gandid import hookspecs
    from gandid.analysis import ANALYSIS_OPTIONAL, Analysis
    from gandid.contracts import protocol_members
    from gandid.model import GENERATOR_OPTIONAL, SEGMENTER_OPTIONAL, Generator, Segmenter

    text = writing_a_plugin()
    hooks = [name for name in dir(hookspecs) if name.startswith("gandid_")]
    assert len(hooks) == 3
    members = {
        "hook": hooks,
        "Generator": protocol_members(Generator) + list(GENERATOR_OPTIONAL),
        "Segmenter": protocol_members(Segmenter) + list(SEGMENTER_OPTIONAL),
        "Analysis": protocol_members(Analysis) + list(ANALYSIS_OPTIONAL),
    }
    # the name as a whole word after a backtick: `forward` is not covered by `forward_from`
    missing = [(kind, name) for kind, names in members.items() for name in names
               if not re.search(rf"`(\w+\.)*{re.escape(name)}(?!\w)", text)]
    assert missing == []


def test_the_readme_plugin_test_example_passes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "readme_unitstats", ROOT / "examples" / "gandid-unitstats" / "gandid_unitstats" / "__init__.py")
    unitstats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unitstats)
    block = next(b for b in re.findall(r"```python\n(.*?)```", writing_a_plugin(), re.S) if "run_analysis" in b)
    namespace = {"UnitStats": unitstats.UnitStats}
    exec(textwrap.dedent(block), namespace)
    namespace["test_unitstats"](tmp_path)


def test_the_readme_analysis_example_runs_and_computes_what_it_says(tmp_path):
    """The complete ``run(ctx)`` in the README, registered as written, on the tiny generator: its means
    equal those of a direct loop over the same latents (float64, the generator's own forward)."""
    import torch

    from gandid.config import RunConfig
    from gandid.runner import run
    from gandid.testing import TinyGenerator, registry_with

    code = re.search(r"3\. An analysis has.*?```python\n(.*?)```", writing_a_plugin(), re.S).group(1)
    namespace = {}
    exec(textwrap.dedent(code), namespace)
    reg = registry_with(generators={"tiny": TinyGenerator}, analyses={"mean": namespace["MeanActivation"]})
    result = run(RunConfig(generator="tiny", segmenter=None, analysis=["mean"], samples=10, batch_size=4,
                           device="cpu", out=str(tmp_path / "out")), registry=reg)
    assert result.status == "completed", result.errors
    data = json.loads((tmp_path / "out" / "mean.json").read_text())
    generator = reg.get("generator", "tiny").factory()
    (layer,) = data["mean"]
    captured = []
    module = generator.layer_module(layer)
    handle = module.register_forward_hook(lambda mod, inputs, output: captured.append(output.double()))
    with torch.no_grad():
        generator.forward(generator.sample_z(10, 0))
    handle.remove()
    expected = captured[0].mean(dim=(2, 3)).mean(dim=0)
    assert data["samples"] == 10
    torch.testing.assert_close(torch.tensor(data["mean"][layer], dtype=torch.float64), expected, rtol=1e-5, atol=1e-6)
