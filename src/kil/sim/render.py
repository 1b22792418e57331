"""Pictures of the simulated rig: a frame with its true keypoints drawn, and depth beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kil.data.preview import depth_to_rgb
from kil.geometry import project
from kil.perception.draw import draw_keypoints


def keypoint_overlay(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_base_camera: np.ndarray,
                     names: list[str], xyz: np.ndarray, out: Path) -> Path:
    """Write a PNG: the colour frame with the named points (base frame xyz) projected, and
    the depth image beside it."""
    uv, z = project(K, T_base_camera, xyz)
    uv[z <= 0] = np.nan  # behind the camera
    sheet = Image.new("RGB", (rgb.shape[1] * 2, rgb.shape[0]))
    sheet.paste(Image.fromarray(draw_keypoints(rgb, uv, names)), (0, 0))
    sheet.paste(Image.fromarray(depth_to_rgb(depth)), (rgb.shape[1], 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
