"""3D lifting: keypoint pixels + depth + intrinsics + camera pose -> base-frame points.

Depth reads are robust: NaN, +-inf and zero (no reading) are ignored, a keypoint at a depth
edge takes the surface in front, and a pixel without a valid reading nearby (or on a wide
invalid seam between two surfaces) gives `visible=false` rather than a wrong point.
"""

from __future__ import annotations

import numpy as np

from kil.geometry import unproject


def depth_in_metres(depth: np.ndarray) -> np.ndarray:
    """(H, W) float32 metres with NaN where there is no reading.

    depth: (H, W) float metres (32FC1; NaN, +-inf and 0 invalid) or uint16 millimetres
    (16UC1; 0 invalid).
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected an (H, W) image, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        metres = depth.astype(np.float32) / 1000.0
    elif np.issubdtype(depth.dtype, np.floating):
        metres = depth.astype(np.float32, copy=True)
    else:
        raise ValueError(f"depth: expected float metres or uint16 millimetres, got dtype {depth.dtype}")
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


EDGE_GAP_M = 0.02  # depth readings further apart than this (or EDGE_GAP_REL of the depth) lie on different surfaces
EDGE_GAP_REL = 0.03
EDGE_RADIUS = 2  # pixels: readings this close on two surfaces make the keypoint an edge point (the front surface counts)


def surface_depth(values: np.ndarray, distances: np.ndarray) -> float:
    """The depth of the surface a pixel without a reading of its own belongs to, from the
    valid readings around it: `values` (M,) metres and their `distances` (M,) to the pixel.

    Readings split into surfaces at depth jumps (> EDGE_GAP_M and > EDGE_GAP_REL of the
    depth); the surface of the nearest reading counts, its median is the depth. When the
    nearest readings lie on different surfaces (a pixel on an invalid seam between an
    object and the background) the pixel belongs to neither for sure: NaN. Never a depth
    between two surfaces, which is a point in mid-air.
    """
    surface = _surface_labels(values)
    nearest = surface[distances <= distances.min() + 1e-9]
    if np.any(nearest != nearest[0]):
        return float("nan")
    return float(np.median(values[surface == nearest[0]]))


def _surface_labels(values: np.ndarray) -> np.ndarray:
    """(M,) surface index of each depth reading: readings split into surfaces at depth jumps
    (> EDGE_GAP_M and > EDGE_GAP_REL of the depth); 0 is the surface nearest the camera."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    jumps = np.diff(sorted_values) > np.maximum(EDGE_GAP_M, EDGE_GAP_REL * sorted_values[:-1])
    labels = np.empty(len(values), np.int64)
    labels[order] = np.concatenate([[0], np.cumsum(jumps)])
    return labels


def read_depth(depth: np.ndarray, uv: np.ndarray, radius: int = 3) -> np.ndarray:
    """Depth at each pixel, (N,) metres, NaN where none is valid within `radius` pixels.

    depth: (H, W) float metres (NaN, +-inf and <= 0 invalid); uv: (N, 2) pixels (u, v).

    - At a depth edge (the readings within EDGE_RADIUS pixels lie on two surfaces) the
      surface in front counts: a keypoint sits on an object, an object's silhouette is the
      surface in front of what lies behind it, and a match is only good to a pixel or two. Read
      naively, a block's far edge or a tray's rim lands on the table behind them.
    - Otherwise the centre pixel is used when valid, and a pixel without a reading takes
      the surface it belongs to from the smallest window (3x3, 5x5, ...) holding readings
      (`surface_depth`): NaN where it lies on a wider invalid seam between two surfaces.
    Never a depth between two surfaces, which is a point in mid-air.
    """
    H, W = depth.shape
    out = np.full(len(uv), np.nan, np.float32)
    for k, (u, v) in enumerate(np.asarray(uv, np.float64).reshape(-1, 2)):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        x, y = int(round(u)), int(round(v))
        if not (0 <= x < W and 0 <= y < H):
            continue
        if radius >= 1:
            e = min(EDGE_RADIUS, radius)
            near = depth[max(y - e, 0): y + e + 1, max(x - e, 0): x + e + 1]
            readings = near[np.isfinite(near) & (near > 0)]
            labels = _surface_labels(readings) if len(readings) else np.zeros(0, np.int64)
            if len(readings) and labels.max() > 0:  # an edge within a pixel: the surface in front
                out[k] = float(np.median(readings[labels == 0]))
                continue
        for r in range(radius + 1):
            y0, x0 = max(y - r, 0), max(x - r, 0)
            window = depth[y0: y + r + 1, x0: x + r + 1]
            valid = np.isfinite(window) & (window > 0)
            if valid.any():
                rows, cols = np.nonzero(valid)
                distances = np.hypot(rows + y0 - y, cols + x0 - x)
                out[k] = surface_depth(window[valid], distances)
                break
    return out


def lift(
    uv: np.ndarray, depth: np.ndarray, K: np.ndarray, T_base_camera: np.ndarray, radius: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Base-frame points of keypoint pixels.

    uv: (N, 2) pixels (u, v); depth: (H, W) float metres or uint16 millimetres;
    K: (3, 3) intrinsics; T_base_camera: (4, 4) optical-frame pose in the base frame.
    Returns ((N, 3) float32 metres in the base frame, NaN where not visible; (N,) bool visible).
    """
    z = read_depth(depth_in_metres(depth), uv, radius)
    visible = np.isfinite(z)
    xyz = np.full((len(z), 3), np.nan, np.float32)
    if visible.any():
        xyz[visible] = unproject(K, T_base_camera, np.asarray(uv, np.float64)[visible], z[visible])
    return xyz, visible
