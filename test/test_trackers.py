"""Point trackers (paper 001's T): Lucas-Kanade on rendered sim frames, and the CoTracker3
online adapter's protocol against a fake `cotracker` package with the real call signature."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from kil.errors import ConfigError
from kil.perception.trackers.base import TRACKERS, load_tracker


def _textured(shift: tuple[int, int], size=(96, 128)) -> np.ndarray:
    """A smooth random texture, moved by `shift` (du, dv) pixels."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[0] // 4 + 8, size[1] // 4 + 8, 3)).astype(np.uint8)
    import cv2

    big = cv2.resize(base, (size[1] + 32, size[0] + 32), interpolation=cv2.INTER_CUBIC)
    du, dv = shift
    return np.ascontiguousarray(big[16 - dv:16 - dv + size[0], 16 - du:16 - du + size[1]])


def test_trackers_are_found_by_name():
    assert TRACKERS.names() == ["cotracker", "lucas_kanade"]
    with pytest.raises(ConfigError, match="backend: cotracker needs the co-tracker package"):
        load_tracker("cotracker", {"weights": __file__})


def test_lucas_kanade_follows_moving_texture_and_loses_points_that_leave():
    tracker = load_tracker("lucas_kanade")
    points = np.array([[40.0, 30.0], [64.0, 50.0], [120.0, 48.0]])
    tracker.start(_textured((0, 0)), points)
    for k in range(1, 6):
        out = tracker.step(_textured((2 * k, k)))
    assert np.abs(out.uv[:2] - (points[:2] + [10, 5])).max() < 0.5 and out.tracked[:2].all()
    assert not out.tracked[2]  # moved past the right edge: lost, and stays lost
    tracker.step(_textured((0, 0)))
    assert not tracker.step(_textured((0, 0))).tracked[2]


class FakeOnlinePredictor(torch.nn.Module):
    """co-tracker's CoTrackerOnlinePredictor signature: constructed with a checkpoint and
    window_len, `step` = window_len // 2; forward(video_chunk (B, T, 3, H, W) float,
    is_first_step, queries (B, N, 3) (t, x, y)) returns (None, None) on the first step,
    then tracks (B, T_seen, N, 2) and visibility (B, T_seen, N) for every frame so far.
    Point n moves n+1 px right per frame; point 1 is invisible from frame 20 on."""

    calls: list = []

    def __init__(self, checkpoint="./checkpoints/scaled_online.pth", offline=False, v2=False, window_len=16):
        super().__init__()
        self.step = window_len // 2
        self.checkpoint = checkpoint

    def forward(self, video_chunk, is_first_step=False, queries=None, segm_mask=None, grid_size=5, grid_query_frame=0,
                add_support_grid=False):
        B, T, C, H, W = video_chunk.shape
        assert C == 3 and video_chunk.dtype == torch.float32 and video_chunk.max() <= 255
        FakeOnlinePredictor.calls.append((is_first_step, T))
        if is_first_step:
            assert queries.shape[0] == 1 and queries.shape[2] == 3 and (queries[..., 0] == 0).all()
            self.queries, self.seen = queries, T
            return None, None
        assert T == 2 * self.step
        self.seen += self.step
        t = torch.arange(self.seen, dtype=torch.float32)[:, None, None]
        N = self.queries.shape[1]
        tracks = self.queries[0, :, 1:][None] + t * torch.stack([torch.arange(1.0, N + 1), torch.zeros(N)], 1)[None]
        visible = torch.ones(self.seen, N, dtype=torch.bool)
        visible[20:, 1] = False
        return tracks[None], visible[None]


