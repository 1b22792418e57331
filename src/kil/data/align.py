"""Aligning an episode's streams at the policy rate by header stamps (for the dataset builder).

Observation times are camera frames picked on a regular grid at the policy rate; the robot
state and the commanded targets are the latest ones at or before each time (zero-order hold,
what the robot was doing when the frame was taken / what it had been told); action chunks
look ahead on the same grid. All stamps are integer nanoseconds.
"""

from __future__ import annotations

import numpy as np


class StreamGap(ValueError):
    """A stream has a hole larger than allowed (the message names where)."""


def frames_at_rate(stamps_ns: np.ndarray, rate_hz: float, max_gap_s: float | None = None) -> np.ndarray:
    """Indices of frames on a grid at `rate_hz` from the first frame: for each grid time the
    frame nearest to it within half a period. Raises StreamGap when the frames leave a hole
    longer than `max_gap_s` (default: 2.5 policy periods)."""
    stamps = np.asarray(stamps_ns, np.int64)
    if len(stamps) == 0:
        raise StreamGap("no frames")
    if np.any(np.diff(stamps) < 0):
        raise StreamGap("frame stamps go backwards")
    period = 1e9 / rate_hz
    gaps = np.diff(stamps)
    limit = (max_gap_s if max_gap_s is not None else 2.5 / rate_hz) * 1e9
    if len(gaps) and gaps.max() > limit:
        k = int(gaps.argmax())
        raise StreamGap(f"gap of {gaps[k] / 1e9:.2f} s after {(stamps[k] - stamps[0]) / 1e9:.2f} s (allowed {limit / 1e9:.2f} s)")
    count = int(np.floor((stamps[-1] - stamps[0]) / period + 1e-9)) + 1  # grid times within the recording
    grid = stamps[0] + np.round(np.arange(count) * period).astype(np.int64)
    nearest = np.clip(np.searchsorted(stamps, grid), 1, len(stamps) - 1) if len(stamps) > 1 else np.zeros(len(grid), np.int64)
    if len(stamps) > 1:
        before = nearest - 1
        nearest = np.where(np.abs(stamps[before] - grid) <= np.abs(stamps[nearest] - grid), before, nearest)
    keep = np.abs(stamps[nearest] - grid) <= period / 2
    return np.unique(nearest[keep])


def latest_at(stamps_ns: np.ndarray, query_ns: np.ndarray, max_age_ns: int | None = None) -> np.ndarray:
    """For each query time the index of the latest sample at or before it; -1 where there is
    none (or it is older than `max_age_ns`). `stamps_ns` must be sorted."""
    stamps = np.asarray(stamps_ns, np.int64)
    query = np.asarray(query_ns, np.int64)
    index = np.searchsorted(stamps, query, side="right") - 1
    if max_age_ns is not None:
        index = np.where((index >= 0) & (query - stamps[np.clip(index, 0, None)] <= max_age_ns), index, -1)
    return index


def chunk_times(obs_ns: np.ndarray, horizon: int, dt_s: float) -> np.ndarray:
    """(T, horizon) times of the actions of the chunk predicted at each observation time."""
    steps = np.round(np.arange(horizon) * dt_s * 1e9).astype(np.int64)
    return np.asarray(obs_ns, np.int64)[:, None] + steps[None, :]
