"""Safety layer between the interpolator and the robot: every pose target passes through it.

The filter turns whatever target arrives (NaN, a jump across the table, a point outside the
workspace, nothing at all) into the next commanded pose, such that for any input:
  - the commanded position stays inside the workspace box (base frame);
  - linear speed and acceleration, angular speed and acceleration stay within their caps
    (so does the step per tick, speed x period);
  - the command moves towards the target as fast as the caps allow, braking in time for the
    target and the workspace walls.

Translation is limited per axis (speed cap/sqrt(3), acceleration cap/sqrt(3)), so the
vector norms never exceed the caps and each axis can brake for its walls independently.
The `Safety` node wraps the filter with watchdogs: when the newest keypoints or the newest
chunk are older than their limit (the camera or the policy stopped), when the e-stop is
engaged, or when the interpolator falls silent, it brakes to a stop within the acceleration
cap and holds; when the inputs are fresh again it resumes from where it is, within the caps.

Braking uses the discrete-time bound v dt + v^2 / (2a) <= d: a velocity that satisfies it
for the remaining distance d can always be reduced by at most a dt per tick and still
satisfy it, so the feasible velocity interval is never empty (see `_wall_bound`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kil.config import require
from kil.msgs import ActionChunk, EStop, GripperCommand, Keypoints, PoseCommand, RobotState
from kil.stage import Stage, every, service, subscribe

AXIS_SHARE = 1.0 / math.sqrt(3.0)  # per-axis caps whose vector sum stays within the norm caps


@dataclass(frozen=True)
class SafetyLimits:
    workspace_min: tuple[float, float, float] = (0.25, -0.45, -0.12)  # m, base frame
    workspace_max: tuple[float, float, float] = (0.80, 0.45, 0.45)
    max_speed: float = 0.25  # m/s
    max_acceleration: float = 2.0  # m/s^2
    max_angular_speed: float = 1.0  # rad/s
    max_angular_acceleration: float = 8.0  # rad/s^2
    max_step: float = 0.004  # m per tick
    rate_hz: float = 100.0
    gripper_min: float = 0.0  # m
    gripper_max: float = 0.08

    def __post_init__(self) -> None:
        require(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)), "workspace_min",
                f"must be below workspace_max on every axis, got {self.workspace_min} vs {self.workspace_max}")
        for name in ("max_speed", "max_acceleration", "max_angular_speed", "max_angular_acceleration", "max_step", "rate_hz"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        require(0 <= self.gripper_min < self.gripper_max, "gripper_min", f"must be in [0, gripper_max), got {self.gripper_min}")


def _wall_bound(distance: np.ndarray, accel: float, dt: float) -> np.ndarray:
    """Largest speed towards something `distance` away from which the axis can still stop
    in time: v dt + v^2 / (2 accel) <= distance. If v satisfies it for d, the bound for the
    next tick's distance d - v dt is at least v - accel dt (so braking needs at most the cap)."""
    d = np.maximum(distance, 0.0)
    return accel * (-dt + np.sqrt(dt * dt + 2.0 * d / accel))


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v if n <= limit else v * (limit / n)


