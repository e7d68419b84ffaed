"""The pictures `gandid serve` sends: label colours, images as PNG data URLs, outlines and heat maps."""
from __future__ import annotations

import base64
import colorsys
import io

import torch
import torch.nn.functional as F


def palette(n: int) -> list[list[int]]:
    """n distinct RGB colours (0..255): label 0 dark grey, then hues a golden angle apart."""
    colours = [[40, 40, 40]]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 if i % 2 else 0.9, 0.95)
        colours.append([round(255 * r), round(255 * g), round(255 * b)])
    return colours[:n]


def png_data_url(rgb: torch.Tensor) -> str:
    """(3, H, W) uint8 -> a PNG data URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb.permute(1, 2, 0).contiguous().cpu().numpy()).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> uint8."""
    return ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def eroded(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (H, W) mask shrunk by one pixel (3x3 neighbourhood): mask minus it is the outline."""
    padded = F.pad(mask.float()[None, None], (1, 1, 1, 1), value=0.0)
    kept = -F.max_pool2d(-padded, kernel_size=3, stride=1)  # a 3x3 minimum
    return kept[0, 0] > 0.5


def heat(magnitude: torch.Tensor) -> torch.Tensor:
    """(H, W) >= 0 -> (3, H, W) uint8, black to yellow, scaled to the largest value."""
    scaled = magnitude / magnitude.max().clamp_min(1e-12)
    rgb = torch.stack([scaled.clamp(0, 1), (scaled * 0.85).clamp(0, 1), (scaled - 0.7).clamp(0, 1)])
    return (rgb * 255).round().to(torch.uint8)
