"""Packaging details pyproject.toml cannot state: the first-party plugins' folder is installed as
``gandid_plugins``, and csrc/ (the fused C++/CUDA op) ships inside the package as ``gandid/_csrc``.

The op is JIT-built on first use, so installing needs neither a compiler nor torch at build time.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithCsrc(build_py):
    """Copy csrc/ into the built package as gandid/_csrc (for non-editable installs)."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "gandid" / "_csrc"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(HERE / "csrc", target, ignore=shutil.ignore_patterns("*.o", "*.so"))


setup(
    packages=(find_packages(include=["gandid", "gandid.*"])
              + ["gandid_plugins"] + [f"gandid_plugins.{p}" for p in find_packages("plugins")]),
    package_dir={"gandid_plugins": "plugins"},
    package_data={"gandid.serve": ["static/*", "static/*/*"],
                  "gandid_plugins.segmenters": ["*.json"],
                  "gandid_plugins.worlds.toyroom": ["*.md", "weights/*"]},
    cmdclass={"build_py": BuildPyWithCsrc},
)
