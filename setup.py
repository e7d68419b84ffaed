"""gandid: look inside GANs (dissection, ACE, difference-in-differences).

Pure-Python install: the fused C++/CUDA op in csrc/ is shipped as package data and
JIT-built on first use, so installing needs neither a compiler nor torch at build time.
"""
import shutil
from pathlib import Path

from setuptools import setup
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


def read_version():
    for line in (HERE / "gandid" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in gandid/__init__.py")


setup(
    name="gandid",
    version=read_version(),
    description="Look inside GANs: dissection, ACE and difference-in-differences of pixel normalisation",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["gandid", "gandid.ops", "gandid.report", "gandid.serve", "gandid_plugins", "gandid_plugins.toyroom"],
    package_dir={"gandid_plugins": "plugins"},
    package_data={"gandid.serve": ["static/*"], "gandid_plugins": ["*.json", "*.md", "toyroom/*.md", "toyroom/weights/*"]},
    cmdclass={"build_py": BuildPyWithCsrc},
    install_requires=[
        # A range, never a pin above what the user has: an unpinned or newer torch pulls GBs of CUDA.
        "torch>=2.4",
        "numpy",
        "pluggy>=1.3",
        "rich>=13",
        "ninja",
        "pybind11",
        "matplotlib",
        "safetensors",
        "scipy",  # BCa bootstrap and false-discovery control (did); needs no torch
    ],
    extras_require={
        # httpx: Starlette's test client; playwright drives the system Chromium in the explorer's browser test
        # onnx (with onnxruntime and transformers) lets the segmenter tests export and run their models
        "test": ["pytest>=7", "pytest-benchmark", "hypothesis", "setuptools>=61", "wheel", "httpx", "playwright",
                 "transformers>=4.46", "onnxruntime", "onnx"],
        # any Hugging Face semantic-segmentation folder, and any ONNX segmentation model: neither pulls torch
        "transformers": ["transformers>=4.46"],
        "onnx": ["onnxruntime"],
        # `gandid serve`: none of these depends on torch
        "serve": ["starlette>=0.37", "uvicorn>=0.29", "pillow"],
    },
    entry_points={
        "console_scripts": ["gandid = gandid.cli:main"],
        # First-party plugins register exactly as a third party does.
        "gandid": [
            "pggan = gandid_plugins.pggan",
            "stylegan2 = gandid_plugins.stylegan2",
            "stylegan = gandid_plugins.stylegan",
            "stylegan2-ada = gandid_plugins.stylegan2_ada",
            "pix2pix = gandid_plugins.pix2pix",
            "upp = gandid_plugins.upp",
            "semseg = gandid_plugins.semseg",
            "transformers = gandid_plugins.hf_segmenter",
            "onnx = gandid_plugins.onnx_segmenter",
            "dissect = gandid_plugins.dissect",
            "ace = gandid_plugins.ace",
            "did = gandid_plugins.did",
            "entangle = gandid_plugins.entangle",
            "noise = gandid_plugins.noise",
            "toyroom = gandid_plugins.toyroom",
        ],
    },
)
