"""Safety node between the interpolator and the robot: every pose target passes through it.

It commands the robot on its own control tick, never per message: each tick takes the
newest acceptable target and sends at most one command, stamped with the tick's time
(strictly increasing), through the `SafetyFilter` (workspace box, step, speed, acceleration
and angular caps measured between those stamps, bounded tracking error against the measured
EE pose). Bursts, duplicates, gaps and late targets therefore change nothing about the caps.

It brakes to a stop within the caps and holds when
  - the e-stop is engaged (latched until `clear_estop`, which is refused while the e-stop
    source still reports engaged);
  - the newest keypoints, chunk or measured robot pose are older than their limit, or the
    interpolator's targets stop (`silence_ticks` periods);
  - the target is not finite or cannot be brought into the base frame;
and resumes from where it is, within the caps, when all is well again.

Stamp sanity: a keypoints, chunk, target or robot-state message stamped more than
`max_future_s` ahead of this node's clock, or already older than its watchdog limit, is
ignored (it refreshes no watchdog and moves nothing); each kind of rejection is logged once,
with the topic and the offset. Targets and robot states in another frame than the rig's base
frame are transformed through TF, or rejected with both frame names.
Nothing is sent before the first target, and the first command is the measured pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kil.config import require
from kil.control.frames import pose_in_frame
from kil.control.safety_filter import RATE_LIMITED, SafetyFilter
from kil.errors import TransformError
from kil.msgs import ActionChunk, EStop, GripperCommand, Keypoints, PoseCommand, RobotState
from kil.rigs import load_rig
from kil.stage import Stage, every, service, subscribe

REPEAT_LOG_AFTER_NS = 1_000_000_000  # a hold reason that went away and came back within 1 s is not logged again


@dataclass(frozen=True)
class SafetyConfig:
    rig: str = "sim"  # config/rigs/<rig>.yaml: its base frame and `safety` limits are enforced
    keypoint_max_age_s: float = 0.5  # hold when the newest keypoints are older (0: no watchdog)
    chunk_max_age_s: float = 2.0  # hold when the newest chunk's observation is older (0: no watchdog); a chunk spans 1.5 s
    state_max_age_s: float = 0.2  # hold when the newest measured EE pose is older (0: no watchdog)
    silence_ticks: float = 2.5  # hold when the interpolator's newest target is older than this many periods
    max_future_s: float = 0.05  # tolerated clock skew: inputs stamped further ahead are rejected

    def __post_init__(self) -> None:
        load_rig(self.rig)  # an unknown rig or an invalid rig file fails at load time
        for name in ("keypoint_max_age_s", "chunk_max_age_s", "state_max_age_s", "max_future_s"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
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
    live_params = frozenset({"keypoint_max_age_s", "chunk_max_age_s", "state_max_age_s", "silence_ticks", "max_future_s"})

    def __init__(self, config: SafetyConfig, io) -> None:
        super().__init__(config, io)
        rig = load_rig(config.rig)
        self.limits, self.base_frame = rig.safety, rig.base_frame
        self.period_ns = int(round(1e9 / self.limits.rate_hz))
        self.filter: SafetyFilter | None = None  # created at the first command, from the measured pose
        self.measured: tuple[int, np.ndarray, Rotation] | None = None  # newest accepted (stamp, position, rotation)
        self.target: tuple[int, np.ndarray, np.ndarray] | None = None  # newest accepted (stamp, position, quaternion)
        self.newest_ns: dict[str, int] = {}  # keypoints / chunk: newest accepted stamp
        self.estop = False  # latched
        self.estop_source_engaged = False  # what the e-stop topic said last
        self.pending_gripper: GripperCommand | None = None
        self.last_command_ns: int | None = None
        self.holding = False
        self.resumed_ns: int | None = None
        self.seen: dict[str, int] = {}  # reason -> when it was last in force
        self.rejections: dict[str, int] = {}  # reason or rejection kind -> how many times it started

    # -- inputs ---------------------------------------------------------------------------
    def _sane(self, port: str, stamp_ns: int, max_age_s: float) -> bool:
        """Whether a stamp may refresh a watchdog or drive the robot; logs each kind of
        rejection once per port, with the topic and the offset."""
        offset = (stamp_ns - self.io.now_ns()) / 1e9
        if offset > self.config.max_future_s:
            self._reject(f"{port}: future stamp", f"{port} on {self._topic(port)} stamped {offset:.3f} s in the future "
                         f"(tolerance max_future_s {self.config.max_future_s:g} s): ignored")
            return False
        if max_age_s > 0 and -offset > max_age_s:
            self._reject(f"{port}: stale stamp", f"{port} on {self._topic(port)} arrived {-offset:.3f} s old "
                         f"(limit {max_age_s:g} s): ignored")
            return False
        return True

    def _in_base_frame(self, port: str, frame: str, stamp_ns: int, position, orientation):
        try:
            return pose_in_frame(self.io, self.base_frame, frame, stamp_ns, position, orientation)
        except TransformError as err:
            self._reject(f"{port}: frame {frame}", f"{port} on {self._topic(port)} in frame {frame!r}: no transform to the "
                         f"base frame {self.base_frame!r} ({err}): ignored")
            return None

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        if not self._sane("state", state.stamp_ns, self.config.state_max_age_s):
            return
        if self.measured is not None and state.stamp_ns < self.measured[0]:
            return  # older than what we have
        pose = self._in_base_frame("state", state.frame_id, state.stamp_ns, state.position, state.orientation)
        if pose is None:
            return
        position, orientation = pose
        if not (np.isfinite(position).all() and np.isfinite(orientation).all()) or np.linalg.norm(orientation) < 1e-6:
            self._reject("state: not finite", f"state on {self._topic('state')}: pose not finite: ignored")
            return
        self.measured = (state.stamp_ns, position, Rotation.from_quat(orientation))

    @subscribe(keypoints=Keypoints, optional=True)
    def on_keypoints(self, keypoints: Keypoints) -> None:
        self._refresh("keypoints", keypoints.stamp_ns, self.config.keypoint_max_age_s)

    @subscribe(chunk=ActionChunk, optional=True)
    def on_chunk(self, chunk: ActionChunk) -> None:
        self._refresh("chunk", chunk.stamp_ns, self.config.chunk_max_age_s)

    def _refresh(self, port: str, stamp_ns: int, max_age_s: float) -> None:
        if self._sane(port, stamp_ns, max_age_s):
            self.newest_ns[port] = max(stamp_ns, self.newest_ns.get(port, stamp_ns))

    @subscribe(estop=EStop, optional=True)
    def on_estop(self, msg: EStop) -> None:
        # Whatever its stamp: an e-stop is never second-guessed.
        self.estop_source_engaged = msg.engaged
        if msg.engaged and not self.estop:
            self.estop = True
            self.io.log.error("E-STOP engaged: holding until the clear_estop service is called")

    @service("clear_estop")
    def clear_estop(self) -> tuple[bool, str]:
        if not self.estop:
            return True, "e-stop was not engaged"
        if self.estop_source_engaged:
            message = f"refused: the e-stop source on {self._topic('estop')} still reports engaged; release it first"
            self.io.log.warning("clear_estop %s", message)
            return False, message
        self.estop = False
        self.io.log.warning("e-stop cleared: resuming within the caps")
        return True, "e-stop cleared"

    @subscribe(target=PoseCommand)
    def on_target(self, target: PoseCommand) -> None:
        if not self._sane("target", target.stamp_ns, self.config.silence_ticks / self.limits.rate_hz):
            return
        if self.target is not None and target.stamp_ns < self.target[0]:
            return  # a late message behind a newer one
        pose = self._in_base_frame("target", target.frame_id, target.stamp_ns, target.position, target.orientation)
        if pose is not None:
            self.target = (target.stamp_ns, *pose)

    @subscribe(gripper=GripperCommand)
    def on_gripper(self, command: GripperCommand) -> None:
        self.pending_gripper = command  # sent on the next tick that does not hold

    # -- the control tick -----------------------------------------------------------------
    @every(hz="rate_hz")
    def tick(self) -> None:
        """At most one command per tick, stamped now, at least half a period after the
        previous one (stamps strictly increasing)."""
        now = self.io.now_ns()
        if self.target is None or (self.last_command_ns is not None and now - self.last_command_ns < self.period_ns // 2):
            return  # nothing asked for yet, or a timer catching up right after a late tick
        hold = self.hold_reasons(now)
        state_fresh = self.state_fresh(now)
        if self.filter is None:
            if not state_fresh:
                self._report(hold | {"no fresh robot state: nothing sent"}, now, True)
                return
            _, position, rotation = self.measured
            self.filter = SafetyFilter(self.limits, position, rotation.as_quat())
            dt = 1.0 / self.limits.rate_hz
        else:
            dt = (now - self.last_command_ns) / 1e9
        _, position, orientation = self.target
        if hold:
            position = orientation = None
        measured = self.measured[1:] if state_fresh else None
        p, q, limited = self.filter.step(dt, position, orientation, measured)
        if hold:
            limited.discard("no target: holding")  # the hold reasons say why
        self.io.publish("command", PoseCommand(stamp_ns=now, frame_id=self.base_frame, position=p, orientation=q))
        self.last_command_ns = now
        if not hold:
            self._send_gripper()
        self._report(hold | limited, now, bool(hold))

    def hold_reasons(self, now: int) -> set[str]:
        """Why the robot must not move now (empty: it may)."""
        reasons = set()
        if self.estop:
            reasons.add("e-stop engaged: holding")
        for port, limit in (("keypoints", self.config.keypoint_max_age_s), ("chunk", self.config.chunk_max_age_s)):
            if limit > 0 and self.io.topic(port) is not None:
                newest = self.newest_ns.get(port)
                if newest is None or now - newest > limit * 1e9:
                    reasons.add(f"{port} older than {limit:g} s: holding")
        if self.measured is None:
            reasons.add("no robot state yet: holding")
        elif not self.state_fresh(now):
            reasons.add(f"robot state older than {self.config.state_max_age_s:g} s: holding")
        if now - self.target[0] > self.config.silence_ticks * self.period_ns:
            reasons.add("no target from the interpolator: holding")
        return reasons

    def state_fresh(self, now: int) -> bool:
        limit = self.config.state_max_age_s
        return self.measured is not None and (limit <= 0 or now - self.measured[0] <= limit * 1e9)

    def _send_gripper(self) -> None:
        if self.pending_gripper is None:
            return  # a held robot keeps its gripper too; the newest command goes out on resume
        command, self.pending_gripper = self.pending_gripper, None
        opening, reasons = self.filter.gripper(command.position)
        for reason in reasons:
            self._reject(reason, reason)
        if opening is not None:
            self.io.publish("gripper", GripperCommand(stamp_ns=self.io.now_ns(), position=opening, max_effort=command.max_effort))

    # -- reporting ------------------------------------------------------------------------
    def _topic(self, port: str) -> str:
        topic = self.io.topic(port)
        return topic.name if topic is not None else port

    def _reject(self, kind: str, message: str) -> None:
        """Count a rejected input; log the first of each kind."""
        if kind not in self.rejections:
            self.io.log.warning("safety: %s", message)
        self.rejections[kind] = self.rejections.get(kind, 0) + 1

    def _report(self, reasons: set[str], now: int, holding: bool) -> None:
        """Log each reason when it starts (not once per tick, nor again when it flickers
        within a second), and when the robot may move again after a hold (at most once a
        second, so a watchdog at its limit does not flood the log)."""
        for reason in sorted(reasons - RATE_LIMITED):
            last = self.seen.get(reason)
            if last is None or now - last > REPEAT_LOG_AFTER_NS:
                self.rejections[reason] = self.rejections.get(reason, 0) + 1
                self.io.log.warning("safety: %s", reason)
            self.seen[reason] = now
        if self.holding and not holding and (self.resumed_ns is None or now - self.resumed_ns > REPEAT_LOG_AFTER_NS):
            self.resumed_ns = now
            self.io.log.info("safety: inputs fresh again, resuming")
        self.holding = holding


STAGE = Safety
