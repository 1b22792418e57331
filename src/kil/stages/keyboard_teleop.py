"""Keyboard teleop node: drive the robot from a terminal (the local runtime's stand-in for a
VR controller or a SpaceMouse when none is at hand).

Each key press moves the target one step along a base axis or turns it about the vertical;
holding a key repeats it at the terminal's key-repeat rate. The node reads the terminal
(`tty`, in cbreak mode: no echo, no line editing) without blocking, once per tick.

    w / s  +x / -x        a / d  +y / -y        r / f  up / down      q / e  turn left / right
    space  open / close the gripper              enter  start / save an episode
    backspace or x  discard the episode
"""

from __future__ import annotations

import os
import termios
import tty
from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.errors import ConfigError
from kil.stages.teleop import TeleopConfig, TeleopStage

# key -> (translation direction, turn about z)
MOTION_KEYS: dict[str, tuple[tuple[float, float, float], float]] = {
    "w": ((1, 0, 0), 0), "s": ((-1, 0, 0), 0),
    "a": ((0, 1, 0), 0), "d": ((0, -1, 0), 0),
    "r": ((0, 0, 1), 0), "f": ((0, 0, -1), 0),
    "q": ((0, 0, 0), 1), "e": ((0, 0, 0), -1),
}
HELP = "keys: w/s a/d r/f move x/y/z, q/e turn, space gripper, enter start/save episode, backspace/x discard"


@dataclass(frozen=True)
class KeyboardTeleopConfig(TeleopConfig):
    tty: str = "/dev/tty"  # the terminal to read keys from
    step: float = 0.01  # m per key press
    turn_step: float = 0.05  # rad per key press

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.step > 0 and self.turn_step > 0, "step", "step and turn_step must be > 0")


class KeyboardTeleop(TeleopStage):
    Config = KeyboardTeleopConfig

    def __init__(self, config: KeyboardTeleopConfig, io) -> None:
        super().__init__(config, io)
        self.fd: int | None = None
        self._saved_mode: list | None = None

    def start(self) -> None:
        try:
            self.fd = os.open(self.config.tty, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as err:
            raise ConfigError(f"keyboard_teleop.tty: cannot open {self.config.tty} ({err.strerror}); run in an interactive terminal") from None
        if not os.isatty(self.fd):
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"keyboard_teleop.tty: {self.config.tty} is not a terminal; run in an interactive terminal")
        self._saved_mode = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self.io.log.info(HELP)

    def read_keys(self) -> str:
        """Everything typed since the last call ('' if nothing)."""
        chunks = []
        while self.fd is not None:
            try:
                data = os.read(self.fd, 256)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode(errors="ignore")

    def press(self, key: str) -> None:
        c = self.config
        if key in MOTION_KEYS:
            direction, turn = MOTION_KEYS[key]
            self.nudge(np.asarray(direction, float) * c.step, np.array([0.0, 0.0, turn * c.turn_step]))
        elif key == " ":
            self.toggle_gripper()
        elif key in ("\r", "\n"):
            self.start_or_save()
        elif key in ("\x7f", "\b", "x"):
            self.discard()

    def update(self, now_ns: int, dt: float) -> None:
        for key in self.read_keys():
            self.press(key.lower() if key.isalpha() else key)

    def stop(self) -> None:
        if self.fd is not None:
            if self._saved_mode is not None:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_mode)
            os.close(self.fd)
            self.fd = None


STAGE = KeyboardTeleop
