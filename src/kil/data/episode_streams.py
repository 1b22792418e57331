"""An episode's streams read back as project messages and aligned at the policy rate: the
observations (camera frame, robot state, optional ground-truth keypoints) and, for each, the
chunk of commanded targets that follows it. The dataset builder turns these into a store.

Topics come from a graph description with the recording's topic names, roles and options
(a rig's, see kil.data.builder.recording_graph): the camera (RGBD), the robot state
(RobotState), the commanded pose targets (PoseCommand), and where the bag has them the
gripper commands (GripperCommand) and the sim's true keypoints (Keypoints). A real recording
starts and stops its streams in any order: camera frames without robot state or commands
at either end are trimmed, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from kil.data.align import StreamGap, chunk_times, frames_at_rate, latest_at
from kil.data.bag import EpisodeReader
from kil.control.frames import pose_in_frame
from kil.errors import BagError, TransformError
from kil.graph import GraphSpec
from kil.msgs import RGBD, GripperCommand, Keypoints, PoseCommand, RobotState

STATE_MAX_AGE_S = 0.1  # a robot state older than this at a frame's time means the stream broke
COMMAND_MAX_AGE_S = 0.25  # frames later than this after the last command have none (the recording ran on)
MIN_OVERLAP_S = 1.0  # an episode whose camera, state and command streams overlap less is refused


@dataclass(frozen=True)
class EpisodeStreams:
    """One episode aligned at the policy rate (T observations, chunks of H actions).

    obs_ns: (T,) frame stamps; frames: T RGBD; ee_position (T, 3) m and ee_orientation (T, 4)
    xyzw in the base frame; gripper (T,) m; action_position (T, H, 3), action_orientation
    (T, H, 4), action_gripper (T, H): the commanded targets held at obs + i/rate (the last
    one repeated past the end); truth: T ground-truth Keypoints or None; trimmed: camera
    frames left out at the (start, end) of the recording for lack of robot state or commands.
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
    trimmed: tuple[int, int] = (0, 0)


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


def _ros_names(graph: GraphSpec, topic: str) -> str:
    """The ROS topics a graph topic is read from, for messages ("/a + /b")."""
    spec = graph.topics[topic]
    return " + ".join(spec.ros_topics[r.name] for r in spec.wire.input_roles())


def _in_bag(graph: GraphSpec, topic: str | None, available: dict) -> bool:
    return topic is not None and all(graph.topics[topic].ros_topics[r.name] in available for r in graph.topics[topic].wire.input_roles())


def _in_frame(msg, base: str, tf, path: Path, topic: str):
    """A RobotState or PoseCommand re-expressed in `base` (itself when it is already)."""
    if msg.frame_id == base or not base:
        return msg
    try:
        position, orientation = pose_in_frame(SimpleNamespace(lookup_transform=tf.lookup), base, msg.frame_id, msg.stamp_ns,
                                              msg.position, msg.orientation)
    except TransformError as err:
        raise BagError(f"{path}: {topic} is in frame {msg.frame_id!r}, and the bag's TF does not relate it to {base!r} ({err})") from None
    return replace(msg, frame_id=base, position=position, orientation=orientation)


def overlap_window(streams: dict[str, np.ndarray], slack_ns: dict[str, int], min_overlap_s: float, path: Path) -> tuple[int, int]:
    """The time span [start, end] ns covered by every stream (label -> sorted stamps), each
    stream counting until `slack_ns[label]` after its last message; a one-line BagError
    naming each stream's time range when it is shorter than `min_overlap_s`."""
    start = max(int(t[0]) for t in streams.values())
    end = min(int(t[-1]) + slack_ns.get(label, 0) for label, t in streams.items())
    if (end - start) / 1e9 >= min_overlap_s:
        return start, end
    t0 = min(int(t[0]) for t in streams.values())
    ranges = ", ".join(f"{label} {(t[0] - t0) / 1e9:.2f}-{(t[-1] - t0) / 1e9:.2f} s" for label, t in streams.items())
    what = f"overlap for {(end - start) / 1e9:.2f} s only" if end > start else "do not overlap"
    raise BagError(f"{path}: the streams {what} (at least {min_overlap_s:g} s needed): {ranges} (stamps from the earliest)")


