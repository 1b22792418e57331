"""Object permanence over a stream of frames: an object stays where it was last seen until the
frames say it can have left.

A per-frame matcher cannot tell "hidden" from "moved": when the arm covers the block, a
look-alike next to it (an orange ball beside a red cube) becomes the best match and the
block's keypoints jump there. With this, a place for an object is only taken within reach
of where the object was last seen: `slack_m` (the keypoints seen then and now differ, depth
noise) plus `speed_mps` times the time it has been unseen with its last place in view and
uncovered. While something stands in front of that place (the arm, by depth: readings
nearer than where the object was) the object is presumed still there and the reach does not
grow; once the place is uncovered and empty, the object may have been carried anywhere the
arm went and the reach grows until any place qualifies again.

The gripper is the one mover the frames can account for. Given its state per frame, an
unseen object the gripper came within `grasp_radius_m` of is taken to be held while the
gripper stays closed (narrower than the widest opening seen in the stream by
`closed_margin_m`): its reach does not grow, so while the block rides in the fingers, where
the matcher rarely finds it, a look-alike elsewhere on the table is not taken for it. When
the gripper opens the object has been put down somewhere the arm went and the reach grows
again. Once the held object's old place is uncovered and empty (depth readings behind where
its points were: the table under a lifted block) it is taken to be carried: its place moves
with the gripper, so it is found in the fingers and where the gripper puts it down (the
reach starts there, at the slack, when the gripper opens). A grasp that closes on nothing
leaves the object's place occupied, so it stays there.

Each object (a reference group) is tracked by the base-frame points of the keypoints seen
at its last sighting. Frames must come in order; a stamp going backwards or a gap of more
than `max_gap_s` starts over (a new episode, a restarted camera).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kil.config import require
from kil.geometry import project
from kil.msgs import RGBD
from kil.perception.lifting import depth_in_metres, read_depth


@dataclass(frozen=True)
class PermanenceConfig:
    """enabled: track objects across frames (off: every frame on its own); slack_m: metres
    an object's seen keypoints may move between two frames regardless of time; speed_mps:
    how fast an unseen object's reach grows while its last place is uncovered (about the
    arm's carrying speed); cover_margin_m: depth readings this much nearer than the last
    seen points mean something covers them; max_gap_s: a longer gap between frames starts
    over; grasp_radius_m: the gripper's point this near the mean of an unseen object's last
    seen points can have taken it; closed_margin_m: an opening this much narrower than the
    widest seen in the stream is a closed gripper."""

    enabled: bool = True
    slack_m: float = 0.03
    speed_mps: float = 0.1
    cover_margin_m: float = 0.02
    max_gap_s: float = 2.0
    grasp_radius_m: float = 0.06
    closed_margin_m: float = 0.005

    def __post_init__(self) -> None:
        require(self.slack_m > 0, "slack_m", f"must be > 0, got {self.slack_m}")
        require(self.speed_mps > 0, "speed_mps", f"must be > 0 (0 would never find a moved object again), got {self.speed_mps}")
        require(self.cover_margin_m > 0, "cover_margin_m", f"must be > 0, got {self.cover_margin_m}")
        require(self.max_gap_s > 0, "max_gap_s", f"must be > 0, got {self.max_gap_s}")
        require(self.grasp_radius_m >= 0, "grasp_radius_m", f"must be >= 0, got {self.grasp_radius_m}")
        require(self.closed_margin_m > 0, "closed_margin_m", f"must be > 0, got {self.closed_margin_m}")


@dataclass(frozen=True)
class GripperState:
    """The gripper at one frame: position (3,) metres in the base frame (the robot's EE
    point, between the fingers), opening in metres."""

    position: np.ndarray
    opening: float


@dataclass(frozen=True)
class Reach:
    """Where one object may be in a frame: anchor (M, 2) px, its keypoints' last seen
    places projected into this frame (NaN for keypoints not seen then); radius_px; and the
    same reach in metres for the lifted points (last_xyz (M, 3) base frame, NaN unknown)."""

    anchor: np.ndarray
    radius_px: float
    last_xyz: np.ndarray
    radius_m: float


@dataclass
class _Track:
    xyz: np.ndarray  # (M, 3) base frame, NaN where the keypoint was not seen at the last sighting
    unseen_s: float  # time unseen with the last place uncovered
    grasped: bool = False  # the gripper came within grasp_radius_m of it since it was last seen
    held_from: np.ndarray | None = None  # (3,) gripper position when the gripper closed on it
    carried: bool = False  # held, and its old place was seen empty: it moves with the gripper
    moved: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) m the gripper moved while holding it


class ObjectPermanence:
    """Tracks of the objects (groups of keypoint indices) of one stream of frames."""

    def __init__(self, groups: list[np.ndarray], config: PermanenceConfig = PermanenceConfig()) -> None:
        self.groups = groups
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget every object (a new episode)."""
        self._tracks: list[_Track | None] = [None] * len(self.groups)
        self._last_stamp_ns: int | None = None
        self._widest = 0.0  # the gripper's widest opening in this stream (metres)
        self._gripper: GripperState | None = None  # at the frame being detected, and whether it is closed
        self._closed = False

    def reaches(self, frame: RGBD, gripper: GripperState | None = None) -> list[Reach | None]:
        """Advance to `frame` and say where each object may be in it (None: anywhere);
        `gripper`: its state at the frame, if known."""
        if not self.config.enabled:
            return [None] * len(self.groups)
        dt = 0.0 if self._last_stamp_ns is None else (frame.stamp_ns - self._last_stamp_ns) * 1e-9
        if dt < 0 or dt > self.config.max_gap_s:
            self.reset()
            dt = 0.0
        self._last_stamp_ns = frame.stamp_ns
        closed = False
        if gripper is not None:
            self._widest = max(self._widest, float(gripper.opening))
            closed = gripper.opening < self._widest - self.config.closed_margin_m
        self._gripper, self._closed = gripper, closed
        depth = None
        out: list[Reach | None] = []
        for track in self._tracks:
            if track is None:
                out.append(None)
                continue
            known = np.isfinite(track.xyz[:, 0])
            if gripper is not None:
                track.grasped = track.grasped or self._near_gripper(track.xyz[known])
            uv, z = project(frame.K, frame.T_base_camera, track.xyz[known])
            if depth is None:
                depth = depth_in_metres(frame.depth)
            # without the gripper's state at this frame, an object stays held (and carried) as it was
            held = closed and track.grasped if gripper is not None else track.held_from is not None
            if gripper is None:
                pass
            elif held:
                if track.held_from is None:
                    track.held_from = np.asarray(gripper.position, np.float64)
                track.carried = track.carried or self._emptied(depth, uv, z)
                track.moved = np.asarray(gripper.position, np.float64) - track.held_from
            elif track.carried:  # put down where the gripper let go of it
                track.xyz = track.xyz + (np.asarray(gripper.position) - track.held_from)
                track.unseen_s, track.grasped, track.held_from, track.carried = 0.0, False, None, False
                uv, z = project(frame.K, frame.T_base_camera, track.xyz[known])
            else:
                track.held_from = None
            if not held and not self._covered(depth, uv, z):
                track.unseen_s += dt
            if track.carried:
                xyz = track.xyz + track.moved
                uv, z = project(frame.K, frame.T_base_camera, xyz[known])
            else:
                xyz = track.xyz
            radius_m = self.config.slack_m + self.config.speed_mps * track.unseen_s
            anchor = np.full((len(track.xyz), 2), np.nan)
            anchor[known] = uv
            in_front = z > 1e-3
            radius_px = float(frame.K[0, 0] * radius_m / np.median(z[in_front])) if in_front.any() else np.inf
            out.append(Reach(anchor, radius_px, xyz, radius_m))
        return out

    def _near_gripper(self, xyz: np.ndarray) -> bool:
        """Whether the gripper (at the current frame) is within grasp_radius_m of the mean of
        points xyz (M, 3), base frame."""
        return bool(np.linalg.norm(np.asarray(self._gripper.position) - xyz.mean(0)) <= self.config.grasp_radius_m)

    def _covered(self, depth: np.ndarray, uv: np.ndarray, z: np.ndarray) -> bool:
        """Whether most of the last seen points have depth readings well in front of them
        (something stands between them and the camera). Out of view or without readings:
        not covered (nothing says the object is still there)."""
        return self._most(depth, uv, z, -1)

    def _emptied(self, depth: np.ndarray, uv: np.ndarray, z: np.ndarray) -> bool:
        """Whether most of the last seen points have depth readings well behind them (the
        camera sees through where the object was)."""
        return self._most(depth, uv, z, +1)

    def _most(self, depth: np.ndarray, uv: np.ndarray, z: np.ndarray, side: int) -> bool:
        """Whether most points (uv (M, 2) px at depth z (M,) m) have readings more than
        cover_margin_m in front of them (side -1) or behind them (+1)."""
        H, W = depth.shape
        inside = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        if not inside.any():
            return False
        measured = read_depth(depth, uv[inside], radius=2)
        beyond = side * (measured - z[inside]) > self.config.cover_margin_m  # NaN compares False
        return bool(beyond.sum() * 2 > len(beyond))

    def update(self, xyz: np.ndarray, visible: np.ndarray) -> None:
        """Record a frame's result: xyz (N, 3) base frame and visible (N,) of every keypoint.
        An object with a visible keypoint is seen there now; others keep their last sighting."""
        if not self.config.enabled:
            return
        for g, members in enumerate(self.groups):
            seen = visible[members]
            if seen.any():
                track = _Track(np.where(seen[:, None], xyz[members], np.nan).astype(np.float64), 0.0)
                before = self._tracks[g]
                if self._closed and before is not None and before.carried:  # seen in the fingers: still carried
                    track.grasped, track.carried = True, True
                else:
                    track.grasped = self._gripper is not None and self._near_gripper(track.xyz[seen])
                if track.grasped and self._closed:
                    track.held_from = np.asarray(self._gripper.position, np.float64)
                self._tracks[g] = track
