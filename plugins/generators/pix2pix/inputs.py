"""The input images a pix2pix generator translates (a sample's "latent"), read as the repository's test-time
loader reads them.

Facts read from junyanz/pytorch-CycleGAN-and-pix2pix:

- ``data/base_dataset.py`` (``get_transform``) and ``options/test_options.py``: at test time
  ``load_size = crop_size`` (default 256), so ``resize_and_crop`` is a plain bicubic resize to
  crop_size x crop_size (the aspect ratio is not kept) and no flip; ``transforms.Grayscale(1)`` first
  when the generator reads one channel; ``ToTensor`` then ``Normalize(0.5, 0.5)``: values in [-1, 1].
  Files are opened with ``Image.open(path).convert('RGB')``; an aligned (pix2pix) dataset holds A|B side
  by side and ``direction`` picks the half (``data/aligned_dataset.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from gandid.errors import ConfigError

DIRECTIONS = ("AtoB", "BtoA")
ORDERS = ("shuffled", "sorted")
# data/image_folder.py's IMG_EXTENSIONS (any case), and webp
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")
CACHE_BYTES = 256 << 20  # decoded, resized inputs kept (uint8), least recently used dropped first


class InputFolder:
    """The images a pix2pix generator translates, one per sample.

    Files: every image (``IMAGE_SUFFIXES``, any case) in ``folder`` and its subfolders, hidden ones
    excepted, sorted by relative path. Sample i of seed s is file ``order_s[i mod M]`` (M files):
    ``order = "shuffled"`` (default) a permutation of the M files drawn from s, so the first M samples
    are M different images and another seed takes another subset first; ``"sorted"`` the sorted order
    for every seed. Each file is read as the repository's test-time loader reads it (module docstring):
    RGB (or grayscale for a one-channel generator), the A or B half for an aligned pair, bicubic
    resize to size x size, values in [-1, 1]."""

    def __init__(self, folder, size: int, channels: int, direction: str | None = None, order: str = "shuffled"):
        if order not in ORDERS:
            raise ConfigError(f"pix2pix: order must be one of {', '.join(ORDERS)}, got {order!r}")
        if direction is not None and direction not in DIRECTIONS:
            raise ConfigError(f"pix2pix: direction must be AtoB or BtoA (an aligned A|B pair per file: its left or "
                              f"right half) or left out (the whole file is the input), got {direction!r}")
        path = Path(folder)
        if not path.exists():
            raise ConfigError(f"pix2pix: the inputs folder {str(path)!r} does not exist (inputs=DIR: the images "
                              "the generator translates)")
        if not path.is_dir():
            raise ConfigError(f"pix2pix: inputs={str(path)!r} is a file; give the folder that holds the input images")
        files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise ConfigError(f"pix2pix: the inputs folder {str(path)!r} holds no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        self.folder, self.files, self.size, self.channels = path, files, size, channels
        self.direction, self.order = direction, order
        self._orders: dict[int, torch.Tensor] = {}
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = max(1, CACHE_BYTES // (channels * size * size))

    def __len__(self):
        return len(self.files)

    def index(self, seed: int, i: int) -> int:
        """The file index of sample i of seed ``seed``."""
        m = len(self.files)
        if self.order == "sorted":
            return i % m
        if seed not in self._orders:
            # the same odd multiplier as gandid.model.normal_rows keeps neighbouring seeds apart
            g = torch.Generator().manual_seed((int(seed) * 0x9E3779B97F4A7C15 + 0x70697832) % (2 ** 63 - 1))
            self._orders[seed] = torch.randperm(m, generator=g)
        return int(self._orders[seed][i % m])

    def file(self, seed: int, i: int) -> str:
        """The relative path of sample i's input image."""
        return self.files[self.index(seed, i)]

    def load(self, index: int) -> torch.Tensor:
        """File ``index`` as (C, S, S) float32 in [-1, 1]."""
        if index in self._cache:
            self._cache.move_to_end(index)
            data = self._cache[index]
        else:
            data = self._read(index)
            self._cache[index] = data
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        # transforms.ToTensor then Normalize((0.5,) * C, (0.5,) * C)
        return data.float().div(255).sub(0.5).div(0.5)

    def _read(self, index: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        name = self.files[index]
        try:
            with Image.open(self.folder / name) as opened:
                img = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ConfigError(f"pix2pix: cannot read input image {str(self.folder / name)!r} ({exc})") from None
        if self.direction is not None:  # data/aligned_dataset.py: AB split down the middle
            w, h = img.size
            half = w // 2
            img = img.crop((0, 0, half, h)) if self.direction == "AtoB" else img.crop((half, 0, w, h))
        if self.channels == 1:
            img = img.convert("L")  # transforms.Grayscale(1), before the resize as in get_transform
        img = img.resize((self.size, self.size), Image.BICUBIC)
        raw = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return raw.view(self.size, self.size, self.channels).permute(2, 0, 1).contiguous()