class SafetyFilter:
    """Commanded pose, one tick at a time; `step(target)` returns the next command and the
    set of reasons the target was not taken as it was (empty when it was)."""

    def __init__(self, limits: SafetyLimits, position: np.ndarray, orientation: np.ndarray) -> None:
        self.limits = limits
        self.dt = 1.0 / limits.rate_hz
        self.lo = np.asarray(limits.workspace_min, float)
        self.hi = np.asarray(limits.workspace_max, float)
        self.position = np.asarray(position, float).copy()
        self.rotation = Rotation.from_quat(np.asarray(orientation, float))
        self.velocity = np.zeros(3)
        self.angular_velocity = np.zeros(3)
        self.axis_speed = min(limits.max_speed, limits.max_step * limits.rate_hz) * AXIS_SHARE
        self.axis_accel = limits.max_acceleration * AXIS_SHARE

    @property
    def orientation(self) -> np.ndarray:
        return self.rotation.as_quat()

    def step(self, position: np.ndarray | None, orientation: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, set[str]]:
        reasons: set[str] = set()
        target_p, target_q = self._sanitise(position, orientation, reasons)
        self._translate(target_p, reasons)
        self._rotate(target_q, reasons)
        return self.position.copy(), self.orientation, reasons

    def gripper(self, opening: float) -> tuple[float | None, set[str]]:
        """A gripper opening within the limits; None (send nothing) for a non-finite one."""
        if not math.isfinite(opening):
            return None, {"gripper not finite"}
        clipped = min(max(opening, self.limits.gripper_min), self.limits.gripper_max)
        return clipped, ({"gripper out of range"} if clipped != opening else set())

    def _sanitise(self, position, orientation, reasons: set[str]) -> tuple[np.ndarray, Rotation]:
        p = None if position is None else np.asarray(position, float)
        q = None if orientation is None else np.asarray(orientation, float)
        if p is None or q is None:
            reasons.add("no target: holding")
            return self.position.copy(), self.rotation
        if p.shape != (3,) or q.shape != (4,) or not (np.isfinite(p).all() and np.isfinite(q).all()) or np.linalg.norm(q) < 1e-6:
            reasons.add("target not finite: holding")
            return self.position.copy(), self.rotation
        clamped = np.clip(p, self.lo, self.hi)
        if not np.array_equal(clamped, p):
            reasons.add("target outside the workspace: clamped")
        return clamped, Rotation.from_quat(q / np.linalg.norm(q))

    def _translate(self, target: np.ndarray, reasons: set[str]) -> None:
        dt, V, A = self.dt, self.axis_speed, self.axis_accel
        error = target - self.position
        # Desired: reach the target, braking for it, as fast as allowed.
        desired = np.sign(error) * np.minimum(np.abs(error) / dt, _wall_bound(np.abs(error), A, dt))
        low = np.maximum.reduce([np.full(3, -V), self.velocity - A * dt, -_wall_bound(self.position - self.lo, A, dt)])
        high = np.minimum.reduce([np.full(3, V), self.velocity + A * dt, _wall_bound(self.hi - self.position, A, dt)])
        velocity = np.clip(desired, low, np.maximum(low, high))  # the interval is never empty; max() guards rounding
        if not np.allclose(velocity, error / dt, atol=1e-9):
            reasons.add("speed limited")
        moved = np.clip(self.position + velocity * dt, self.lo, self.hi)  # the clip only absorbs rounding
        self.velocity = (moved - self.position) / dt
        self.position = moved

    def _rotate(self, target: Rotation, reasons: set[str]) -> None:
        dt, W, A = self.dt, self.limits.max_angular_speed, self.limits.max_angular_acceleration
        error = (target * self.rotation.inv()).as_rotvec()  # base-frame rotation still to go
        angle = float(np.linalg.norm(error))
        wanted = _clip_norm(error / dt, min(W, float(_wall_bound(np.array(angle), A, dt))))
        # Both ends lie in the speed ball, so the step towards `wanted` stays inside it.
        omega = self.angular_velocity + _clip_norm(wanted - self.angular_velocity, A * dt)
        if not np.allclose(omega, error / dt, atol=1e-9):
            reasons.add("turn rate limited")
        self.angular_velocity = omega
        self.rotation = Rotation.from_rotvec(omega * dt) * self.rotation


def load_rig(name: str):
    """The rig description (kil.rigs imports this module for SafetyLimits, hence not at the top)."""
    from kil.rigs import load_rig as load

    return load(name)


@dataclass(frozen=True)
class SafetyConfig:
    rig: str = "sim"  # config/rigs/<rig>.yaml: its base frame and `safety` limits are enforced
    keypoint_max_age_s: float = 0.5  # hold when the newest keypoints are older (0: no watchdog)
    chunk_max_age_s: float = 2.0  # hold when the newest chunk's observation is older (0: no watchdog); a chunk spans 1.5 s
    silence_ticks: float = 2.5  # brake on our own clock when the interpolator skips this many periods

    def __post_init__(self) -> None:
        load_rig(self.rig)  # an unknown rig or an invalid rig file fails at load time
        require(self.keypoint_max_age_s >= 0, "keypoint_max_age_s", f"must be >= 0, got {self.keypoint_max_age_s}")
        require(self.chunk_max_age_s >= 0, "chunk_max_age_s", f"must be >= 0, got {self.chunk_max_age_s}")
        require(self.silence_ticks >= 1, "silence_ticks", f"must be >= 1, got {self.silence_ticks}")

    @property
    def rate_hz(self) -> float:
        return load_rig(self.rig).safety.rate_hz


