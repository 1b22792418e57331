"""`kil bench safety`: the safety node against generated adversarial, irregularly timed input.

A schedule (`Schedule`, drawn at random here, by hypothesis in the tests) says how a robot
behaves and how messages reach the safety node: a robot that starts anywhere (outside the
workspace too), follows the command with a lag, reports its pose late, freezes (blocked) or
stops reporting, in the base frame or another one; interpolator targets at 100 Hz with
jitter, bursts, duplicates, gaps, NaN, jumps out of the box, future, stale and zero stamps,
and frames TF does or does not know; keypoints and chunks at 10 Hz, some stamped in the
future; e-stop presses, releases and clear requests. `run_schedule` plays it against the
real `Safety` stage on a simulated clock (events between its control ticks are delivered in
time order) and `check` measures the command stream between output stamps: box, step,
speed, acceleration, angular speed and acceleration, NaN, stamps, tracking error.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from scipy.spatial.transform import Rotation

from kil.control.limits import SafetyLimits
from kil.errors import MessageError
from kil.geometry import pose_to_matrix
from kil.msgs import ActionChunk, EStop, GripperCommand, Keypoints, PoseCommand, RobotState
from kil.rigs import load_rig
from kil.runtimes.tf import TransformBuffer

START_NS = 1_000_000_000_000  # the clock starts at 1000 s, so a zero stamp is an old one
OTHER_FRAME = "calibrated_frame"  # a frame TF knows (a static transform from the base frame)
UNKNOWN_FRAME = "camera_frame_nobody_published"
ROBOTS = ("follow", "lag", "freeze", "stop")
STATE_FRAMES = ("base", "other", "unknown", "mixed")
EPS = 1e-9


@dataclass(frozen=True)
class Schedule:
    """One generated situation (times in seconds from the start, distances in metres)."""

    seed: int = 0
    duration_s: float = 3.0
    robot: str = "follow"  # follow | lag (states arrive late) | freeze (blocked at freeze_at_s) | stop (states stop at freeze_at_s)
    robot_tau_s: float = 0.05  # first-order lag of the arm behind the command
    state_delay_s: float = 0.0  # "lag": how late each state arrives after its stamp
    freeze_at_s: float = 1.0
    state_rate_hz: float = 100.0
    state_frame: str = "base"  # base | other (TF knows it) | unknown | mixed (some of each)
    start_outside: tuple[float, float, float] = (0.0, 0.0, 0.0)  # start pose offset beyond the box, per axis
    start_turn: tuple[float, float, float] = (0.0, 0.0, 0.0)  # start orientation, rotation vector (rad)
    target_spread: float = 0.3  # targets within the box grown by this much (outside it too)
    target_hold_s: float = 0.3  # mean time a target goal is kept
    burst_rate: float = 0.05  # per target delivery: probability of a burst of 2-10 messages at one instant
    duplicate_rate: float = 0.05
    gap_rate: float = 0.01  # per delivery: probability of a gap of 0.05-0.5 s without targets
    bad_stamp_rate: float = 0.02  # per message: future, stale or zero stamp
    nan_rate: float = 0.01
    frame_rate: float = 0.02  # per target: in OTHER_FRAME or UNKNOWN_FRAME
    keypoint_future_rate: float = 0.02
    estop_presses: int = 0
    tick_jitter_s: float = 0.0  # the safety node's own timer fires up to this late

    def __post_init__(self) -> None:
        if self.robot not in ROBOTS:
            raise ValueError(f"robot: one of {ROBOTS}, got {self.robot!r}")
        if self.state_frame not in STATE_FRAMES:
            raise ValueError(f"state_frame: one of {STATE_FRAMES}, got {self.state_frame!r}")


def random_schedule(rng: np.random.Generator, duration_s: float = 3.0) -> Schedule:
    """A schedule with every knob drawn at random (the benchmark's generator)."""
    outside = rng.uniform(-0.15, 0.15, 3) * (rng.random(3) < 0.5) * (rng.random() < 0.5)
    return Schedule(
        seed=int(rng.integers(2**31)), duration_s=duration_s, robot=str(rng.choice(ROBOTS)),
        robot_tau_s=float(rng.uniform(0.01, 0.2)), state_delay_s=float(rng.uniform(0.0, 0.3)),
        freeze_at_s=float(rng.uniform(0.2, duration_s)), state_rate_hz=float(rng.choice([30.0, 50.0, 100.0, 500.0])),
        state_frame=str(rng.choice(STATE_FRAMES, p=[0.55, 0.25, 0.05, 0.15])), start_outside=tuple(outside),
        start_turn=tuple(rng.normal(0, 1.0, 3)), target_spread=float(rng.uniform(0.0, 0.5)),
        target_hold_s=float(rng.uniform(0.02, 1.0)), burst_rate=float(rng.uniform(0, 0.2)),
        duplicate_rate=float(rng.uniform(0, 0.2)), gap_rate=float(rng.uniform(0, 0.05)),
        bad_stamp_rate=float(rng.uniform(0, 0.1)), nan_rate=float(rng.uniform(0, 0.05)),
        frame_rate=float(rng.uniform(0, 0.1)), keypoint_future_rate=float(rng.uniform(0, 0.05)),
        estop_presses=int(rng.integers(0, 3)), tick_jitter_s=float(rng.choice([0.0, 0.0, 0.002, 0.02])),
    )


@dataclass
class Outcome:
    """What a schedule produced: the commands, and what the checks need beside them."""

    stamps_ns: np.ndarray  # (K,)
    positions: np.ndarray  # (K, 3), base frame
    rotations: list[Rotation]
    references: list[tuple[np.ndarray, Rotation] | None]  # newest valid measured pose at each command (truth)
    start: tuple[np.ndarray, Rotation] | None  # the measured pose the first command started from
    grippers: list[float]
    ticks: int
    tick_ns: list[int] = field(default_factory=list)  # wall time per tick
    rejections: dict[str, int] = field(default_factory=dict)


class _IO:
    """The runtime a stage sees (publish, clock, topics, TF, log), on a simulated clock."""

    def __init__(self, ports: set[str]) -> None:
        self.now = START_NS
        self.tf = TransformBuffer()
        self.published: list[tuple[str, object]] = []
        self.ports = ports
        self.log = logging.getLogger("kil.bench.safety")

    def publish(self, port: str, msg: object) -> None:
        self.published.append((port, msg))

    def now_ns(self) -> int:
        return self.now

    def topic(self, port: str):
        return SimpleNamespace(name=f"/kil/{port}") if port in self.ports else None

    def lookup_transform(self, parent: str, child: str, stamp_ns: int | None = None) -> np.ndarray:
        return self.tf.lookup(parent, child, stamp_ns)


def _events(schedule: Schedule, limits: SafetyLimits, rng: np.random.Generator) -> list[tuple[int, int, str, object]]:
    """(time, order, kind, payload) of every input, except the robot states (they depend on
    the commands)."""
    s = schedule
    end = START_NS + int(s.duration_s * 1e9)
    lo, hi = np.asarray(limits.workspace_min) - s.target_spread, np.asarray(limits.workspace_max) + s.target_spread
    events: list[tuple[int, int, str, object]] = []
    order = itertools.count()

    def stamp_for(t: int) -> int:
        if rng.random() >= s.bad_stamp_rate:
            return t - int(rng.uniform(0, 3e6))  # a few ms of latency
        return int(rng.choice([t + int(rng.uniform(0.06, 3600) * 1e9), t - int(rng.uniform(0.03, 5) * 1e9), 0]))

    # Interpolator targets.
    goal, goal_q, change_at, t = rng.uniform(lo, hi), Rotation.random(random_state=rng).as_quat(), 0, START_NS
    while t < end:
        if t >= change_at:
            goal = rng.uniform(lo, hi) if rng.random() < 0.5 else goal + rng.normal(0, 0.03, 3)
            goal_q = Rotation.random(random_state=rng).as_quat() if rng.random() < 0.3 else goal_q
            change_at = t + int(rng.exponential(s.target_hold_s) * 1e9)
        burst = int(rng.integers(2, 11)) if rng.random() < s.burst_rate else 1
        for _ in range(burst):
            p = goal + (rng.normal(0, 0.05, 3) if burst > 1 else 0)
            q = goal_q
            if rng.random() < s.nan_rate:
                p = np.array([np.nan, 0.0, 0.0])
            frame = "base"
            if rng.random() < s.frame_rate:
                frame = str(rng.choice([OTHER_FRAME, UNKNOWN_FRAME]))
            msg = ("target", (stamp_for(t), frame, np.asarray(p, float), np.asarray(q, float)))
            events.append((t, next(order), *msg))
            if rng.random() < s.duplicate_rate:
                events.append((t + int(rng.uniform(0, 5e6)), next(order), *msg))
        t += int(rng.uniform(0.008, 0.012) * 1e9)
        if rng.random() < s.gap_rate:
            t += int(rng.uniform(0.05, 0.5) * 1e9)
        if rng.random() < 0.02:
            events.append((t, next(order), "gripper", float(rng.choice([rng.uniform(-0.1, 0.2), np.nan]))))
    # Keypoints and chunks at 10 Hz (camera latency 30-150 ms), some stamped in the future.
    for kind in ("keypoints", "chunk"):
        t = START_NS
        while t < end:
            stamp = t - int(rng.uniform(0.03, 0.15) * 1e9)
            if rng.random() < s.keypoint_future_rate:
                stamp = t + int(rng.uniform(0.2, 3600) * 1e9)
            events.append((t, next(order), kind, stamp))
            t += int(rng.uniform(0.08, 0.12) * 1e9)
            if rng.random() < s.gap_rate:
                t += int(rng.uniform(0.2, 1.0) * 1e9)
    # E-stop: pressed, released a while later, cleared (sometimes before the release: refused).
    for _ in range(s.estop_presses):
        press = START_NS + int(rng.uniform(0, s.duration_s) * 1e9)
        release = press + int(rng.uniform(0.05, 1.0) * 1e9)
        events.append((press, next(order), "estop", True))
        events.append((release, next(order), "estop", False))
        for _ in range(2):
            events.append((press + int(rng.uniform(0, 1.5) * 1e9), next(order), "clear", None))
    return sorted(events, key=lambda e: (e[0], e[1]))


def run_schedule(rig: str, schedule: Schedule, time_ticks: bool = False) -> Outcome:
    """Play a schedule against the safety stage of `rig` (its limits, base frame, defaults)."""
    from kil.stages.safety import Safety, SafetyConfig

    rig_config = load_rig(rig)
    limits, base = rig_config.safety, rig_config.base_frame
    rng = np.random.default_rng(schedule.seed)
    io = _IO({"target", "gripper", "state", "keypoints", "chunk", "estop"})
    other = pose_to_matrix(rng.normal(0, 0.3, 3), Rotation.random(random_state=rng).as_quat())
    io.tf.set_transform(base, OTHER_FRAME, other, 0, static=True)
    to_other = np.linalg.inv(other)
    stage = Safety(SafetyConfig(rig=rig), io)
    events = _events(schedule, limits, rng)
    period = int(round(1e9 / limits.rate_hz))
    end = START_NS + int(schedule.duration_s * 1e9)

    # The arm: true pose (base frame) and its history, for states stamped in the past.
    lo, hi = np.asarray(limits.workspace_min), np.asarray(limits.workspace_max)
    inside = rng.uniform(lo, hi)
    out = np.asarray(schedule.start_outside)
    arm_p = np.where(out > 0, hi + out, np.where(out < 0, lo + out, inside))
    arm_r = Rotation.from_rotvec(schedule.start_turn) * Rotation.from_quat([1.0, 0.0, 0.0, 0.0])
    history = [(START_NS - 10**9, arm_p.copy(), arm_r)]
    change_ns = START_NS + schedule.freeze_at_s * 1e9

    def moving(t: int) -> bool:
        return not (schedule.robot == "freeze" and t >= change_ns)

    def reporting(t: int) -> bool:
        return not (schedule.robot == "stop" and t >= change_ns)
    delay = int(schedule.state_delay_s * 1e9) if schedule.robot == "lag" else 0
    state_period = int(1e9 / schedule.state_rate_hz)

    def state_events(after: int, until: int) -> list[tuple[int, int, str, object]]:
        """States measured in (after, until], delivered `delay` later."""
        found = []
        first = (after // state_period + 1) * state_period
        for stamp in range(first, until + 1, state_period):
            if not reporting(stamp):
                continue
            frame = {"base": "base", "other": OTHER_FRAME, "unknown": UNKNOWN_FRAME}.get(schedule.state_frame) or \
                str(rng.choice(["base", OTHER_FRAME, UNKNOWN_FRAME], p=[0.6, 0.3, 0.1]))
            found.append((stamp + delay, -1, "state", (stamp, frame)))
        return found

    def pose_at(stamp: int) -> tuple[np.ndarray, Rotation]:
        """The arm's pose at the newest tick at or before `stamp`."""
        for t, p, r in reversed(history):
            if t <= stamp:
                return p, r
        return history[0][1], history[0][2]

    next_event = 0
    commands: list[PoseCommand] = []
    references, grippers, tick_ns = [], [], []
    reference: tuple[int, np.ndarray, Rotation] | None = None
    start = None
    ticks = 0
    t_tick = START_NS + period
    last_state_scan = START_NS - period
    max_future = stage.config.max_future_s * 1e9
    while t_tick <= end:
        fire = t_tick + (int(rng.uniform(0, schedule.tick_jitter_s) * 1e9) if schedule.tick_jitter_s else 0)
        first = next_event
        while next_event < len(events) and events[next_event][0] <= fire:
            next_event += 1
        batch = events[first:next_event] + state_events(last_state_scan, fire - delay)
        last_state_scan = fire - delay
        for t, _, kind, payload in sorted(batch, key=lambda e: (e[0], e[1])):
            io.now = max(io.now, t)
            if kind == "state":
                stamp, frame = payload
                p, r = pose_at(stamp)
                if frame == OTHER_FRAME:
                    T = to_other @ pose_to_matrix(p, r.as_quat())
                    msg_p, msg_q = T[:3, 3], Rotation.from_matrix(T[:3, :3]).as_quat()
                else:
                    msg_p, msg_q = p, r.as_quat()
                stage.on_state(RobotState(stamp, base if frame == "base" else frame, msg_p, msg_q, 0.04))
                fresh = io.now - stamp <= stage.config.state_max_age_s * 1e9 and stamp - io.now <= max_future
                if frame != UNKNOWN_FRAME and fresh and (reference is None or stamp >= reference[0]):
                    reference = (stamp, p.copy(), r)
            elif kind == "target":
                stamp, frame, p, q = payload
                try:
                    target = PoseCommand(stamp_ns=max(stamp, 0), frame_id=base if frame == "base" else frame, position=p, orientation=q)
                except MessageError:
                    continue  # NaN: no runtime delivers such a message (its converter refuses it)
                stage.on_target(target)
            elif kind == "gripper":
                if math.isfinite(payload) and payload >= 0:
                    stage.on_gripper(GripperCommand(stamp_ns=io.now, position=payload))
            elif kind == "keypoints":
                stage.on_keypoints(_keypoints(payload, base))
            elif kind == "chunk":
                stage.on_chunk(ActionChunk(payload, base, 0.1, np.zeros((2, 3)), np.tile([0.0, 0.0, 0.0, 1.0], (2, 1)), np.zeros(2)))
            elif kind == "estop":
                stage.on_estop(EStop(io.now, engaged=payload))
            elif kind == "clear":
                stage.clear_estop()
        io.now = max(io.now, fire)
        before = len(io.published)
        began = time.perf_counter_ns()
        stage.tick()
        if time_ticks:
            tick_ns.append(time.perf_counter_ns() - began)
        ticks += 1
        for port, msg in io.published[before:]:
            if port == "command":
                if not commands:
                    start = None if reference is None else (reference[1], reference[2])
                commands.append(msg)
                fresh = reference is not None and io.now - reference[0] <= stage.config.state_max_age_s * 1e9
                references.append((reference[1], reference[2]) if fresh else None)
            elif port == "gripper":
                grippers.append(msg.position)
        # The arm moves toward the newest command (unless blocked).
        if moving(io.now) and commands:
            c = commands[-1]
            dt = (io.now - history[-1][0]) / 1e9
            share = 1.0 - math.exp(-dt / schedule.robot_tau_s)
            arm_p = arm_p + share * (c.position - arm_p)
            turn = (Rotation.from_quat(c.orientation) * arm_r.inv()).as_rotvec()
            arm_r = Rotation.from_rotvec(share * turn) * arm_r
        history.append((io.now, arm_p.copy(), arm_r))
        if len(history) > 200:
            history = history[-200:]
        t_tick += period
    return Outcome(
        stamps_ns=np.array([c.stamp_ns for c in commands], np.int64),
        positions=np.array([c.position for c in commands]).reshape(-1, 3),
        rotations=[Rotation.from_quat(c.orientation) for c in commands],
        references=references, start=start, grippers=grippers, ticks=ticks, tick_ns=tick_ns,
        rejections=dict(stage.rejections),
    )


def _keypoints(stamp: int, frame: str) -> Keypoints:
    return Keypoints(stamp_ns=stamp, frame_id=frame, names=("a",), uv=np.zeros((1, 2), np.float32),
                     xyz=np.zeros((1, 3), np.float32), score=np.ones(1, np.float32), visible=np.ones(1, bool),
                     instance=np.zeros(1, np.int32))


VIOLATIONS = ("stamps", "nan", "box", "step", "speed", "acceleration", "angular speed", "angular acceleration",
              "tracking", "gripper", "start jump")


def check(outcome: Outcome, limits: SafetyLimits, track: bool = True) -> dict[str, int]:
    """Violations per kind on the command stream, measured between output stamps (velocity
    v_k = dp_k / dt_k from rest before the first command, acceleration (v_k - v_{k-1}) / dt_k).
    The acceleration caps are exempt across a tick late by more than max_step / max_speed
    (then the step cap must win: the arm waited, it cannot catch up). `track`: check the
    tracking bound (+ one step) against the newest valid measured pose."""
    v = dict.fromkeys(VIOLATIONS, 0)
    p = outcome.positions
    if len(p) == 0:
        return v
    v["stamps"] = int((np.diff(outcome.stamps_ns) <= 0).sum())
    quats = np.array([r.as_quat() for r in outcome.rotations])
    v["nan"] = int((~np.isfinite(p).all(axis=1) | ~np.isfinite(quats).all(axis=1)).sum())
    lo, hi = np.asarray(limits.workspace_min), np.asarray(limits.workspace_max)
    outside = np.linalg.norm(p - np.clip(p, lo, hi), axis=1)
    v["box"] = int((np.diff(outside) > 1e-9).sum())  # never further out; once in, in for good
    if outcome.start is not None:
        start_p, start_r = outcome.start
        v["start jump"] = int(np.linalg.norm(p[0] - start_p) > limits.max_step + EPS)
        path = np.vstack([start_p, p])
        rotations = [start_r, *outcome.rotations]
        dt = np.concatenate([[1.0 / limits.rate_hz], np.diff(outcome.stamps_ns) / 1e9])  # ns differences: exact
    else:
        path, rotations, dt = p, outcome.rotations, np.diff(outcome.stamps_ns) / 1e9
        v["start jump"] = 1
    dt = np.maximum(dt, 1e-9)  # two commands at one instant: counted under "stamps", and as the speed they imply
    steps = np.diff(path, axis=0)
    v["step"] = int((np.linalg.norm(steps, axis=1) > limits.max_step + EPS).sum())
    velocity = steps / dt[:, None]
    v["speed"] = int((np.linalg.norm(velocity, axis=1) > limits.max_speed + 1e-7).sum())
    relaxed = dt > limits.max_step / limits.max_speed + 1e-6  # a late tick: the step cap wins
    exempt = relaxed | np.concatenate([[False], relaxed[:-1]])
    accel = np.diff(np.vstack([np.zeros(3), velocity]), axis=0) / dt[:, None]
    # 1e-4 m/s^2: rounding of positions (~1e-16 m) over the square of a short dt
    v["acceleration"] = int(((np.linalg.norm(accel, axis=1) > limits.max_acceleration + 1e-4) & ~exempt).sum())
    omega = np.array([(b * a.inv()).as_rotvec() for a, b in zip(rotations, rotations[1:])]).reshape(-1, 3) / dt[:, None]
    v["angular speed"] = int((np.linalg.norm(omega, axis=1) > limits.max_angular_speed + 1e-6).sum())
    alpha = np.diff(np.vstack([np.zeros(3), omega]), axis=0) / dt[:, None]
    v["angular acceleration"] = int(((np.linalg.norm(alpha, axis=1) > limits.max_angular_acceleration + 1e-4) & ~exempt).sum())
    if track:
        bound = limits.max_tracking_error
        for k, ref in enumerate(outcome.references):
            if ref is None:
                continue
            distance = float(np.linalg.norm(p[k] - ref[0]))
            angle = float((outcome.rotations[k] * ref[1].inv()).magnitude())
            if distance > bound.position + limits.max_step + 1e-6 or angle > bound.angle + limits.max_angular_speed / limits.rate_hz + 1e-6:
                v["tracking"] += 1
    v["gripper"] = sum(not (limits.gripper_min <= g <= limits.gripper_max) for g in outcome.grippers)
    return v


def bench(rigs: list[str], ticks: int, seed: int) -> int:
    """Random schedules per rig until `ticks` control ticks have run; prints, per rig, the
    violations of each kind (all must be 0), what the schedules covered, and the time per
    tick. Returns 1 if any violation was found."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    logging.getLogger("kil.bench.safety").setLevel(logging.CRITICAL)  # thousands of rejections, by design
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, str]] = {}
    failed = False
    for rig in rigs:
        limits = load_rig(rig).safety
        totals = dict.fromkeys(VIOLATIONS, 0)
        cover = {"schedules": 0, "ticks": 0, "commands": 0, "started outside the box": 0, "arm blocked": 0,
                 "states late": 0, "states stop": 0, "states in another frame": 0, "late ticks": 0, "e-stop presses": 0}
        rejected: dict[str, int] = {}
        times: list[int] = []
        with Progress() as progress:
            task = progress.add_task(f"{rig}: ticks", total=ticks)
            while cover["ticks"] < ticks:
                schedule = random_schedule(rng)
                outcome = run_schedule(rig, schedule, time_ticks=True)
                for kind, n in check(outcome, limits).items():
                    totals[kind] += n
                for kind, n in outcome.rejections.items():  # "<port>: future stamp" and the like
                    what = kind.split(": ", 1)[-1]
                    what = "unknown frames" if what.startswith("frame ") else what + "s"
                    if what in ("future stamps", "stale stamps", "unknown frames"):
                        rejected[what] = rejected.get(what, 0) + n
                cover["schedules"] += 1
                cover["ticks"] += outcome.ticks
                cover["commands"] += len(outcome.positions)
                cover["started outside the box"] += any(schedule.start_outside)
                cover["arm blocked"] += schedule.robot == "freeze"
                cover["states late"] += schedule.robot == "lag"
                cover["states stop"] += schedule.robot == "stop"
                cover["states in another frame"] += schedule.state_frame != "base"
                cover["late ticks"] += schedule.tick_jitter_s > 0
                cover["e-stop presses"] += schedule.estop_presses
                times += outcome.tick_ns
                progress.update(task, completed=min(cover["ticks"], ticks))
        us = np.percentile(np.array(times) / 1e3, [50, 90, 100])
        failed |= any(totals.values())
        column = {f"violations: {k}": str(n) for k, n in totals.items()}
        column |= {k: str(n) for k, n in cover.items()}
        column |= {f"inputs rejected: {k}": str(n) for k, n in sorted(rejected.items())}
        column["tick time us p50 / p90 / max"] = f"{us[0]:.0f} / {us[1]:.0f} / {us[2]:.0f}"
        rows[rig] = column
    table = Table(title=f"kil bench safety: generated adversarial schedules of 3 s, >= {ticks} ticks per rig, seed {seed}")
    table.add_column("")
    for rig in rigs:
        table.add_column(rig, justify="right")
    for key in dict.fromkeys(k for column in rows.values() for k in column):
        table.add_row(key, *(rows[rig].get(key, "0") for rig in rigs))
    Console(width=120).print(table)
    return 1 if failed else 0
