"""A generator whose unit-to-object mapping is known by construction, and a segmenter that reads it.

Layer ``feat`` (13 units, 8x8) is computed directly from z; the pixel norm ``paint.norm`` reads it,
and ``paint`` turns the normalised units into a 16x16 image:
- unit 0 paints red in the top-left square; unit 3 lays a faint (0.3) green under it;
- unit 2 paints yellow (red + green channels) in the bottom-left square, with nothing beneath;
- units 4..11 each paint blue (amplitude 1) in the top-right square: the class is redundant (any one
  inserted alone paints some blue, ablating one or two leaves it);
- unit 12 is a constant background (1.0 everywhere), so β never collapses to eps.
Objects are present when z[0] (red), z[1] (blue), z[2] (yellow) > 0.

With red present β at its pixels is ~0.9, so the green underpaint normalises to ~0.34 (below the
segmenter's 0.6); ablate unit 0 and β drops to ~0.29, the underpaint becomes ~1.03 and green
appears: pixel norm in-paints green where red was (type 2). Ablating one or two blue units leaves
blue (type 1). Ablating unit 2 leaves background (disentangled).
"""
import torch
from torch import nn

from gandid.model import LayerInfo, NormSite, PixelNorm, normal_rows

LABELS = ["background", "red", "green", "blue", "yellow"]
RED, GREEN, BLUE, YELLOW = 1, 2, 3, 4
SQUARES = {"red": (slice(0, 4), slice(0, 4)), "blue": (slice(0, 4), slice(4, 8)),
           "yellow": (slice(4, 8), slice(0, 4))}
THRESHOLD = 0.6


class Features(nn.Module):
    def forward(self, z):
        n = len(z)
        x = torch.zeros(n, 13, 8, 8, dtype=z.dtype)
        present = z[:, :3] > 0
        amp = 2.5 + 0.5 * torch.tanh(z[:, 3:6])
        ry, rx = SQUARES["red"]
        x[:, 0, ry, rx] = (amp[:, 0] * present[:, 0]).view(n, 1, 1)
        x[:, 3, ry, rx] = 0.3 * present[:, 0].to(z.dtype).view(n, 1, 1)
        yy, yx = SQUARES["yellow"]
        x[:, 2, yy, yx] = (amp[:, 2] * present[:, 2]).view(n, 1, 1)
        by, bx = SQUARES["blue"]
        x[:, 4:12, by, bx] = present[:, 1].to(z.dtype).view(n, 1, 1, 1)
        x[:, 12] = 1.0
        return x


class Paint(nn.Module):
    def forward(self, x):
        red = x[:, 0] + x[:, 2]
        green = x[:, 3] + x[:, 2]
        blue = x[:, 4:12].sum(1) / 4
        img = torch.stack([red, green, blue], 1)
        return nn.functional.interpolate(img, scale_factor=2, mode="nearest")


class GroundTruthGenerator(nn.Module):
    z_dim, resolution = 6, 16

    def __init__(self):
        super().__init__()
        self.feat = Features()
        self.norm = PixelNorm()
        self.paint = Paint()
        self.layers = [LayerInfo("feat", 13, (8, 8))]
        self.norm_sites = [NormSite("paint.norm", "pixelnorm", "feat")]
        self.default_layer = "feat"

    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim)

    def layer_module(self, name):
        if name != "feat":
            from gandid.errors import UnknownNameError

            raise UnknownNameError("layer", name, ["feat"])
        return self.feat

    def norm_module(self, site):
        return self.norm

    def forward(self, z):
        return self.forward_from("feat", self.feat(z), z)

    def forward_from(self, layer, x, z):
        # images here carry evidence values (not clamped to [-1, 1]) so the segmenter reads them exactly
        return self.paint(self.norm(x))


class GroundTruthSegmenter:
    """yellow if red and green evidence are both above 0.6, else red, green, blue, background."""

    labels = LABELS

    def segment(self, images):
        r, g, b = (images[:, i] > THRESHOLD for i in range(3))
        out = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.long)
        out[b] = BLUE
        out[g] = GREEN
        out[r] = RED
        out[r & g] = YELLOW
        return out

    def class_scores(self, images, c):
        r, g, b = (torch.sigmoid((images[:, i] - THRESHOLD) * 10) for i in range(3))
        soft = {0: (1 - r) * (1 - g) * (1 - b), RED: r * (1 - g), GREEN: g * (1 - r), BLUE: b * (1 - r) * (1 - g),
                YELLOW: r * g}[c]
        return soft.flatten(1).mean(1)
