"""Pictures of the simulated rig: a frame with its true keypoints drawn, and depth beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kil.data.preview import depth_to_rgb
from kil.geometry import project


def keypoint_overlay(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_base_camera: np.ndarray,
                     names: list[str], xyz: np.ndarray, out: Path) -> Path:
    """Write a PNG: the colour frame with the named points (base frame xyz) projected, and
    the depth image beside it."""
    uv, z = project(K, T_base_camera, xyz)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for name, (u, v), depth_z in zip(names, uv, z):
        if depth_z <= 0:
            continue
        draw.ellipse([u - 4, v - 4, u + 4, v + 4], outline=(255, 255, 0), width=2)
        draw.text((u + 6, v - 6), name.split("/")[-1], fill=(255, 255, 0))
    sheet = Image.new("RGB", (rgb.shape[1] * 2, rgb.shape[0]))
    sheet.paste(image, (0, 0))
    sheet.paste(Image.fromarray(depth_to_rgb(depth)), (rgb.shape[1], 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