def test_cotracker_online_protocol(monkeypatch, tmp_path):
    module = types.ModuleType("cotracker.predictor")
    module.CoTrackerOnlinePredictor = FakeOnlinePredictor
    monkeypatch.setitem(sys.modules, "cotracker", types.ModuleType("cotracker"))
    monkeypatch.setitem(sys.modules, "cotracker.predictor", module)
    FakeOnlinePredictor.calls = []
    checkpoint = tmp_path / "scaled_online.pth"
    checkpoint.write_bytes(b"weights")
    tracker = load_tracker("cotracker", {"weights": str(checkpoint), "window_len": 8})
    assert tracker.model.checkpoint == str(checkpoint) and tracker.step_frames == 4 and tracker.lag_frames == 7
    points = np.array([[10.0, 20.0], [30.0, 40.0]])
    frame = np.zeros((48, 64, 3), np.uint8)
    tracker.start(frame, points)
    answers = [tracker.step(frame) for _ in range(27)]  # frames 1..27 after the start (frame 0)
    # queries once frames 0..3 are in, then the last 8 frames every 4: at frames 7, 11, ..., 27
    assert FakeOnlinePredictor.calls == [(True, 4)] + [(False, 8)] * 6
    assert np.array_equal(answers[5].uv, points)  # frame 6: no answer yet, the points where they were given
    first = answers[6]  # frame 7: the first answer, the newest frame's tracks
    assert np.allclose(first.uv, points + [[7, 0], [14, 0]]) and first.tracked.all()
    assert np.allclose(answers[9].uv, first.uv)  # frame 10: between calls the newest answer stands
    late = answers[22]  # frame 23: point 1 invisible since frame 20, lost at its last tracked place (frame 19)
    assert late.tracked.tolist() == [True, False] and np.allclose(late.uv, points + [[23, 0], [38, 0]])
    assert answers[26].tracked.tolist() == [True, False]  # lost stays lost


# ----------------------------------------------------------------------------- tracking in the detector


class ScriptedTracker:
    """A point tracker that moves its points by a scripted offset per step, losing the
    points `lose` names; it records every start."""

    lag_frames = 0

    def __init__(self, offsets, lose=()):
        self.offsets, self.lose, self.starts, self.k = list(offsets), set(lose), [], 0

    def start(self, rgb, uv):
        self.starts.append(np.array(uv, float))
        self.uv = np.array(uv, float)

    def step(self, rgb):
        from kil.perception.trackers.base import TrackedPoints

        self.uv = self.uv + self.offsets[self.k]
        tracked = np.array([i not in self.lose or self.k < 2 for i in range(len(self.uv))])
        self.k += 1
        return TrackedPoints(self.uv.copy(), tracked)


def test_tracked_keypoints_are_checked_and_found_again_by_matching():
    """Extraction t: the first frame is matched and starts the tracker; tracked points that
    still look like their references are kept without matching; a point the tracker loses
    is found again by matching and the tracker starts again from there."""
    from test_instances import centres, features, frame, references

    from kil.perception.keypoints import DetectorConfig, KeypointDetector, TrackingConfig

    refs, block, _ = references()
    tracker = ScriptedTracker([[4, 0], [4, 0], [4, 0]], lose={2})
    detector = KeypointDetector(refs, DetectorConfig(tracking=TrackingConfig()), tracker=tracker)
    places = [(4, 4), (4, 5), (4, 6), (4, 7)]  # the block moves one cell (4 px) right per frame
    out = [detector.detect([frame(0.1 * t)], features(block, [(np.array(p), 1.0)]))[0] for t, p in enumerate(places)]
    assert all(o.visible.all() for o in out)
    for o, place in zip(out, places):
        assert np.abs(o.uv - centres(place)).max() <= 2
    assert len(tracker.starts) == 2  # the first frame, and frame 3 where point 2 was lost and found again
    assert np.abs(tracker.starts[1] - centres((4, 7))).max() <= 2

    drifting = ScriptedTracker([[12, 0]] * 3)  # the tracker runs off the block: not alike any more, found again
    detector = KeypointDetector(refs, DetectorConfig(tracking=TrackingConfig()), tracker=drifting)
    out = [detector.detect([frame(0.1 * t)], features(block, [(np.array(p), 1.0)]))[0] for t, p in enumerate(places[:2])]
    assert np.abs(out[1].uv - centres(places[1])).max() <= 2 and out[1].visible.all() and len(drifting.starts) == 2


def test_an_object_not_found_when_tracking_starts_is_not_tracked_into_view():
    """block[1] has no instance on the first frame: its best match (on block[0]) is not
    trusted, so tracking never makes it visible there."""
    from test_instances import Masks, features, frame, references

    from kil.perception.instances import InstanceConfig
    from kil.perception.keypoints import DetectorConfig, KeypointDetector, TrackingConfig

    refs, block, _ = references(slots=2)
    tracker = ScriptedTracker([[0, 0]] * 3)
    detector = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig(), tracking=TrackingConfig()), Masks([((4, 4), 0)]), tracker)
    out = [detector.detect([frame(0.1 * t)], features(block, [(np.array([4, 4]), 1.0)]))[0] for t in range(3)]
    for o in out:
        assert o.visible.sum() == 4 and (o.visible[:4].all() or o.visible[4:].all())
