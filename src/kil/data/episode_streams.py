"""An episode's streams read back as project messages and aligned at the policy rate: the
observations (camera frame, robot state, optional ground-truth keypoints) and, for each, the
chunk of commanded targets that follows it. The dataset builder turns these into a store.

Topics come from the graph description the episode was recorded with (its topic names,
roles and options): the camera (RGBD), the robot state (RobotState), the commanded pose
targets (PoseCommand), the gripper commands (GripperCommand), and optionally the sim's true
keypoints (Keypoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kil.data.align import StreamGap, chunk_times, frames_at_rate, latest_at
from kil.data.bag import EpisodeReader
from kil.errors import BagError
from kil.graph import GraphSpec
from kil.msgs import RGBD, GripperCommand, Keypoints, PoseCommand, RobotState

STATE_MAX_AGE_S = 0.1  # a robot state older than this at a frame's time means the stream broke


@dataclass(frozen=True)
class EpisodeStreams:
    """One episode aligned at the policy rate (T observations, chunks of H actions).

    obs_ns: (T,) frame stamps; frames: T RGBD; ee_position (T, 3) m and ee_orientation (T, 4)
    xyzw in the base frame; gripper (T,) m; action_position (T, H, 3), action_orientation
    (T, H, 4), action_gripper (T, H): the commanded targets held at obs + i/rate (the last
    one repeated past the end); truth: T ground-truth Keypoints or None.
    """

    name: str
    obs_ns: np.ndarray
    frames: list[RGBD]
    ee_position: np.ndarray
    ee_orientation: np.ndarray
    gripper: np.ndarray
    action_position: np.ndarray
    action_orientation: np.ndarray
    action_gripper: np.ndarray
    truth: list[Keypoints] | None


def _topic_of(graph: GraphSpec, message_type: type, required: bool = True) -> str | None:
    """The one recorded topic of a type (what the graph's recorder subscribes to: the robot's
    command, not the interpolator's target before the safety node)."""
    recorded = {t for node in graph.nodes.values() if node.stage == "recorder" for t in node.subscribe.values()}
    names = [n for n, t in graph.topics.items() if t.type is message_type and (not recorded or n in recorded)]
    if len(names) > 1:
        raise BagError(f"{graph.source}: several {message_type.__name__} topics ({', '.join(names)}); the dataset needs one")
    if not names and required:
        raise BagError(f"{graph.source}: no {message_type.__name__} topic; the dataset needs one")
    return names[0] if names else None


def read_streams(episode: str | Path, graph: GraphSpec, rate_hz: float = 10.0, horizon: int = 16) -> EpisodeStreams:
    """Read and align an episode; a missing topic or a gap in the camera or state stream is a
    one-line BagError naming the episode."""
    path = Path(episode)
    names = {cls: _topic_of(graph, cls) for cls in (RGBD, RobotState, PoseCommand, GripperCommand)}
    truth_topic = _topic_of(graph, Keypoints, required=False)
    wanted = [graph.topics[n] for n in (*names.values(), truth_topic) if n is not None]
    got: dict[str, list] = {t.name: [] for t in wanted}
    for topic, _, msg in EpisodeReader(path).messages(wanted):
        got[topic].append(msg)
    frames: list[RGBD] = sorted(got[names[RGBD]], key=lambda m: m.stamp_ns)
    states: list[RobotState] = sorted(got[names[RobotState]], key=lambda m: m.stamp_ns)
    targets: list[PoseCommand] = sorted(got[names[PoseCommand]], key=lambda m: m.stamp_ns)
    grips: list[GripperCommand] = sorted(got[names[GripperCommand]], key=lambda m: m.stamp_ns)
    for label, stream in (("camera", frames), ("robot state", states), ("pose targets", targets)):
        if not stream:
            raise BagError(f"{path}: no {label} messages")
    try:
        picked = frames_at_rate(np.array([f.stamp_ns for f in frames]), rate_hz)
    except StreamGap as err:
        raise BagError(f"{path}: camera stream: {err}") from None
    obs = np.array([frames[i].stamp_ns for i in picked], np.int64)
    state_index = latest_at(np.array([s.stamp_ns for s in states]), obs, int(STATE_MAX_AGE_S * 1e9))
    if np.any(state_index < 0):
        k = int(np.flatnonzero(state_index < 0)[0])
        raise BagError(f"{path}: robot state stream: no state within {STATE_MAX_AGE_S} s before the frame at {(obs[k] - obs[0]) / 1e9:.2f} s")
    ee_position = np.array([states[i].position for i in state_index])
    ee_orientation = np.array([states[i].orientation for i in state_index])
    gripper = np.array([states[i].gripper for i in state_index])
    times = chunk_times(obs, horizon, 1.0 / rate_hz)
    target_stamps = np.array([t.stamp_ns for t in targets])
    # Before the first command the robot holds where it is; past the last one, the last holds.
    ti = latest_at(target_stamps, times.ravel()).reshape(times.shape)
    first = np.clip(ti, 0, None)
    action_position = np.array([t.position for t in targets])[first]
    action_orientation = np.array([t.orientation for t in targets])[first]
    before = ti < 0
    action_position[before] = np.broadcast_to(ee_position[:, None], times.shape + (3,))[before]
    action_orientation[before] = np.broadcast_to(ee_orientation[:, None], times.shape + (4,))[before]
    gi = latest_at(np.array([g.stamp_ns for g in grips], np.int64), times.ravel()).reshape(times.shape)
    grip_values = np.array([g.position for g in grips] or [0.0])
    action_gripper = np.where(gi >= 0, grip_values[np.clip(gi, 0, None)], gripper[:, None])
    truth = None
    if truth_topic is not None and got[truth_topic]:
        by_stamp = {k.stamp_ns: k for k in got[truth_topic]}
        truth = [by_stamp.get(t) for t in obs]
        if any(k is None for k in truth):
            truth = None  # only some frames have ground truth: not usable as oracle keypoints
    return EpisodeStreams(path.name, obs, [frames[i] for i in picked], ee_position, ee_orientation, gripper,
                          action_position, action_orientation, action_gripper, truth)