def read_streams(episode: str | Path, graph: GraphSpec, rate_hz: float = 10.0, horizon: int = 16,
                 min_overlap_s: float = MIN_OVERLAP_S) -> EpisodeStreams:
    """Read and align an episode. Camera frames before the robot state and the commands
    start, or after they end, are trimmed (a real recording starts its streams in any
    order); a missing topic, streams overlapping less than `min_overlap_s`, or a gap in the
    camera or state stream inside the overlap is a one-line BagError naming the episode
    and the topics. Without gripper commands in the bag, the gripper's measured opening
    stands for them; ground-truth keypoints are read where the bag has them."""
    path = Path(episode)
    reader = EpisodeReader(path)
    available = reader.topics()
    names = {cls: _topic_of(graph, cls) for cls in (RGBD, RobotState, PoseCommand)}
    grip_topic = _topic_of(graph, GripperCommand, required=False)
    grip_topic = grip_topic if _in_bag(graph, grip_topic, available) else None
    truth_topic = _topic_of(graph, Keypoints, required=False)
    truth_topic = truth_topic if _in_bag(graph, truth_topic, available) else None
    wanted = [graph.topics[n] for n in (*names.values(), grip_topic, truth_topic) if n is not None]
    got: dict[str, list] = {t.name: [] for t in wanted}
    # The EE pose drives the robot state; the joint states (the gripper) are held from their own publisher.
    state_wire = graph.topics[names[RobotState]].wire
    for topic, _, msg in reader.messages(wanted, hold={names[RobotState]: state_wire.held_max_age_s}):
        got[topic].append(msg)
    frames: list[RGBD] = sorted(got[names[RGBD]], key=lambda m: m.stamp_ns)
    states: list[RobotState] = sorted(got[names[RobotState]], key=lambda m: m.stamp_ns)
    targets: list[PoseCommand] = sorted(got[names[PoseCommand]], key=lambda m: m.stamp_ns)
    grips: list[GripperCommand] = sorted(got[grip_topic], key=lambda m: m.stamp_ns) if grip_topic else []
    # Poses in the camera's base frame: a driver may state them in another one (the UR's
    # tcp_pose_broadcaster uses `base`, its controller `base_link`); the bag's TF relates them.
    base = graph.topics[names[RGBD]].options.base_frame
    states = [_in_frame(s, base, reader.tf, path, _ros_names(graph, names[RobotState])) for s in states]
    targets = [_in_frame(t, base, reader.tf, path, _ros_names(graph, names[PoseCommand])) for t in targets]
    labels = {RGBD: "camera", RobotState: "robot state", PoseCommand: "commands"}
    for cls, stream in ((RGBD, frames), (RobotState, states), (PoseCommand, targets)):
        if not stream:
            spec = graph.topics[names[cls]]
            needs = (f" (each pose needs a {spec.ros_topics['joints']} message with the gripper joints {list(spec.options.gripper_joints)} "
                     f"stamped within {STATE_MAX_AGE_S} s before it)") if cls is RobotState else ""
            raise BagError(f"{path}: no complete {labels[cls]} messages on {_ros_names(graph, names[cls])}{needs}")
    frame_ns = np.array([f.stamp_ns for f in frames], np.int64)
    state_ns = np.array([s.stamp_ns for s in states], np.int64)
    target_ns = np.array([t.stamp_ns for t in targets], np.int64)
    start, end = overlap_window(
        {f"{labels[cls]} {_ros_names(graph, names[cls])}": stamps for cls, stamps in ((RGBD, frame_ns), (RobotState, state_ns), (PoseCommand, target_ns))},
        {f"{labels[RobotState]} {_ros_names(graph, names[RobotState])}": int(STATE_MAX_AGE_S * 1e9),
         f"{labels[PoseCommand]} {_ros_names(graph, names[PoseCommand])}": int(COMMAND_MAX_AGE_S * 1e9)},
        min_overlap_s, path)
    inside = np.flatnonzero((frame_ns >= start) & (frame_ns <= end))
    trimmed = (int(inside[0]), int(len(frames) - 1 - inside[-1]))
    frames, frame_ns = frames[inside[0]: inside[-1] + 1], frame_ns[inside[0]: inside[-1] + 1]
    try:
        picked = frames_at_rate(frame_ns, rate_hz)
    except StreamGap as err:
        raise BagError(f"{path}: camera stream {_ros_names(graph, names[RGBD])}: {err}") from None
    obs = frame_ns[picked]
    state_index = latest_at(state_ns, obs, int(STATE_MAX_AGE_S * 1e9))
    if np.any(state_index < 0):
        k = int(np.flatnonzero(state_index < 0)[0])
        raise BagError(f"{path}: robot state stream {_ros_names(graph, names[RobotState])}: no state within {STATE_MAX_AGE_S} s "
                       f"before the frame at {(obs[k] - obs[0]) / 1e9:.2f} s")
    ee_position = np.array([states[i].position for i in state_index])
    ee_orientation = np.array([states[i].orientation for i in state_index])
    gripper = np.array([states[i].gripper for i in state_index])
    times = chunk_times(obs, horizon, 1.0 / rate_hz)
    # Every observation lies after the first command; past the last one, the last holds.
    ti = latest_at(target_ns, times.ravel()).reshape(times.shape)
    action_position = np.array([t.position for t in targets])[ti]
    action_orientation = np.array([t.orientation for t in targets])[ti]
    if grip_topic is not None:
        gi = latest_at(np.array([g.stamp_ns for g in grips], np.int64), times.ravel()).reshape(times.shape)
        grip_values = np.array([g.position for g in grips] or [0.0])
        action_gripper = np.where(gi >= 0, grip_values[np.clip(gi, 0, None)], gripper[:, None])
    else:  # no gripper commands recorded: what the gripper did stands for what it was told
        si = latest_at(state_ns, times.ravel()).reshape(times.shape)
        action_gripper = np.array([s.gripper for s in states])[si]
    truth = None
    if truth_topic is not None and got[truth_topic]:
        by_stamp = {k.stamp_ns: k for k in got[truth_topic]}
        truth = [by_stamp.get(t) for t in obs]
        if any(k is None for k in truth):
            truth = None  # only some frames have ground truth: not usable as oracle keypoints
    return EpisodeStreams(path.name, obs, [frames[i] for i in picked], ee_position, ee_orientation, gripper,
                          action_position, action_orientation, action_gripper, truth, trimmed)
