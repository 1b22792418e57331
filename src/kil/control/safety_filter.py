"""The safety filter: whatever target arrives, the next commanded pose within the rig's limits.

`SafetyFilter.step(dt, target, measured)` turns a target (NaN, a jump across the table, a
point outside the workspace, nothing at all) into the next command, `dt` seconds after the
previous one, such that between consecutive commands:
  - the commanded position stays inside the workspace box (base frame); a command that
    starts outside (the arm's home pose often is) first moves into the box along the
    shortest path, from rest, ignoring the target;
  - the step stays within `max_step`, the linear speed and acceleration, the angular speed
    and acceleration within their caps, measured over the actual `dt` (a late tick moves no
    further than `max_step`; only then may the acceleration cap give way to it);
  - the command stays within `max_tracking_error` of the measured EE pose: it brakes in time
    for that bound like for a wall, so against a blocked arm it stops at the bound instead of
    winding up; if the arm itself moves away beyond it, the command moves back toward it;
  - the command moves towards the target as fast as the caps allow, braking in time for the
    target, the walls and the tracking bound.

Translation is limited per axis (speed cap/sqrt(3), acceleration cap/sqrt(3)), so the vector
norms never exceed the caps and each axis can brake for its walls independently. Braking
uses the discrete-time bound v dt + v^2 / (2a) <= d: a velocity that satisfies it for the
remaining distance d can always be reduced by at most a dt per tick (for any later dt) and
still satisfy it, so the feasible velocity interval is never empty (see `wall_bound`).
Poses are in the base frame: positions (3,) metres, quaternions (x, y, z, w).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

from kil.control.limits import SafetyLimits

AXIS_SHARE = 1.0 / math.sqrt(3.0)  # per-axis caps whose vector sum stays within the norm caps
RATE_LIMITED = frozenset({"speed limited", "turn rate limited"})  # normal operation, not a rejection
HOLDING = frozenset({"no target: holding", "target not finite: holding"})


def wall_bound(distance: np.ndarray | float, accel: float, dt: float) -> np.ndarray:
    """Largest speed towards something `distance` away from which the axis can still stop
    in time: v dt + v^2 / (2 accel) <= distance. If v satisfies it for d, the bound for the
    next tick's distance d - v dt is at least v - accel dt' for any next period dt' (so
    braking needs at most the cap, however the ticks are spaced)."""
    d = np.maximum(distance, 0.0)
    return accel * (-dt + np.sqrt(dt * dt + 2.0 * d / accel))


def radial_bound(distance: float, speed_bound: float, tangential: float, dt: float) -> float:
    """Largest velocity component away from a centre `distance` away such that, with the
    `tangential` speed across it, the new distance after dt is at most distance +
    speed_bound dt: sideways motion on a sphere also moves outward (by about
    (tangential dt)^2 / (2 distance)), which a bound on the radial component alone misses."""
    reach = distance + speed_bound * dt
    return (-distance + math.sqrt(max(reach * reach - (tangential * dt) ** 2, 0.0))) / dt


def clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v if n <= limit else v * (limit / n)


class SafetyFilter:
    """Commanded pose, one command at a time; `step` returns the next command and the set of
    reasons the target was not taken as it was (empty when it was)."""

    def __init__(self, limits: SafetyLimits, position: np.ndarray, orientation: np.ndarray) -> None:
        self.limits = limits
        self.lo = np.asarray(limits.workspace_min, float)
        self.hi = np.asarray(limits.workspace_max, float)
        self.position = np.asarray(position, float).copy()
        self.rotation = Rotation.from_quat(np.asarray(orientation, float))
        self.velocity = np.zeros(3)  # m/s over the last command's dt
        self.angular_velocity = np.zeros(3)  # rad/s, base frame
        self.axis_accel = limits.max_acceleration * AXIS_SHARE
        self.returning = False  # the arm moved away beyond the tracking bound: going back to it

    @property
    def orientation(self) -> np.ndarray:
        return self.rotation.as_quat()

    def step(self, dt: float, position: np.ndarray | None, orientation: np.ndarray | None,
             measured: tuple[np.ndarray, Rotation] | None = None) -> tuple[np.ndarray, np.ndarray, set[str]]:
        """The command `dt` seconds (> 0) after the previous one, towards the target
        (None: hold), given the newest measured EE pose (None: unknown, no tracking bound)."""
        if not dt > 0:
            raise ValueError(f"dt must be > 0 s, got {dt}")
        reasons: set[str] = set()
        target_p, target_r = self._sanitise(position, orientation, reasons)
        hold = bool(reasons & HOLDING)
        if measured is not None and not hold:  # a hold stays a hold (an e-stop freezes the command)
            target_p, target_r = self._toward_arm(target_p, target_r, measured, reasons)
        self._translate(dt, target_p, hold, measured, reasons)
        self._rotate(dt, target_r, measured, reasons)
        return self.position.copy(), self.orientation, reasons

    def gripper(self, opening: float) -> tuple[float | None, set[str]]:
        """A gripper opening within the limits; None (send nothing) for a non-finite one."""
        if not math.isfinite(opening):
            return None, {"gripper not finite"}
        clipped = min(max(opening, self.limits.gripper_min), self.limits.gripper_max)
        return clipped, ({"gripper out of range"} if clipped != opening else set())

    def tracking_error(self, measured: tuple[np.ndarray, Rotation]) -> tuple[float, float]:
        """(metres, radians) between the command and a measured pose."""
        return float(np.linalg.norm(self.position - measured[0])), float((self.rotation * measured[1].inv()).magnitude())

    # -- targets --------------------------------------------------------------------------
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

    def _toward_arm(self, target_p, target_r, measured, reasons: set[str]) -> tuple[np.ndarray, Rotation]:
        """The arm moved away from the command by more than the bound allows (pushed, or it
        moved while its state was not arriving): the command goes back to it, then resumes."""
        limit = self.limits.max_tracking_error
        distance, angle = self.tracking_error(measured)
        if distance > limit.position + self.limits.max_step or angle > limit.angle + self.limits.max_angular_speed / self.limits.rate_hz:
            self.returning = True
        elif distance < 0.5 * limit.position and angle < 0.5 * limit.angle:
            self.returning = False
        if not self.returning:
            return target_p, target_r
        reasons.add("arm away from the command beyond max_tracking_error: moving back to it")
        return np.clip(measured[0], self.lo, self.hi), measured[1]

    # -- translation ----------------------------------------------------------------------
    def _translate(self, dt: float, target: np.ndarray, hold: bool, measured, reasons: set[str]) -> None:
        p = self.position
        if ((p < self.lo) | (p > self.hi)).any():
            self._enter_box(dt, hold, measured, reasons)
            return
        A = self.axis_accel
        V = min(self.limits.max_speed, self.limits.max_step / dt) * AXIS_SHARE  # the step cap binds on late ticks
        error = target - p
        # Desired: reach the target, braking for it, as fast as allowed.
        desired = np.sign(error) * np.minimum(np.abs(error) / dt, wall_bound(np.abs(error), A, dt))
        low = np.maximum(-V, -wall_bound(p - self.lo, A, dt))
        high = np.maximum(low, np.minimum(V, wall_bound(self.hi - p, A, dt)))  # never empty; max() guards rounding
        # Acceleration within the speed and wall interval; only a tick late by more than
        # max_step / max_speed can make them disagree, and then the step and walls win.
        low, high = np.clip(self.velocity - A * dt, low, high), np.clip(self.velocity + A * dt, low, high)
        velocity = np.clip(desired, low, high)
        if measured is not None:
            velocity = self._within_tracking(velocity, low, high, dt, measured[0], reasons)
        if not np.allclose(velocity, error / dt, atol=1e-9):
            reasons.add("speed limited")
        moved = np.clip(p + velocity * dt, self.lo, self.hi)  # the clip only absorbs rounding
        self.velocity = (moved - p) / dt
        self.position = moved

    def _within_tracking(self, velocity, low, high, dt: float, arm: np.ndarray, reasons: set[str]) -> np.ndarray:
        """Brake for the tracking bound around the measured position exactly as for the
        workspace walls: a box of half-width max_tracking_error / sqrt(3) per axis (so the
        distance stays within max_tracking_error), inside the hard interval [low, high]. A
        sphere would not do: sliding along it at speed v needs v^2 / r of acceleration
        towards the arm, more than the cap leaves at a few centimetres."""
        half = self.limits.max_tracking_error.position * AXIS_SHARE
        offset = self.position - arm
        away_high = wall_bound(half - offset, self.axis_accel, dt)  # beyond the bound: 0, no further away
        away_low = -wall_bound(half + offset, self.axis_accel, dt)
        limited = np.clip(velocity, np.clip(away_low, low, high), np.clip(away_high, low, high))
        if not np.array_equal(limited, velocity) and np.abs(offset).max() > 0.5 * half:
            reasons.add("tracking error at max_tracking_error: not advancing")
        return limited

    def _enter_box(self, dt: float, hold: bool, measured, reasons: set[str]) -> None:
        """Outside the workspace: along the straight line to the nearest point of the box,
        speed and acceleration capped, braking to rest on the boundary (or to hold)."""
        reasons.add("command outside the workspace: moving in")
        p = self.position
        entry = np.clip(p, self.lo, self.hi)
        distance = float(np.linalg.norm(entry - p))
        u = (entry - p) / distance
        A, V = self.limits.max_acceleration, min(self.limits.max_speed, self.limits.max_step / dt)
        speed = max(float(self.velocity @ u), 0.0)  # the velocity is along u in this mode
        desired = 0.0 if hold else min(distance / dt, float(wall_bound(distance, A, dt)))
        slowest = min(max(speed - A * dt, 0.0), V)
        new = min(max(desired, slowest), speed + A * dt, V)
        if measured is not None:  # brake for the tracking bound too (the arm may be blocked out there)
            half = self.limits.max_tracking_error.position * AXIS_SHARE
            offset = (p - measured[0]) * np.sign(u)  # along the motion, per axis
            moving = np.abs(u) > 1e-12  # an axis brakes at A |u_i| on this line: its wall is (half - offset) / |u_i| away
            along = (half - offset[moving]) / np.abs(u[moving])
            if moving.any():
                new = max(min(new, float(wall_bound(along, A, dt).min())), slowest)
        moved = p + u * min(new * dt, distance)
        self.velocity = (moved - p) / dt
        self.position = moved

    # -- rotation -------------------------------------------------------------------------
    def _rotate(self, dt: float, target: Rotation, measured, reasons: set[str]) -> None:
        W, A = self.limits.max_angular_speed, self.limits.max_angular_acceleration
        if "command outside the workspace: moving in" in reasons:
            target = self.rotation  # entering the box comes first: keep the orientation
        error = (target * self.rotation.inv()).as_rotvec()  # base-frame rotation still to go
        angle = float(np.linalg.norm(error))
        wanted = clip_norm(error / dt, min(W, float(wall_bound(angle, A, dt))))
        # Both ends lie in the speed ball, so the step towards `wanted` stays inside it.
        omega = self.angular_velocity + clip_norm(wanted - self.angular_velocity, A * dt)
        if measured is not None:
            omega = self._within_angular_tracking(omega, wanted, dt, measured[1], reasons)
        if not np.allclose(omega, error / dt, atol=1e-9):
            reasons.add("turn rate limited")
        self.angular_velocity = omega
        self.rotation = Rotation.from_rotvec(omega * dt) * self.rotation

    def _within_angular_tracking(self, omega, wanted, dt: float, arm: Rotation, reasons: set[str]) -> np.ndarray:
        """Brake for the angular tracking bound like for a wall: the turn rate away from the
        arm's orientation (along n) is at most what still stops at the bound; the
        acceleration budget goes to that braking first, the rest towards `wanted`."""
        W, A = self.limits.max_angular_speed, self.limits.max_angular_acceleration
        offset = (self.rotation * arm.inv()).as_rotvec()
        gap = float(np.linalg.norm(offset))
        if gap < 1e-12:
            return omega
        n = offset / gap
        speed_bound = float(wall_bound(self.limits.max_tracking_error.angle - gap, A, dt))
        bound = radial_bound(gap, speed_bound, float(np.linalg.norm(omega - (omega @ n) * n)), dt)
        if float(omega @ n) <= bound:
            return omega
        previous = self.angular_velocity
        change = wanted - previous
        normal = min(float(change @ n), bound - float(previous @ n))
        normal = max(normal, -A * dt)
        tangential = clip_norm(change - float(change @ n) * n, math.sqrt(max((A * dt) ** 2 - normal**2, 0.0)))
        if gap > 0.5 * self.limits.max_tracking_error.angle:
            reasons.add("tracking error at max_tracking_error: not advancing")
        # Projecting onto the speed ball moves no closer to the previous velocity's distance
        # limit (it is non-expansive) and only shrinks a positive component along n.
        return clip_norm(previous + normal * n + tangential, W)
