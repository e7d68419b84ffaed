"""The README tells the truth: its plugin recipe installs and works as written."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def writing_a_plugin() -> str:
    return README[README.index("## Writing a plugin"):]


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
