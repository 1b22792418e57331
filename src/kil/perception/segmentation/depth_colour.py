"""Class-agnostic instances from depth and colour, without weights: what stands on the table.

The table is the dominant horizontal surface in the base frame (z up): the most common
height of the lifted pixels, unless `table_z` fixes it. Pixels between `min_height_m` and
`max_height_m` above it are foreground, and so are pixels down to `low_height_m` that are
connected to them (an object's bottom edge, hysteresis as in edge detection); neighbouring pixels further apart than
`edge_gap_m` in 3-D or `colour_gap` in colour lie on different objects, so touching objects
of another colour or height come apart. Each connected region with its holes filled (a
tray's floor inside its walls) is an instance; regions larger than `max_area` of the image
(the arm reaching in, a table edge) are dropped. An instance scores the share of the
pixels around it that are table: an object standing free scores near 1, parts of the arm
(bordering each other and the image edge) low. Category is left to the descriptor matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kil.config import require
from kil.geometry import unproject
from kil.msgs import RGBD
from kil.perception.lifting import depth_in_metres
from kil.perception.segmentation.base import Instances, Prompt, Segmenter, SegmenterConfig

HEIGHT_BIN_M = 0.005  # the table's height is the mode of a histogram with these bins


@dataclass(frozen=True)
class DepthColourConfig(SegmenterConfig):
    """table_z: the table's height in the base frame (None: found per frame); min_height_m /
    max_height_m: foreground band above it; edge_gap_m / colour_gap: neighbours further
    apart in 3-D (metres) / in RGB (0-255 Euclidean) are on different objects; max_area:
    largest instance as a share of the image."""

    min_score: float = 0.5
    table_z: float | None = None
    min_height_m: float = 0.008
    low_height_m: float = 0.002
    max_height_m: float = 0.40
    edge_gap_m: float = 0.012
    colour_gap: float = 60.0
    max_area: float = 0.15

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.low_height_m <= self.min_height_m < self.max_height_m, "min_height_m",
                f"need 0 < low_height_m <= min_height_m < max_height_m, got {self.low_height_m}, {self.min_height_m}, {self.max_height_m}")
        require(self.edge_gap_m > 0, "edge_gap_m", f"must be > 0, got {self.edge_gap_m}")
        require(self.colour_gap > 0, "colour_gap", f"must be > 0, got {self.colour_gap}")
        require(0 < self.max_area <= 1, "max_area", f"a share of the image in (0, 1], got {self.max_area}")


class DepthColourSegmenter(Segmenter):
    Config = DepthColourConfig
    title = "depth-and-colour segmenter"
    needs_weights = False

    def heights(self, frame: RGBD) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) base-frame points, NaN without a reading; (H, W) height above the table)."""
        depth = depth_in_metres(frame.depth)
        H, W = depth.shape
        v, u = np.mgrid[0:H, 0:W]
        points = unproject(frame.K, frame.T_base_camera, np.stack([u.ravel(), v.ravel()], 1), depth.ravel()).reshape(H, W, 3)
        z = points[..., 2]
        table = self.config.table_z
        if table is None:
            valid = z[np.isfinite(z)]
            if len(valid) == 0:
                return points, np.full((H, W), np.nan)
            bins = np.floor(valid / HEIGHT_BIN_M).astype(np.int64)
            lowest = bins.min()
            table = (lowest + np.bincount(bins - lowest).argmax() + 0.5) * HEIGHT_BIN_M  # the most common height
        return points, z - table

    def _segment(self, frame: RGBD, prompts: list[Prompt]) -> Instances:
        c = self.config
        points, height = self.heights(frame)
        with np.errstate(invalid="ignore"):
            seed = (height > c.min_height_m) & (height < c.max_height_m)
            foreground = (height > c.low_height_m) & (height < c.max_height_m)
        rgb = frame.rgb.astype(np.float32)
        chroma = 255.0 * rgb / np.maximum(rgb.sum(-1, keepdims=True), 1.0)  # shading changes brightness, not chroma
        apart = np.zeros(foreground.shape, bool)  # a pixel with a neighbour (right or below) on another object
        for axis in (0, 1):  # squared distances against squared gaps: no square roots over the image
            step, shade = np.diff(points, axis=axis), np.diff(chroma, axis=axis)
            gap, colour = np.einsum("...k,...k->...", step, step), np.einsum("...k,...k->...", shade, shade)
            with np.errstate(invalid="ignore"):
                edge = (gap > c.edge_gap_m ** 2) | (colour > c.colour_gap ** 2)
            if axis == 0:
                apart[:-1] |= edge
            else:
                apart[:, :-1] |= edge
        labels, count = ndimage.label(foreground & ~apart)
        seeded = np.zeros(count + 1, bool)
        seeded[labels[seed]] = True  # regions that rise min_height_m somewhere
        seeded[0] = False
        labels = np.where(seeded[labels], labels, 0)
        if count:  # pixels on an edge join the nearest region within 2 px
            distance, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            grown = labels[iy, ix]
            labels = np.where(foreground & (labels == 0) & (distance <= 2), grown, labels)
        table = np.isfinite(height) & (np.abs(height) <= c.low_height_m)
        masks, scores, limit = [], [], c.max_area * foreground.size
        for label, region in enumerate(ndimage.find_objects(labels), start=1):
            if region is None:
                continue
            rows, cols = (slice(max(r.start - 1, 0), r.stop + 1) for r in region)  # one pixel of margin for the ring
            around = labels[rows, cols]
            filled = ndimage.binary_fill_holes(around == label) & ((around == 0) | (around == label))  # not an object inside it
            area = int(np.count_nonzero(filled))
            if area > limit or area < c.min_area_px:  # (the base drops small ones too: not worth a full-frame mask)
                continue
            ring = ndimage.binary_dilation(filled) & ~filled
            mask = np.zeros(foreground.shape, bool)
            mask[rows, cols] = filled
            masks.append(mask)
            scores.append(table[rows, cols][ring].mean() if ring.any() else 0.0)
        if not masks:
            return Instances.empty(foreground.shape)
        return Instances(np.stack(masks), np.array(scores, np.float32), np.full(len(masks), -1, np.int64))


BACKEND = DepthColourSegmenter
