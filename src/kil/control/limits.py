"""The limits the safety node enforces, declared per rig (`safety:` in config/rigs/<rig>.yaml).

Kept apart from the rig loader and the safety stage so that both import it (kil.rigs reads
the rig file, kil.stages.safety enforces it) without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kil.config import require


@dataclass(frozen=True)
class TrackingLimit:
    """Largest distance between the command and the measured EE pose (base frame). A
    Cartesian impedance controller pulls with a force proportional to it, so a blocked or
    lagging arm must not let it grow (no windup)."""

    position: float = 0.05  # m, Euclidean
    angle: float = 0.35  # rad

    def __post_init__(self) -> None:
        require(self.position > 0, "max_tracking_error.position", f"must be > 0 m, got {self.position}")
        require(self.angle > 0, "max_tracking_error.angle", f"must be > 0 rad, got {self.angle}")


@dataclass(frozen=True)
class SafetyLimits:
    """Workspace box and caps, all in the robot base frame and measured between the stamps
    of consecutive commands."""

    workspace_min: tuple[float, float, float] = (0.25, -0.45, -0.12)  # m, base frame
    workspace_max: tuple[float, float, float] = (0.80, 0.45, 0.45)
    max_speed: float = 0.25  # m/s
    max_acceleration: float = 2.0  # m/s^2
    max_angular_speed: float = 1.0  # rad/s
    max_angular_acceleration: float = 8.0  # rad/s^2
    max_step: float = 0.004  # m between two commands, however far apart in time
    rate_hz: float = 100.0  # command rate (the safety node's control tick)
    gripper_min: float = 0.0  # m
    gripper_max: float = 0.08
    max_tracking_error: TrackingLimit = field(default_factory=TrackingLimit)

    def __post_init__(self) -> None:
        require(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)), "workspace_min",
                f"must be below workspace_max on every axis, got {self.workspace_min} vs {self.workspace_max}")
        for name in ("max_speed", "max_acceleration", "max_angular_speed", "max_angular_acceleration", "max_step", "rate_hz"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        require(0 <= self.gripper_min < self.gripper_max, "gripper_min", f"must be in [0, gripper_max), got {self.gripper_min}")
        # The command has to be able to lead the arm by a few steps, or it can never move it.
        require(self.max_tracking_error.position >= 3 * self.max_step, "max_tracking_error.position",
                f"must be >= 3 x max_step ({3 * self.max_step:g} m) for the arm to move at all, got {self.max_tracking_error.position}")
