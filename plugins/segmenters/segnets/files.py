"""The encoder and decoder files of a CSAIL scene-parsing segmenter: found in a folder, read, checked against
a layout, and described for run.json.

Both families (CSAILVision/gandissect ``netdissect/upsegmodel/`` and CSAILVision/semantic-segmentation-
pytorch ``mit_semseg/models/``) save an encoder and a decoder as two plain state dicts
(``encoder_epoch_N.pth``, ``decoder_epoch_N.pth``; ``checkpoint()`` in semantic-segmentation-pytorch's
train.py saves ``net_encoder.state_dict()`` and ``net_decoder.state_dict()``).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError


def find_checkpoints(folder, epoch: int | None, what: str) -> tuple[Path, Path, int]:
    """The ``encoder_epoch_N`` / ``decoder_epoch_N`` pair (``.pth`` or ``.safetensors``) in ``folder``:
    epoch ``epoch``, or the last epoch that has both files (netdissect's ``load_segmentation_model``
    also picks the last epoch available)."""
    if folder is None:
        raise CheckpointError(f"{what} needs a weights folder: give --seg-weights FOLDER (the folder holding "
                              "encoder_epoch_N.pth and decoder_epoch_N.pth)")
    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(f"{what}: --seg-weights {str(folder)!r} is a file; give the folder that holds "
                              "encoder_epoch_N.pth and decoder_epoch_N.pth")
    if not folder.is_dir():
        raise CheckpointError(f"{what}: weights folder {str(folder)!r} does not exist")
    found: dict[str, dict[int, Path]] = {"encoder": {}, "decoder": {}}
    for path in folder.iterdir():
        m = re.fullmatch(r"(encoder|decoder)_epoch_(\d+)\.(pth|safetensors)", path.name)
        if m:
            found[m.group(1)][int(m.group(2))] = path
    listing = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    if epoch is not None:
        for part in ("encoder", "decoder"):
            if epoch not in found[part]:
                raise CheckpointError(f"{what}: {folder} has no {part}_epoch_{epoch}.pth (it holds: {listing})")
        return found["encoder"][epoch], found["decoder"][epoch], epoch
    for part in ("encoder", "decoder"):
        if not found[part]:
            raise CheckpointError(f"{what}: {folder} has no {part} checkpoint {part}_epoch_N.pth "
                                  f"(it holds: {listing})")
    both = sorted(set(found["encoder"]) & set(found["decoder"]))
    if not both:
        raise CheckpointError(f"{what}: the encoder and decoder files in {folder} are from different epochs "
                              f"(encoder {sorted(found['encoder'])}, decoder {sorted(found['decoder'])}); "
                              "they must be a pair")
    epoch = both[-1]
    return found["encoder"][epoch], found["decoder"][epoch], epoch


def load_plain(path: Path) -> dict:
    """A checkpoint's tensors, without BN's ``num_batches_tracked`` counters (absent from files written
    before PyTorch 0.4.1 and meaningless in eval mode) and without a ``module.`` prefix on every key
    (a state dict saved from ``nn.DataParallel``)."""
    state = load_state_dict_file(path)
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def checked(state: dict, layout: dict, what: str) -> tuple[dict, dict]:
    """``state`` checked against ``layout`` (every key, every shape, floating point) and converted to
    float32 (float16 files run in float32); returns it and the dtype record."""
    check_state_dict(state, layout, what)
    return to_float(state)


def stored_dtypes(*infos: dict) -> dict:
    """The encoder's and decoder's ``to_float`` records merged: {dtype name: tensor count}."""
    total: dict = {}
    for info in infos:
        for name, count in info["stored_dtypes"].items():
            total[name] = total.get(name, 0) + count
    return total


def weights_info(folder: Path, *, encoder: Path, decoder: Path, labels: Path, epoch, enc_info: dict,
                 dec_info: dict, dtype: torch.dtype, div: int, **arch) -> dict:
    """What an encoder/decoder segmenter loaded, for run.json: its files, epoch, ``arch`` entries, the
    stored dtypes (tensor counts), the dtype used, and the width divisor when the file is narrowed."""
    info = {"folder": str(folder), "encoder": str(encoder), "decoder": str(decoder), "labels": str(labels),
            "epoch": epoch, **arch, "stored_dtypes": stored_dtypes(enc_info, dec_info),
            "loaded_as": str(dtype).removeprefix("torch.")}
    if div != 1:
        info["width_divisor"] = div
    return info


def width_divisor(state: dict, key: str, published: int, path: Path, what: str) -> int:
    """``div`` such that the file's width at ``key`` (dim 0) is ``published / div``."""
    if key not in state:
        return 1  # the layout check names the missing key
    have = int(state[key].shape[0])
    if have <= 0 or published % have:
        raise CheckpointError(f"{what} ({path}): {key} has {have} output channels; the published model has "
                              f"{published} (or {published} divided by a whole number at reduced width)")
    return published // have
