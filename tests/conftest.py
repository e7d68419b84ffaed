import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# In-process tests import the test plugins directly; the entry-point path is tested by installing them.
sys.path.insert(0, str(ROOT / "tests" / "testkit"))
sys.path.insert(0, str(ROOT / "examples" / "gandid-unitstats"))


@pytest.fixture
def registry():
    """A registry with the test kit and the example plugin, registered in-process."""
    import gandid_testkit.tiny
    import gandid_unitstats

    from gandid.registry import Registry

    reg = Registry(load_entry_points=False)
    reg.add_plugin(gandid_testkit.tiny, "testkit")
    reg.add_plugin(gandid_unitstats, "unitstats")
    return reg


def _pip_install_target(target, *packages):
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "--target", str(target), *map(str, packages)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def installed_plugins(tmp_path_factory):
    """The example plugin and the test kit installed as real distributions (entry points and all)."""
    target = tmp_path_factory.mktemp("site")
    _pip_install_target(target, ROOT / "examples" / "gandid-unitstats", ROOT / "tests" / "testkit")
    env = dict(os.environ, PYTHONPATH=str(target))
    return env
