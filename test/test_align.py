"""Aligning episode streams at the policy rate."""

from __future__ import annotations

import numpy as np
import pytest

from kil.data.align import StreamGap, chunk_times, frames_at_rate, latest_at

MS = 1_000_000


def test_frames_at_rate_picks_a_regular_grid_from_a_jittery_camera():
    rng = np.random.default_rng(0)
    stamps = (np.arange(60) * 1000 / 30 * MS + rng.integers(-2, 3, 60) * MS).astype(np.int64)  # 30 Hz for 2 s
    stamps.sort()
    picked = frames_at_rate(stamps, 10.0)
    times = (stamps[picked] - stamps[0]) / 1e9
    assert len(picked) == 20
    np.testing.assert_allclose(np.diff(times), 0.1, atol=0.02)


def test_gaps_and_backward_stamps_are_errors_naming_where():
    stamps = np.concatenate([np.arange(10) * 66 * MS, 10 * 66 * MS + 500 * MS + np.arange(5) * 66 * MS]).astype(np.int64)
    with pytest.raises(StreamGap, match=r"gap of 0\.57 s after 0\.59 s \(allowed 0\.25 s\)"):
        frames_at_rate(stamps, 10.0)
    with pytest.raises(StreamGap, match="backwards"):
        frames_at_rate(np.array([0, 100, 50]), 10.0)
    with pytest.raises(StreamGap, match="no frames"):
        frames_at_rate(np.array([], np.int64), 10.0)


def test_latest_at_holds_the_last_sample_and_respects_age():
    stamps = np.array([0, 10, 20, 30]) * MS
    query = np.array([-5, 0, 15, 29, 100]) * MS
    assert latest_at(stamps, query).tolist() == [-1, 0, 1, 2, 3]
    assert latest_at(stamps, query, max_age_ns=20 * MS).tolist() == [-1, 0, 1, 2, -1]


def test_chunk_times():
    t = chunk_times(np.array([0, 100 * MS]), 4, 0.1)
    assert t.tolist() == [[0, 100 * MS, 200 * MS, 300 * MS], [100 * MS, 200 * MS, 300 * MS, 400 * MS]]
