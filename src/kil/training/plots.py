"""Training curves as PNG (matplotlib-free: PIL draws the axes and the line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def loss_curve(values: list[float], out: Path, title: str, size: tuple[int, int] = (640, 360)) -> Path:
    """Write a PNG of `values` per step (raw in grey, a moving average in blue)."""
    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    y = np.asarray(values, float)
    window = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(window) / window, mode="valid") if len(y) >= window else y
    lo, hi = float(np.min(y)), float(np.max(y))
    hi = hi if hi > lo else lo + 1.0

    def point(i: float, v: float) -> tuple[float, float]:
        return (left + (w - left - right) * i / max(len(y) - 1, 1), top + (h - top - bottom) * (hi - v) / (hi - lo))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.line([point(i, v) for i, v in enumerate(y)], fill=(190, 190, 190), width=1)
    offset = (window - 1) / 2
    draw.line([point(i + offset, v) for i, v in enumerate(smooth)], fill=(31, 119, 180), width=2)
    draw.text((left, 8), title, fill="black")
    draw.text((4, top - 4), f"{hi:.3g}", fill="black")
    draw.text((4, h - bottom - 8), f"{lo:.3g}", fill="black")
    draw.text((left, h - bottom + 6), "0", fill="black")
    draw.text((w - right - 40, h - bottom + 6), f"step {len(y) - 1}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
