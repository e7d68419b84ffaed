"""Reading ``latest_net_G.pth``: the architecture told from the keys, the state dict checked and loaded, and
what auto-detection recognises.

Facts read from junyanz/pytorch-CycleGAN-and-pix2pix:

- ``models/base_model.py``: ``save_networks`` writes ``net.state_dict()`` (``net.module``'s under
  DataParallel in current versions; older files and forks may carry ``module.`` prefixes, which are
  stripped here); ``__patch_instance_norm_state_dict`` drops the ``running_mean`` / ``running_var`` /
  ``num_batches_tracked`` that InstanceNorm layers of files written before PyTorch 0.4 carry (they were
  never used: instance norm normalises each sample with its own statistics); so does this loader.
  The norm is therefore told from the affine weights (batch norm has ``weight``/``bias``, the repo's
  instance norm has none) and the conv biases, not from ``running_mean``.
"""
from __future__ import annotations

import torch

from gandid.checkpoints import check_state_dict, to_float
from gandid.errors import CheckpointError, ConfigError
from gandid.model import InstanceNorm

from .networks import UNET_NAMES, ResnetGenerator, UnetGenerator
from .norms import BATCHNORM_MODES


def _unet_prefix(k: int) -> str:
    """Key prefix of U-Net block k (1 = outermost)."""
    return "model." + ("model.1." + "model.3." * (k - 2) if k > 1 else "")


def detect(state: dict) -> dict | None:
    """The architecture of a generator state dict in the repository's layout, or None: {"arch", "depth" or
    "blocks", "ngf", "input_nc", "output_nc", "norm", "dropout"}."""
    def shape(key):
        v = state.get(key)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    first = shape("model.model.0.weight")
    if first is not None and len(first) == 4 and first[2:] == (4, 4):
        depth = 1
        while shape(_unet_prefix(depth + 1) + "model.1.weight") is not None:
            depth += 1
        last = shape("model.model.3.weight")  # the outermost transposed conv: (2 ngf, output_nc, 4, 4)
        if depth < 2 or last is None or len(last) != 4:
            return None
        inner = _unet_prefix(2) + "model."
        norm = "batch" if inner + "2.weight" in state else "instance" if inner + "1.bias" in state else "none"
        return {"arch": "unet", "depth": depth, "ngf": first[0], "input_nc": first[1], "output_nc": last[1],
                "norm": norm, "dropout": None}
    first = shape("model.1.weight")
    if first is None or len(first) != 4 or first[2:] != (7, 7) or "model.10.conv_block.1.weight" not in state:
        return None
    blocks = 0
    while f"model.{10 + blocks}.conv_block.1.weight" in state:
        blocks += 1
    last = shape(f"model.{17 + blocks}.weight")  # the final 7x7 conv: (output_nc, ngf, 7, 7)
    if last is None or len(last) != 4:
        return None
    norm = "batch" if "model.2.weight" in state else "instance" if "model.1.bias" in state else "none"
    return {"arch": "resnet", "blocks": blocks, "ngf": first[0], "input_nc": first[1], "output_nc": last[0],
            "norm": norm, "dropout": len(shape("model.10.conv_block.6.weight") or ()) == 4}  # a conv, not a norm


def _strip_module(state: dict) -> tuple[dict, bool]:
    """Keys without DataParallel's ``module.`` prefix (when every key has it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}, True
    return state, False


def build(state: dict, *, size: int | None = None, batchnorm: str = "eval", source: str = "state dict"):
    """A generator from a state dict in the repository's layout (``latest_net_G.pth``)."""
    if batchnorm not in BATCHNORM_MODES:
        raise ConfigError(f"pix2pix: batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")
    state, stripped = _strip_module(dict(state))
    found = detect(state)
    if found is None:
        raise CheckpointError(f"{source}: not a pytorch-CycleGAN-and-pix2pix generator (expected a U-Net's "
                              "'model.model.0.weight' (ngf, in, 4, 4) or a ResNet generator's 'model.1.weight' "
                              "(ngf, in, 7, 7) and 'model.10.conv_block.1.weight'); its first keys are "
                              f"{sorted(state)[:8]}")
    for what, n in (("input", found["input_nc"]), ("output", found["output_nc"])):
        if n not in (1, 3):
            raise CheckpointError(f"{source}: a generator with {n} {what} channels; gandid reads images with 1 or 3 "
                                  "channels (RGB or grayscale)")
    norm = found["norm"]
    if found["arch"] == "unet":
        gen = UnetGenerator(found["input_nc"], found["output_nc"], found["depth"], found["ngf"], norm, batchnorm, size)
    else:
        gen = ResnetGenerator(found["input_nc"], found["output_nc"], found["blocks"], found["ngf"], norm, batchnorm,
                              found["dropout"], size)
    what = f"pix2pix {gen.name} generator ({norm} norm, {source})"
    expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    # __patch_instance_norm_state_dict: InstanceNorm buffers of pre-0.4 files, never used, are dropped
    norm_prefixes = {name + "." for name, module in gen.named_modules() if isinstance(module, InstanceNorm)}
    ignored = [k for k in state if k not in expected and k.rsplit(".", 1)[0] + "." in norm_prefixes
               and k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")]
    state = {k: v for k, v in state.items() if k not in ignored}
    # files written before PyTorch 0.4.1 have no num_batches_tracked (a counter gandid never reads)
    added = [k for k in expected if k.endswith(".num_batches_tracked") and k not in state]
    for k in added:
        state[k] = torch.tensor(0, dtype=torch.long)
    counters = [k for k in expected if k.endswith(".num_batches_tracked")]
    check_state_dict(state, expected, what, integer_keys=counters)
    state, dtypes = to_float(state)
    gen.load_state_dict(state, strict=True)
    gen.weights_info = {"file": source, **dtypes, "architecture": gen.name, "norm": norm, "ngf": found["ngf"],
                        "input_nc": found["input_nc"], "output_nc": found["output_nc"], "size": gen.size,
                        "batchnorm": batchnorm if norm == "batch" else None,
                        "module_prefix_stripped": stripped, "ignored_keys": len(ignored)}
    if found["dropout"] is not None:
        gen.weights_info["dropout"] = found["dropout"]
    return gen.eval()


def recognise(peek) -> str | None:
    """A generator state dict in pytorch-CycleGAN-and-pix2pix's layout (``latest_net_G.pth``)."""
    data = peek.data if isinstance(peek.data, dict) else None
    if not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        return None
    found = detect(_strip_module(data)[0])
    if found is None:
        return None
    arch = (UNET_NAMES.get(found["depth"], f"unet with {found['depth']} downsamplings") if found["arch"] == "unet"
            else f"resnet_{found['blocks']}blocks")
    return f"a pytorch-CycleGAN-and-pix2pix generator ({arch}, {found['norm']} norm)"
