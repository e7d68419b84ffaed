"""The toyroom segmenter: a small U-Net trained on toyroom renders (see train.py and MODEL_CARD.md)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .world import LABELS

WEIGHTS = Path(__file__).resolve().parent / "weights" / "segmenter.safetensors"


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Images (N, 3, H, W) in [-1, 1] -> class logits (N, classes, H, W); H, W divisible by 4."""

    def __init__(self, classes: int = len(LABELS), width: int = 32):
        super().__init__()
        self.enc1, self.enc2, self.mid = block(3, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def encode(self, x):
        """The encoder's three levels: (N, w, H, W), (N, 2w, H/2, W/2) and the bottleneck (N, 4w, H/4, W/4)."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return e1, e2, self.mid(F.max_pool2d(e2, 2))

    def forward(self, x):
        e1, e2, m = self.encode(x)
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


class ToyroomSegmenter:
    """gandid Segmenter: ``segment`` gives argmax labels, ``class_scores`` the mean softmax probability."""

    labels = LABELS
    categories = {name: "object" for name in LABELS}
    background = ("wall", "floor", "ceiling")  # what an ablated object uncovers, not what replaces it

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
        from gandid.errors import CheckpointError

        path = Path(weights) if weights else WEIGHTS
        if not path.exists():
            raise CheckpointError(f"toyroom segmenter weights not found at {path}; train them with "
                                  "`python -m gandid_plugins.worlds.toyroom.train segmenter`")
        self.net = UNet()
        state = load_state_dict_file(path)
        expected = self.net.state_dict()
        check_state_dict(state, {k: tuple(v.shape) for k, v in expected.items()}, f"toyroom segmenter ({path})",
                         integer_keys=[k for k, v in expected.items() if not v.is_floating_point()])
        state, self.weights_info = to_float(state)
        self.weights_info = {"file": str(path), **self.weights_info}
        self.net.load_state_dict(state)
        self.net.eval()
        self.to(device)

    def to(self, device):
        # channels_last: 1.4x faster on the 2-core CPU this was measured on (batch 64, 64 px)
        self.net.to(device, memory_format=torch.channels_last)
        return self

    def logits(self, images):
        return self.net(images.float().contiguous(memory_format=torch.channels_last))

    def segment(self, images):
        with torch.no_grad():
            return self.logits(images).argmax(1)

    def class_scores(self, images, c):
        return self.logits(images).softmax(1)[:, c].flatten(1).mean(1)
