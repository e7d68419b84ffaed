"""The toyroom world: procedurally rendered conference-room-like scenes with an exact label per pixel.

``render(seed, size=64) -> (image (3, S, S) float32 in [-1, 1], labels (S, S) int64)``, deterministic
from the seed. A back wall between a ceiling and a floor drawn in perspective; on the back wall
windows (often with curtains), paintings and a door compete for space; lamps hang from the ceiling;
a table stands on the floor with chairs spread around it (those behind it drawn first, those in front
over it); sometimes a plant in a corner. Colours, sizes, counts and lighting vary per scene.
"""
from __future__ import annotations

import numpy as np

LABELS = ["wall", "floor", "ceiling", "window", "painting", "door", "lamp", "table", "chair", "curtain", "plant"]
L = {name: i for i, name in enumerate(LABELS)}


def _hsv(h, s, v):
    """HSV in [0, 1] -> RGB in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


class Canvas:
    def __init__(self, size, rng):
        self.size, self.rng = size, rng
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.lab = np.zeros((size, size), np.int64)
        self.y, self.x = np.mgrid[0:size, 0:size].astype(np.float32)

    def paint(self, mask, colour, label, texture=0.03):
        noise = self.rng.normal(0, texture, (int(mask.sum()), 1)).astype(np.float32)
        self.rgb[mask] = np.clip(colour[None, :] + noise, 0, 1)
        self.lab[mask] = L[label]

    def rect(self, x0, y0, x1, y1):
        return (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)

    def ellipse(self, cx, cy, rx, ry):
        return ((self.x - cx) / max(rx, 0.5)) ** 2 + ((self.y - cy) / max(ry, 0.5)) ** 2 <= 1


def _place(rng, lo, hi, widths, gap):
    """Non-overlapping intervals of the given widths in [lo, hi), in random order; those that do not fit are dropped."""
    placed = []
    for w in widths:
        for _ in range(20):
            x0 = rng.uniform(lo, hi - w)
            if all(x0 + w + gap <= p[0] or x0 >= p[1] + gap for p in placed if p is not None):
                placed.append((x0, x0 + w))
                break
        else:
            placed.append(None)
    return placed


def render(seed: int, size: int = 64):
    rng = np.random.default_rng(seed)
    s = size / 64  # every length below is in 64-pixel units
    c = Canvas(size, rng)
    x0, x1 = rng.uniform(8, 18) * s, size - rng.uniform(8, 18) * s
    top, bottom = rng.uniform(10, 18) * s, rng.uniform(34, 42) * s
    y, x = c.y, c.x
    ceil_line = np.where(x < x0, top * x / x0, np.where(x > x1, top * (size - x) / (size - x1), top))
    floor_line = np.where(x < x0, size - (size - bottom) * x / x0,
                          np.where(x > x1, size - (size - bottom) * (size - x) / (size - x1), bottom))
    wall = _hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.35), rng.uniform(0.6, 0.9))
    c.paint(np.ones((size, size), bool), wall, "wall")
    side = (x < x0) | (x > x1)
    c.paint(side & (y >= ceil_line) & (y < floor_line), wall * 0.85, "wall")
    c.paint(y < ceil_line, _hsv(rng.uniform(0, 1), rng.uniform(0, 0.1), rng.uniform(0.8, 0.97)), "ceiling")
    floor_colour = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.55)) \
        if rng.random() < 0.6 else _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.5))
    c.paint(y >= floor_line, floor_colour, "floor", texture=0.05)

    # Back-wall items compete for space: windows (with curtains), paintings, a door.
    wall_h = bottom - top
    items = []
    for _ in range(rng.integers(0, 3)):
        items.append(("window", rng.uniform(9, 15) * s))
    for _ in range(rng.integers(0, 3)):
        items.append(("painting", rng.uniform(6, 11) * s))
    if rng.random() < 0.5:
        items.append(("door", rng.uniform(7, 10) * s))
    rng.shuffle(items)
    spots = _place(rng, x0 + 1, x1 - 1, [w + (4 * s if k == "window" else 0) for k, w in items], 1.5 * s)
    for (kind, w), spot in zip(items, spots):
        if spot is None:
            continue
        a = spot[0] + (2 * s if kind == "window" else 0)
        if kind == "window":
            wy0, wy1 = top + wall_h * rng.uniform(0.12, 0.25), top + wall_h * rng.uniform(0.65, 0.85)
            c.paint(c.rect(a, wy0, a + w, wy1), _hsv(rng.uniform(0.52, 0.62), rng.uniform(0.2, 0.6),
                                                     rng.uniform(0.75, 1.0)), "window", texture=0.06)
            frame = c.rect(a, wy0, a + w, wy1) & ((np.abs(x - (a + w / 2)) < 0.6 * s) | (np.abs(y - (wy0 + wy1) / 2)
                                                                                        < 0.6 * s))
            c.paint(frame, np.array([0.9, 0.9, 0.9], np.float32), "window", texture=0.01)
            if rng.random() < 0.6:
                curtain = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.7))
                cy0 = wy0 - 1.5 * s
                c.paint(c.rect(a - 2.5 * s, cy0, a + 1 * s, wy1 + 2 * s), curtain, "curtain", texture=0.04)
                c.paint(c.rect(a + w - 1 * s, cy0, a + w + 2.5 * s, wy1 + 2 * s), curtain, "curtain", texture=0.04)
        elif kind == "painting":
            py0 = top + wall_h * rng.uniform(0.2, 0.35)
            ph = w * rng.uniform(0.6, 1.0)
            c.paint(c.rect(a, py0, a + w, py0 + ph), np.array([0.25, 0.18, 0.1], np.float32), "painting", 0.02)
            for _ in range(rng.integers(2, 4)):  # the picture itself: a few colour blocks
                bx, by = rng.uniform(a + 1, a + w - 2), rng.uniform(py0 + 1, py0 + ph - 2)
                c.paint(c.rect(bx, by, min(a + w - 1, bx + rng.uniform(2, 5) * s), min(py0 + ph - 1, by + rng.uniform(2, 5)
                                                                                      * s)),
                        _hsv(rng.uniform(0, 1), rng.uniform(0.4, 1), rng.uniform(0.3, 1)), "painting", 0.05)
        else:
            dy0 = top + wall_h * rng.uniform(0.2, 0.35)
            c.paint(c.rect(a, dy0, a + w, bottom + 0.5), _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.3, 0.7),
                                                              rng.uniform(0.25, 0.6)), "door", 0.03)
            knob = c.ellipse(a + w * 0.8, dy0 + (bottom - dy0) * 0.55, 0.8 * s, 0.8 * s)
            c.paint(knob, np.array([0.85, 0.75, 0.3], np.float32), "door", 0.01)

    # Lamps hang from the ceiling.
    lamp_colour = _hsv(rng.uniform(0.1, 0.16), rng.uniform(0.1, 0.5), rng.uniform(0.85, 1.0))
    for _ in range(rng.integers(1, 4)):
        lx, lw = rng.uniform(10, 54) * s, rng.uniform(3, 6) * s
        ly = rng.uniform(1, max(2, top - 5 * s))
        c.paint(c.rect(lx - 0.4 * s, 0, lx + 0.4 * s, ly), np.array([0.3, 0.3, 0.3], np.float32), "lamp", 0.01)
        shade = c.ellipse(lx, ly + 1.5 * s, lw / 2, 1.6 * s)
        c.paint(shade, lamp_colour, "lamp", 0.02)

    # A table on the floor, chairs spread around it: behind it first, then the table, then in front.
    tx, ty = size / 2 + rng.uniform(-8, 8) * s, bottom + (size - bottom) * rng.uniform(0.35, 0.55)
    tw, th = rng.uniform(12, 20) * s, rng.uniform(3, 6) * s
    table_colour = _hsv(rng.uniform(0.04, 0.1), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6)) \
        if rng.random() < 0.7 else _hsv(rng.uniform(0, 1), rng.uniform(0, 0.2), rng.uniform(0.7, 0.95))
    chair_colour = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.7))
    chairs = []
    for _ in range(rng.integers(2, 7)):
        side = rng.choice(["back", "front", "left", "right"])
        if side in ("back", "front"):
            cx = tx + rng.uniform(-tw / 2 + 2 * s, tw / 2 - 2 * s)
            cy = ty - th * 0.9 if side == "back" else ty + th * 1.2
        else:
            cx = tx + (tw / 2 + 2 * s) * (-1 if side == "left" else 1)
            cy = ty + rng.uniform(-th / 2, th / 2)
        chairs.append((side, cx, cy))

    def chair(cx, cy):
        cw = 3.5 * s
        c.paint(c.rect(cx - cw / 2, cy - 4 * s, cx + cw / 2, cy), chair_colour * 0.85, "chair", 0.03)  # back
        c.paint(c.rect(cx - cw / 2 - 0.5 * s, cy - 0.5 * s, cx + cw / 2 + 0.5 * s, cy + 1.2 * s), chair_colour,
                "chair", 0.03)  # seat
        for lx in (cx - cw / 2, cx + cw / 2 - 0.7 * s):
            c.paint(c.rect(lx, cy + 1.2 * s, lx + 0.7 * s, cy + 3.2 * s), chair_colour * 0.6, "chair", 0.02)

    for side, cx, cy in chairs:
        if side == "back":
            chair(cx, cy)
    c.paint(c.ellipse(tx, ty, tw / 2, th / 2), table_colour, "table", 0.03)
    for lx in (tx - tw / 2 + 1.5 * s, tx + tw / 2 - 2.5 * s):
        c.paint(c.rect(lx, ty, lx + 1 * s, ty + th / 2 + 3 * s), table_colour * 0.7, "table", 0.02)
    for side, cx, cy in chairs:
        if side != "back":
            chair(cx, cy)
    if rng.random() < 0.4:  # a plant in a front corner
        px = rng.choice([rng.uniform(3, 9), rng.uniform(55, 61)]) * s
        py = rng.uniform(52, 58) * s
        c.paint(c.rect(px - 2 * s, py, px + 2 * s, py + 4 * s), np.array([0.45, 0.25, 0.12], np.float32), "plant")
        c.paint(c.ellipse(px, py - 3 * s, 3.5 * s, 4 * s), _hsv(rng.uniform(0.25, 0.4), rng.uniform(0.5, 0.9),
                                                               rng.uniform(0.3, 0.6)), "plant", 0.06)

    # Lighting: a global level and a soft gradient from a random side.
    gx, gy = rng.uniform(-1, 1, 2)
    light = rng.uniform(0.8, 1.15) * (1 + 0.15 * (gx * (x / size - 0.5) + gy * (y / size - 0.5)))
    rgb = np.clip(c.rgb * light[..., None], 0, 1)
    return (rgb.transpose(2, 0, 1) * 2 - 1).astype(np.float32), c.lab


def render_batch(seeds, size: int = 64):
    images, labels = zip(*(render(int(s), size) for s in seeds))
    return np.stack(images), np.stack(labels)
