"""Where the CUDA toolkit's headers are, for the tests that compile kernels on the host."""
import shutil
from pathlib import Path


def cuda_include_dir() -> Path | None:
    """The toolkit's include folder (one with cuda_fp16.h), or None where no toolkit is installed."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [Path(CUDA_HOME) / "include"] if CUDA_HOME else []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    return next((d for d in candidates if (d / "cuda_fp16.h").exists()), None)
