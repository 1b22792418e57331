"""Object permanence over a stream of frames: an object stays where it was last seen until the
frames say it can have left.

A per-frame matcher cannot tell "hidden" from "moved": when the arm covers the block, a
look-alike next to it (an orange ball beside a red cube) becomes the best match and the
block's keypoints jump there. With this, a place for an object is only taken within reach
of where the object was last seen: `slack_m` (the keypoints seen then and now differ, depth
noise) plus what the reach has grown since. Depth at the last place says how fast it grows:
- something stands in front of it (the arm: readings nearer than where the object was):
  the object is presumed still there, and the reach does not grow;
- the camera sees through it (readings behind where its points were: the table under a
  block that has gone), or it is out of view: the object may have been carried anywhere
  the arm went, and the reach grows at `speed_mps` until any place qualifies again;
- the readings are still those of its surface: most likely it is still there, no longer
  recognised (half hidden by the fingers beside it, turned by a grasp that slipped), and
  the reach grows at `occupied_speed_mps` only. At the full speed a cube the gripper had
  knocked askew was given up within a second for a look-alike 10 cm away. An object too
  flat for depth to tell it from the table is found again after a move at this speed too.

The gripper is the one mover the frames can account for. Given its state per frame, an
unseen object the gripper came within `grasp_radius_m` of is taken to be held while the
gripper stays closed (narrower than the widest opening seen in the stream by
`closed_margin_m`) on something (wider than `empty_opening_m`; fingers that close fully hold
nothing: the grasp missed, or the object slipped out): its reach does not grow, so while
the block rides in the fingers, where the matcher rarely finds it, a look-alike elsewhere
on the table is not taken for it. When the gripper opens, or closes on nothing, the object
has been put down (or dropped) somewhere the arm went and the reach grows again. Once the
held object's old place is uncovered and empty (depth readings behind where its points
were: the table under a lifted block) it is taken to be carried: its place moves
with the gripper, and turns about the gripper point as the wrist turns where the gripper's
orientation is known, so it is found in the fingers and where the gripper puts it down
(the reach starts there, at the slack, when the gripper opens). A grasp that closes on nothing
leaves the object's place occupied, so it stays there.

Each object (a reference group) is tracked by the base-frame points of the keypoints seen
at its last sighting. Frames must come in order; a stamp going backwards or a gap of more
than `max_gap_s` starts over (a new episode, a restarted camera).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.geometry import project, quat_to_matrix
from kil.msgs import RGBD
from kil.perception.lifting import depth_in_metres, read_depth


@dataclass(frozen=True)
class PermanenceConfig:
    """enabled: track objects across frames (off: every frame on its own); slack_m: metres
    an object's seen keypoints may move between two frames regardless of time; speed_mps:
    how fast an unseen object's reach grows while its last place is seen through or out of
    view (about the arm's carrying speed); cover_margin_m: depth readings this much nearer
    (farther) than the last seen points mean something covers them (they are gone);
    max_gap_s: a longer gap between frames starts over; grasp_radius_m: the gripper's
    point this near the mean of an unseen object's last seen points can have taken it;
    closed_margin_m: an opening this much narrower than the widest seen in the stream is a
    closed gripper; empty_opening_m: a closed gripper this
    narrow or narrower holds nothing; occupied_speed_mps: how fast the reach grows while
    depth still reads the object's surface at its last place; rigid_m: objects are followed
    as rigid bodies (None: off): keypoints not seen in a frame keep their places, moved as
    the seen ones moved, and a keypoint placed at the last sighting and seen now may move
    this much more or less than the median of its object's (3+ such keypoints), else it was
    read off something in front of it (a tray's centre under the block put down on it)."""

    enabled: bool = True
    slack_m: float = 0.03
    speed_mps: float = 0.1
    occupied_speed_mps: float = 0.02
    cover_margin_m: float = 0.02
    max_gap_s: float = 2.0
    grasp_radius_m: float = 0.06
    closed_margin_m: float = 0.005
    empty_opening_m: float = 0.005
    rigid_m: float | None = None

    def __post_init__(self) -> None:
        require(self.slack_m > 0, "slack_m", f"must be > 0, got {self.slack_m}")
        require(self.speed_mps > 0, "speed_mps", f"must be > 0 (0 would never find a moved object again), got {self.speed_mps}")
        require(0 < self.occupied_speed_mps <= self.speed_mps, "occupied_speed_mps",
                f"must be in (0, speed_mps] (0 would never find a flat object that moved), got {self.occupied_speed_mps}")
        require(self.empty_opening_m >= 0, "empty_opening_m", f"must be >= 0, got {self.empty_opening_m}")
        require(self.cover_margin_m > 0, "cover_margin_m", f"must be > 0, got {self.cover_margin_m}")
        require(self.max_gap_s > 0, "max_gap_s", f"must be > 0, got {self.max_gap_s}")
        require(self.grasp_radius_m >= 0, "grasp_radius_m", f"must be >= 0, got {self.grasp_radius_m}")
        require(self.rigid_m is None or self.rigid_m > 0, "rigid_m", f"must be > 0 metres (or None: off), got {self.rigid_m}")
        require(self.closed_margin_m > 0, "closed_margin_m", f"must be > 0, got {self.closed_margin_m}")


@dataclass(frozen=True)
class GripperState:
    """The gripper at one frame: position (3,) metres in the base frame (the robot's EE
    point, between the fingers), opening in metres, orientation (4,) quaternion (x, y, z, w)
    in the base frame where known (a carried object turns with it; None: it only moves)."""

    position: np.ndarray
    opening: float
    orientation: np.ndarray | None = None

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), rotation (3, 3)); identity where the orientation is unknown."""
        R = np.eye(3) if self.orientation is None else quat_to_matrix(np.asarray(self.orientation, np.float64))
        return np.asarray(self.position, np.float64), R


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
    xyz: np.ndarray  # (M, 3) base frame at the last sighting (unseen keypoints: where the object had them; NaN: never seen)
    grown_m: float  # how far the reach has grown beyond the slack since then
    sighted: np.ndarray | None = None  # (M,) bool, seen at the last sighting (None: those with a place)
    grasped: bool = False  # the gripper came within grasp_radius_m of it since it was last seen
    held_from: tuple[np.ndarray, np.ndarray] | None = None  # gripper (position (3,), rotation (3, 3)) when it closed on it
    carried: bool = False  # held, and its old place was seen empty: it moves with the gripper
    carried_xyz: np.ndarray | None = None  # (M, 3) xyz where the gripper has carried it (rigidly, in the fingers)

    def place(self, gripper: GripperState | None) -> np.ndarray:
        """(M, 3) where the object is now if the gripper holds it rigidly since held_from:
        its points moved (and turned about the gripper point) as the gripper has."""
        if gripper is None or self.held_from is None:
            return self.xyz if self.carried_xyz is None else self.carried_xyz
        (p0, R0), (p1, R1) = self.held_from, gripper.pose()
        return (self.xyz - p0) @ (R1 @ R0.T).T + p1


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
            closed = self.config.empty_opening_m < gripper.opening < self._widest - self.config.closed_margin_m
        self._gripper, self._closed = gripper, closed
        depth = None
        out: list[Reach | None] = []
        for track in self._tracks:
            if track is None:
                out.append(None)
                continue
            known = np.isfinite(track.xyz[:, 0])
            if track.sighted is not None:
                known &= track.sighted  # depth at places only presumed says nothing of the object
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
                    track.held_from = gripper.pose()
                track.carried = track.carried or self._emptied(depth, uv, z)
                track.carried_xyz = track.place(gripper)
            elif track.carried and gripper.opening > self.config.empty_opening_m:  # put down where the fingers let go
                track.xyz = track.place(gripper)
                track.grown_m, track.grasped, track.held_from, track.carried, track.carried_xyz = 0.0, False, None, False, None
                uv, z = project(frame.K, frame.T_base_camera, track.xyz[known])
            else:  # never held, or it slipped out of fingers that then closed on nothing: looked for where it was
                track.held_from, track.carried, track.carried_xyz = None, False, None
            if not held:
                track.grown_m += dt * self._growth_speed(depth, uv, z)
            if track.carried:
                xyz = track.place(None)
                uv, z = project(frame.K, frame.T_base_camera, xyz[known])
            else:
                xyz = track.xyz
            radius_m = self.config.slack_m + track.grown_m
            placed = np.isfinite(xyz[:, 0])
            anchor = np.full((len(track.xyz), 2), np.nan)
            anchor[placed], z = project(frame.K, frame.T_base_camera, xyz[placed])
            in_front = z > 1e-3
            radius_px = float(frame.K[0, 0] * radius_m / np.median(z[in_front])) if in_front.any() else np.inf
            out.append(Reach(anchor, radius_px, xyz, radius_m))
        return out

    def _near_gripper(self, xyz: np.ndarray) -> bool:
        """Whether the gripper (at the current frame) is within grasp_radius_m of the mean of
        points xyz (M, 3), base frame."""
        return bool(np.linalg.norm(np.asarray(self._gripper.position) - xyz.mean(0)) <= self.config.grasp_radius_m)

    def _growth_speed(self, depth: np.ndarray, uv: np.ndarray, z: np.ndarray) -> float:
        """m/s the reach of an unseen object grows at, from the depth readings at its last
        seen points (uv (M, 2) px at depth z (M,) m): none while most stand covered; full
        while most are seen through, or none is in view with a reading (nothing says the
        object is still there); slow otherwise (the readings are still its surface's)."""
        difference = self._differences(depth, uv, z)
        if difference is None:
            return self.config.speed_mps
        margin = self.config.cover_margin_m
        if (difference < -margin).sum() * 2 > len(difference):
            return 0.0
        if (difference > margin).sum() * 2 > len(difference):
            return self.config.speed_mps
        return self.config.occupied_speed_mps

    def _emptied(self, depth: np.ndarray, uv: np.ndarray, z: np.ndarray) -> bool:
        """Whether most of the last seen points have depth readings well behind them (the
        camera sees through where the object was)."""
        difference = self._differences(depth, uv, z)
        return difference is not None and bool((difference > self.config.cover_margin_m).sum() * 2 > len(difference))

    @staticmethod
    def _differences(depth: np.ndarray, uv: np.ndarray, z: np.ndarray) -> np.ndarray | None:
        """Depth readings minus the depths z (M,) m of points uv (M, 2) px, for the points in
        view with a reading (positive: the reading is behind the point); None where none is."""
        H, W = depth.shape
        inside = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        if not inside.any():
            return None
        difference = read_depth(depth, uv[inside], radius=2) - z[inside]
        difference = difference[np.isfinite(difference)]
        return difference if len(difference) else None

    def update(self, xyz: np.ndarray, visible: np.ndarray) -> None:
        """Record a frame's result: xyz (N, 3) base frame and visible (N,) of every keypoint.
        An object with a visible keypoint is seen there now; others keep their last sighting.
        With `rigid_m`, its keypoints not seen now keep where it had them, moved as the seen
        ones moved (a block lifted with one point under the fingers is still looked for whole)."""
        if not self.config.enabled:
            return
        for g, members in enumerate(self.groups):
            seen = visible[members]
            if seen.any():
                before = self._tracks[g]
                points = np.where(seen[:, None], xyz[members], np.nan).astype(np.float64)
                if before is not None and self.config.rigid_m is not None:
                    carried = before.carried and before.carried_xyz is not None
                    points = _with_unseen(points, seen, before.carried_xyz if carried else before.xyz)
                track = _Track(points, 0.0, sighted=seen.copy())
                if self._closed and before is not None and before.carried:  # seen in the fingers: still carried
                    track.grasped, track.carried = True, True
                else:
                    track.grasped = self._gripper is not None and self._near_gripper(track.xyz[seen])
                if track.grasped and self._closed:
                    track.held_from = self._gripper.pose()
                self._tracks[g] = track


def _with_unseen(points: np.ndarray, seen: np.ndarray, before: np.ndarray) -> np.ndarray:
    """points (M, 3) of one object seen now (NaN where not seen) with its unseen keypoints
    at their places before (M, 3, NaN unknown), moved by the seen keypoints' median
    displacement (none where no keypoint was placed both times)."""
    known = np.isfinite(before[:, 0])
    both = seen & known
    shift = np.median(points[both] - before[both], axis=0) if both.any() else np.zeros(3)
    fill = ~seen & known
    out = points.copy()
    out[fill] = before[fill] + shift
    return out
