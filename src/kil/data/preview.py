"""A PNG contact sheet of an episode's camera: colour frames above their depth images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kil.converters.image import COLOUR_ENCODINGS, DEPTH_ENCODINGS, image_to_depth, image_to_rgb
from kil.data.bag import EpisodeReader


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8, near bright, invalid black."""
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros((*depth.shape, 3), np.uint8)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [2, 98])
        scaled = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
        out[valid] = (40 + 215 * scaled[valid, None]).astype(np.uint8)
    return out


def colour_frames(episode: str | Path, topic: str | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(topic, header stamp ns, (H, W, 3) uint8 RGB) of every colour image of an episode, in
    log order; only `topic` when given."""
    from kil.converters.factory import time_ns

    reader = EpisodeReader(episode)
    topics = [t for t, (kind, _) in reader.topics().items() if kind == "sensor_msgs/msg/Image" and (topic is None or t == topic)]
    for t, _, _, msg in reader.ros_messages(topics):
        if msg.encoding in COLOUR_ENCODINGS:
            yield t, time_ns(msg.header.stamp), image_to_rgb(msg)


def episode_preview(episode: str | Path, out: str | Path, frames: int = 4) -> Path:
    """Write `frames` evenly spaced colour frames (top) and depth images (bottom) as one PNG."""
    from PIL import Image

    reader = EpisodeReader(episode)
    image_topics = [t for t, (kind, _) in reader.topics().items() if kind == "sensor_msgs/msg/Image"]
    images = [(t, m) for t, _, _, m in reader.ros_messages(image_topics)]
    colour = [m for _, m in images if m.encoding in COLOUR_ENCODINGS]
    depth = [m for _, m in images if m.encoding in DEPTH_ENCODINGS]
    if not colour:
        raise ValueError(f"{episode}: no colour image topic to preview")
    picks = np.linspace(0, len(colour) - 1, min(frames, len(colour))).round().astype(int)
    top = [image_to_rgb(colour[i]) for i in picks]
    rows = [np.concatenate(top, axis=1)]
    if len(depth) == len(colour):
        rows.append(np.concatenate([depth_to_rgb(image_to_depth(depth[i])) for i in picks], axis=1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)
    return out