class Safety(Stage):
    """Interpolator targets in, checked robot commands out (the only path to the robot)."""

    Config = SafetyConfig
    outputs = {"command": PoseCommand, "gripper": GripperCommand}
    # Watchdog limits may be tuned on a running robot (validated like the YAML); the rig and
    # with it the workspace and caps may not.
    live_params = frozenset({"keypoint_max_age_s", "chunk_max_age_s", "silence_ticks"})

    def __init__(self, config: SafetyConfig, io) -> None:
        super().__init__(config, io)
        rig = load_rig(config.rig)
        self.limits, self.base_frame = rig.safety, rig.base_frame
        self.filter: SafetyFilter | None = None  # created from the first robot state
        self.estop = False
        self.newest_keypoints_ns: int | None = None
        self.newest_chunk_ns: int | None = None
        self.last_target_ns: int | None = None
        self.pending_gripper: GripperCommand | None = None
        self.active: set[str] = set()  # reasons in force now; each is logged when it starts
        self.rejections: dict[str, int] = {}  # reason -> how many times it started

    # -- inputs ---------------------------------------------------------------------------
    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        if self.filter is None:
            self.filter = SafetyFilter(self.limits, state.position, state.orientation)

    @subscribe(keypoints=Keypoints, optional=True)
    def on_keypoints(self, keypoints: Keypoints) -> None:
        self.newest_keypoints_ns = max(keypoints.stamp_ns, self.newest_keypoints_ns or 0)

    @subscribe(chunk=ActionChunk, optional=True)
    def on_chunk(self, chunk: ActionChunk) -> None:
        self.newest_chunk_ns = max(chunk.stamp_ns, self.newest_chunk_ns or 0)

    @subscribe(estop=EStop, optional=True)
    def on_estop(self, msg: EStop) -> None:
        if msg.engaged and not self.estop:
            self.estop = True
            self.io.log.error("E-STOP engaged: holding until the clear_estop service is called")

    @service("clear_estop")
    def clear_estop(self) -> tuple[bool, str]:
        if not self.estop:
            return True, "e-stop was not engaged"
        self.estop = False
        self.io.log.warning("e-stop cleared: resuming within the caps")
        return True, "e-stop cleared"

    @subscribe(target=PoseCommand)
    def on_target(self, target: PoseCommand) -> None:
        self.last_target_ns = self.io.now_ns()
        if target.frame_id != self.base_frame:
            self._command(None, None, {f"target in frame {target.frame_id!r}, not {self.base_frame!r}: holding"})
        else:
            self._command(target.position, target.orientation, set())

    @subscribe(gripper=GripperCommand)
    def on_gripper(self, command: GripperCommand) -> None:
        self.pending_gripper = command
        self._send_gripper()

    @every(hz="rate_hz")
    def watchdog(self) -> None:
        """Keeps commanding (braking, then holding) when the interpolator falls silent."""
        period_ns = 1e9 / self.limits.rate_hz
        if self.filter is None or self.last_target_ns is None:
            return
        if self.io.now_ns() - self.last_target_ns > self.config.silence_ticks * period_ns:
            self._command(None, None, {"no target from the interpolator: holding"})

    # -- decisions ------------------------------------------------------------------------
    def stale_reasons(self) -> set[str]:
        """Why the inputs do not allow motion now (empty: they do)."""
        now = self.io.now_ns()
        reasons = set()
        if self.estop:
            reasons.add("e-stop engaged: holding")
        for port, newest, limit in (("keypoints", self.newest_keypoints_ns, self.config.keypoint_max_age_s),
                                    ("chunk", self.newest_chunk_ns, self.config.chunk_max_age_s)):
            if limit <= 0 or self.io.topic(port) is None:
                continue
            if newest is None or now - newest > limit * 1e9:
                reasons.add(f"{port} older than {limit:g} s: holding")
        return reasons

    def _command(self, position, orientation, reasons: set[str]) -> None:
        if self.filter is None:
            self._report(reasons | {"no robot state yet: nothing sent"})
            return
        stale = self.stale_reasons()
        if stale:
            position = orientation = None
        p, q, limited = self.filter.step(position, orientation)
        if stale or reasons:
            limited.discard("no target: holding")  # the reason given says why
        self._report(reasons | stale | limited)
        self.io.publish("command", PoseCommand(stamp_ns=self.io.now_ns(), frame_id=self.base_frame, position=p, orientation=q))
        if not stale:
            self._send_gripper()

    def _send_gripper(self) -> None:
        if self.pending_gripper is None or self.filter is None or self.stale_reasons():
            return  # a held robot keeps its gripper too; the newest command goes out on resume
        command, self.pending_gripper = self.pending_gripper, None
        opening, reasons = self.filter.gripper(command.position)
        self._report_gripper(reasons)
        if opening is not None:
            self.io.publish("gripper", GripperCommand(stamp_ns=command.stamp_ns, position=opening, max_effort=command.max_effort))

    def _report(self, reasons: set[str]) -> None:
        """Log each reason once when it starts (not once per tick), and when all clear."""
        reasons = {r for r in reasons if r not in ("speed limited", "turn rate limited")}  # normal operation, not a rejection
        for reason in sorted(reasons - self.active):
            self.rejections[reason] = self.rejections.get(reason, 0) + 1
            self.io.log.warning("safety: %s", reason)
        if self.active and not reasons:
            self.io.log.info("safety: inputs fresh again, resuming")
        self.active = reasons

    def _report_gripper(self, reasons: set[str]) -> None:
        for reason in reasons:
            if reason not in self.rejections:
                self.io.log.warning("safety: %s", reason)
            self.rejections[reason] = self.rejections.get(reason, 0) + 1


STAGE = Safety
