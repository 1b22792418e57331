"""Keypoints drawn on camera images, for people (the annotated image topic, PNGs, videos)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Colour per keypoint index (matplotlib tab10), RGB in [0, 1]; RViz markers use the same.
PALETTE = np.array(
    [
        [0.12, 0.47, 0.71], [1.00, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.40, 0.74],
        [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.50, 0.50, 0.50], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81],
    ]
)


def colour(index: int) -> tuple[int, int, int]:
    r, g, b = (PALETTE[index % len(PALETTE)] * 255).round().astype(int)
    return int(r), int(g), int(b)


def draw_keypoints(
    rgb: np.ndarray,
    uv: np.ndarray,
    names: Sequence[str],
    visible: np.ndarray | None = None,
    score: np.ndarray | None = None,
    radius: int = 5,
) -> np.ndarray:
    """A copy of `rgb` (H, W, 3) uint8 with keypoints `uv` (N, 2) pixels drawn: a filled dot
    per visible keypoint in its index colour, a hollow one where not visible, and its name
    (the part after the last '/'), with the score when given."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image)
    visible = np.ones(len(names), bool) if visible is None else visible
    for i, (name, (u, v)) in enumerate(zip(names, np.asarray(uv, float))):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        c = colour(i)
        box = [u - radius, v - radius, u + radius, v + radius]
        if visible[i]:
            draw.ellipse(box, fill=c, outline=(255, 255, 255), width=1)
        else:
            draw.ellipse(box, outline=c, width=2)
        label = name.split("/")[-1] + (f" {score[i]:.2f}" if score is not None else "")
        draw.text((u + radius + 2, v - radius - 2), label, fill=c, stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(image)
