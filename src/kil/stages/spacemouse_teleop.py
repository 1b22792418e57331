"""SpaceMouse teleop node: a 3Dconnexion SpaceMouse (spacenav) drives the target's velocity.

The twist's linear part moves the target along the robot base axes, its angular part turns
it about them, at up to `max_speed` / `max_angular_speed` at full deflection, with a
deadband against drift; a twist older than `input_timeout_s` counts as zero (the device was
let go). The target stays within `max_lead` of the robot. Left button: gripper open/close;
right button: start / save an episode (discard through the recorder's service). Topics:
``/spacenav/twist`` (geometry_msgs/Twist), ``/spacenav/joy`` (sensor_msgs/Joy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.msgs import Buttons, Twist
from kil.stage import subscribe
from kil.stages.teleop import TeleopConfig, TeleopStage


@dataclass(frozen=True)
class SpaceMouseTeleopConfig(TeleopConfig):
    max_speed: float = 0.10  # m/s at full deflection
    max_angular_speed: float = 0.5  # rad/s at full deflection
    full_scale: float = 0.7  # the driver's reading at full deflection (spacenav: about 350/512)
    deadband: float = 0.1  # fraction of full scale ignored around zero
    input_timeout_s: float = 0.2
    axis_signs: tuple[float, float, float] = (1.0, 1.0, 1.0)  # flip axes to match how the device sits
    gripper_button: int = 0
    episode_button: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_speed", "max_angular_speed", "full_scale", "input_timeout_s"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        require(0 <= self.deadband < 1, "deadband", f"must be in [0, 1), got {self.deadband}")


def shaped(value: np.ndarray, full_scale: float, deadband: float) -> np.ndarray:
    """Device reading -> [-1, 1] per axis: zero inside the deadband, linear beyond it."""
    x = np.clip(np.asarray(value, float) / full_scale, -1.0, 1.0)
    return np.sign(x) * np.clip((np.abs(x) - deadband) / (1.0 - deadband), 0.0, 1.0)


class SpaceMouseTeleop(TeleopStage):
    Config = SpaceMouseTeleopConfig

    def __init__(self, config: SpaceMouseTeleopConfig, io) -> None:
        super().__init__(config, io)
        self.twist: Twist | None = None
        self.received_ns: int | None = None
        self.buttons: tuple[bool, ...] = ()

    @subscribe(twist=Twist)
    def on_twist(self, twist: Twist) -> None:
        self.twist, self.received_ns = twist, self.io.now_ns()

    @subscribe(buttons=Buttons)
    def on_buttons(self, buttons: Buttons) -> None:
        c = self.config

        def pressed(i: int, state: tuple[bool, ...]) -> bool:
            return i < len(state) and state[i]

        if pressed(c.gripper_button, buttons.pressed) and not pressed(c.gripper_button, self.buttons):
            self.toggle_gripper()
        if pressed(c.episode_button, buttons.pressed) and not pressed(c.episode_button, self.buttons):
            self.start_or_save()
        self.buttons = buttons.pressed

    def update(self, now_ns: int, dt: float) -> None:
        c = self.config
        if self.twist is None or now_ns - self.received_ns > c.input_timeout_s * 1e9:
            return
        signs = np.asarray(c.axis_signs, float)
        linear = shaped(self.twist.linear, c.full_scale, c.deadband) * signs * c.max_speed
        angular = shaped(self.twist.angular, c.full_scale, c.deadband) * signs * c.max_angular_speed
        self.nudge(linear * dt, angular * dt)


STAGE = SpaceMouseTeleop
