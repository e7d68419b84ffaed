import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_module(path: Path, name: str):
    """A plugin module loaded from its file, without touching sys.path (the entry-point path is tested
    by installing the plugins: ``installed_plugins``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def testkit():
    """The test kit's plugin module: gandid.testing's tiny models registered, plus `count` and `failing`."""
    return load_module(ROOT / "tests" / "testkit" / "gandid_testkit" / "tiny.py", "gandid_testkit_tiny")


@pytest.fixture
def registry(testkit):
    """A registry with the test kit and the example plugin, registered in-process."""
    from gandid.testing import registry_with

    unitstats = load_module(ROOT / "examples" / "gandid-unitstats" / "gandid_unitstats" / "__init__.py",
                            "gandid_unitstats")
    reg = registry_with()
    reg.add_plugin(testkit, "testkit")
    reg.add_plugin(unitstats, "unitstats")
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


@pytest.fixture(scope="session")
def checkpoint_generators():
    """A registry of the generator plugins that read published checkpoint files (PG-GAN, StyleGAN v1/v2,
    NVlabs StyleGAN2-ADA), without entry points."""
    import gandid_plugins.generators.pggan
    import gandid_plugins.generators.stylegan
    import gandid_plugins.generators.stylegan2
    import gandid_plugins.generators.stylegan2_ada
    from gandid.registry import Registry

    reg = Registry(load_entry_points=False)
    for mod in (gandid_plugins.generators.pggan, gandid_plugins.generators.stylegan, gandid_plugins.generators.stylegan2, gandid_plugins.generators.stylegan2_ada):
        reg.add_plugin(mod, mod.__name__)
    return reg
