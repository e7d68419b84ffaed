"""The toyroom world (version 2): procedurally rendered conference-room-like scenes with an exact label
per pixel.

``render(seed, size=64) -> (image (3, S, S) float32 in [-1, 1], labels (S, S) int64)``, deterministic
from the seed. A back wall between a ceiling and a flat, untextured floor drawn in perspective; on the
back wall windows (often framed by curtains), paintings and a door compete for space; one or two lamps
hang from the ceiling; a big table stands in the foreground with chairs around it (those behind it
drawn first, those in front over it); often a plant in a front corner. Made for what a small GAN can
learn on a CPU: few, large objects (each covers a few percent of the image where present) in
saturated colours that tell the classes apart (red chairs, dark wooden table, orange-brown door, sky-blue
windows, violet curtains, yellow lamps, green plants, gold-framed paintings), varied within each class.
Version 1 (many small objects in muted colours) is in the project's history.
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
    x0, x1 = rng.uniform(4, 10) * s, size - rng.uniform(4, 10) * s
    top, bottom = rng.uniform(7, 12) * s, rng.uniform(30, 36) * s
    y, x = c.y, c.x
    ceil_line = np.where(x < x0, top * x / x0, np.where(x > x1, top * (size - x) / (size - x1), top))
    floor_line = np.where(x < x0, size - (size - bottom) * x / x0,
                          np.where(x > x1, size - (size - bottom) * (size - x) / (size - x1), bottom))
    wall = _hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.2), rng.uniform(0.7, 0.9))
    c.paint(np.ones((size, size), bool), wall, "wall", texture=0.01)
    side = (x < x0) | (x > x1)
    c.paint(side & (y >= ceil_line) & (y < floor_line), wall * 0.85, "wall", texture=0.01)
    c.paint(y < ceil_line, _hsv(rng.uniform(0, 1), rng.uniform(0, 0.05), rng.uniform(0.88, 0.97)), "ceiling", 0.01)
    # a flat floor (no texture that could pass for objects), grey to blue-grey to green-grey
    c.paint(y >= floor_line, _hsv(rng.uniform(0.3, 0.65), rng.uniform(0.05, 0.25), rng.uniform(0.35, 0.55)),
            "floor", texture=0.0)

    # Back-wall items compete for space: windows (with curtains), paintings, a door.
    wall_h = bottom - top
    items = [("window", rng.uniform(12, 16) * s) for _ in range(rng.integers(0, 3))]
    items += [("painting", rng.uniform(10, 14) * s) for _ in range(rng.integers(0, 3))]
    if rng.random() < 0.5:
        items.append(("door", rng.uniform(9, 12) * s))
    rng.shuffle(items)
    margin = 3.5 * s  # a window's curtains hang beside it
    spots = _place(rng, x0 + 1, x1 - 1, [w + (2 * margin if k == "window" else 0) for k, w in items], 2 * s)
    for (kind, w), spot in zip(items, spots):
        if spot is None:
            continue
        a = spot[0] + (margin if kind == "window" else 0)
        if kind == "window":
            wy0, wy1 = top + wall_h * rng.uniform(0.1, 0.2), top + wall_h * rng.uniform(0.72, 0.85)
            pane = c.rect(a, wy0, a + w, wy1)
            c.paint(pane, _hsv(rng.uniform(0.53, 0.6), rng.uniform(0.35, 0.6), rng.uniform(0.85, 1.0)), "window", 0.02)
            frame = pane & ((np.abs(x - (a + w / 2)) < 0.7 * s) | (np.abs(y - (wy0 + wy1) / 2) < 0.7 * s)
                            | (x < a + 1 * s) | (x >= a + w - 1 * s) | (y < wy0 + 1 * s) | (y >= wy1 - 1 * s))
            c.paint(frame, np.array([0.95, 0.95, 0.95], np.float32), "window", texture=0.01)
            if rng.random() < 0.6:
                curtain = _hsv(rng.uniform(0.72, 0.85), rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.7))
                cy0, cy1 = top + 1 * s, wy1 + 3 * s
                c.paint(c.rect(a - margin, cy0, a + 1 * s, cy1), curtain, "curtain", texture=0.02)
                c.paint(c.rect(a + w - 1 * s, cy0, a + w + margin, cy1), curtain, "curtain", texture=0.02)
        elif kind == "painting":
            ph = rng.uniform(8, 11) * s
            py0 = top + (wall_h - ph) * rng.uniform(0.25, 0.45)
            c.paint(c.rect(a, py0, a + w, py0 + ph), _hsv(rng.uniform(0.11, 0.13), rng.uniform(0.6, 0.8),
                                                          rng.uniform(0.55, 0.75)), "painting", 0.02)  # gold frame
            inner = (a + 1.2 * s, py0 + 1.2 * s, a + w - 1.2 * s, py0 + ph - 1.2 * s)
            horizon = inner[1] + (inner[3] - inner[1]) * rng.uniform(0.4, 0.65)  # a landscape: sky over land
            c.paint(c.rect(inner[0], inner[1], inner[2], horizon), _hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.9),
                                                                        rng.uniform(0.6, 0.95)), "painting", 0.03)
            c.paint(c.rect(inner[0], horizon, inner[2], inner[3]), _hsv(rng.uniform(0, 1), rng.uniform(0.6, 1),
                                                                        rng.uniform(0.25, 0.6)), "painting", 0.03)
        else:
            dy0 = top + wall_h * rng.uniform(0.12, 0.22)
            c.paint(c.rect(a, dy0, a + w, bottom + 1 * s), _hsv(rng.uniform(0.05, 0.08), rng.uniform(0.55, 0.8),
                                                                rng.uniform(0.5, 0.7)), "door", 0.02)
            knob = c.ellipse(a + w * 0.8, dy0 + (bottom - dy0) * 0.55, 1.0 * s, 1.0 * s)
            c.paint(knob, np.array([0.95, 0.85, 0.2], np.float32), "door", 0.01)

    # One or two lamps hang from the ceiling: a cord and a wide yellow shade.
    lamp_colour = _hsv(rng.uniform(0.13, 0.16), rng.uniform(0.7, 0.9), rng.uniform(0.95, 1.0))
    lamps = _place(rng, 6 * s, size - 6 * s, [rng.uniform(12, 16) * s for _ in range(rng.integers(1, 3))], 5 * s)
    for spot in lamps:
        if spot is None:
            continue
        lx, lw = (spot[0] + spot[1]) / 2, spot[1] - spot[0]
        ly = rng.uniform(2 * s, top)
        c.paint(c.rect(lx - 0.6 * s, 0, lx + 0.6 * s, ly), np.array([0.3, 0.3, 0.3], np.float32), "lamp", 0.01)
        shade_h = rng.uniform(5, 7) * s
        width_at = (lw / 2) * (0.55 + 0.45 * (y - ly) / shade_h)  # a trapezoid, wider at the bottom
        c.paint((y >= ly) & (y < ly + shade_h) & (np.abs(x - lx) <= width_at), lamp_colour, "lamp", 0.02)

    # A big table in the foreground, chairs around it: behind it first, then the table, then in front.
    tx, ty = size / 2 + rng.uniform(-5, 5) * s, bottom + (size - bottom) * rng.uniform(0.35, 0.5)
    tw, th = rng.uniform(26, 36) * s, rng.uniform(7, 10) * s
    table_colour = _hsv(rng.uniform(0.03, 0.07), rng.uniform(0.5, 0.8), rng.uniform(0.22, 0.35))
    chair_colour = _hsv(rng.uniform(-0.04, 0.02) % 1, rng.uniform(0.7, 0.95), rng.uniform(0.55, 0.85))
    chairs = []
    for _ in range(rng.integers(2, 6)):
        where = rng.choice(["back", "front", "left", "right"])
        if where in ("back", "front"):
            cx = tx + rng.uniform(-tw / 2 + 4 * s, tw / 2 - 4 * s)
            cy = ty - th * 0.35 if where == "back" else ty + th * 0.9
        else:
            cx = tx + (tw / 2 + 2 * s) * (-1 if where == "left" else 1)
            cy = ty + rng.uniform(0, th / 2)
        chairs.append((where, cx, cy))

    def chair(cx, cy):
        cw = 7 * s
        c.paint(c.rect(cx - cw / 2, cy - 8 * s, cx + cw / 2, cy), chair_colour * 0.85, "chair", 0.02)  # back
        c.paint(c.rect(cx - cw / 2 - 1 * s, cy - 1 * s, cx + cw / 2 + 1 * s, cy + 1.5 * s), chair_colour,
                "chair", 0.02)  # seat
        for leg in (cx - cw / 2 - 0.5 * s, cx + cw / 2 - 0.7 * s):
            c.paint(c.rect(leg, cy + 1.5 * s, leg + 1.2 * s, cy + 5 * s), chair_colour * 0.6, "chair", 0.02)

    for where, cx, cy in chairs:
        if where == "back":
            chair(cx, cy)
    for leg in (tx - tw / 2 + 2 * s, tx + tw / 2 - 4 * s, tx - tw / 4, tx + tw / 4 - 2 * s):
        c.paint(c.rect(leg, ty, leg + 2 * s, ty + th / 2 + 6 * s), table_colour * 0.7, "table", 0.02)
    c.paint(c.ellipse(tx, ty, tw / 2, th / 2), table_colour, "table", 0.02)
    c.paint(c.ellipse(tx, ty, tw / 2, th / 2) & (y > ty + th / 4), table_colour * 0.8, "table", 0.02)  # front edge
    for where, cx, cy in chairs:
        if where != "back":
            chair(cx, cy)
    if rng.random() < 0.55:  # a plant in a front corner: a terracotta pot under green leaves
        px = (rng.uniform(5, 9) if rng.random() < 0.5 else rng.uniform(55, 59)) * s
        py = rng.uniform(50, 56) * s
        c.paint(c.rect(px - 3.5 * s, py, px + 3.5 * s, py + 6 * s), _hsv(0.04, 0.7, rng.uniform(0.5, 0.65)), "plant",
                0.02)
        c.paint(c.ellipse(px, py - 5 * s, rng.uniform(5, 6.5) * s, rng.uniform(6.5, 8) * s),
                _hsv(rng.uniform(0.27, 0.38), rng.uniform(0.6, 0.9), rng.uniform(0.35, 0.65)), "plant", 0.04)

    # Lighting: a global level and a soft gradient from a random side.
    gx, gy = rng.uniform(-1, 1, 2)
    light = rng.uniform(0.85, 1.1) * (1 + 0.1 * (gx * (x / size - 0.5) + gy * (y / size - 0.5)))
    rgb = np.clip(c.rgb * light[..., None], 0, 1)
    return (rgb.transpose(2, 0, 1) * 2 - 1).astype(np.float32), c.lab


def render_batch(seeds, size: int = 64):
    images, labels = zip(*(render(int(s), size) for s in seeds))
    return np.stack(images), np.stack(labels)
