"""Quest teleop node: a Meta Quest controller (Quest2ROS) moves the robot with a clutch.

While the grip (middle) trigger is held, the target follows the controller's motion
relative to where both were when the grip closed (scaled, and rotated from the headset's
tracking frame into the robot base frame); released, the target stays, so the operator can
re-grip in a comfortable pose and go on (a clutch). The index trigger closes the gripper
(with hysteresis), the lower face button (A) starts and saves an episode, the upper (B)
discards it. A and B pressed together are the Quest2ROS app's frame alignment (hold the
controller along the robot base axes and press them): they record nothing. Topics:
``/q2r_right_hand_pose`` (PoseStamped), ``/q2r_right_hand_inputs`` (quest2ros/OVR2ROSInputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from kil.config import require
from kil.msgs import HandInputs, HandPose
from kil.stage import subscribe
from kil.stages.teleop import TeleopConfig, TeleopStage


@dataclass(frozen=True)
class QuestTeleopConfig(TeleopConfig):
    clutch_on: float = 0.6  # grip trigger: the clutch engages above this ...
    clutch_off: float = 0.4  # ... and releases below this
    grasp_on: float = 0.6  # index trigger: the gripper closes above this ...
    grasp_off: float = 0.4  # ... and opens below this
    scale: float = 1.0  # robot translation per controller translation
    follow_rotation: bool = True
    # The tracking frame's orientation in the robot base frame (roll, pitch, yaw in rad); zero
    # after the app's A+B alignment with the controller held along the base axes. Check once
    # that pushing the controller away from you moves the robot the same way.
    device_to_base_rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.clutch_off < self.clutch_on <= 1, "clutch_on", "needs 0 <= clutch_off < clutch_on <= 1")
        require(0 <= self.grasp_off < self.grasp_on <= 1, "grasp_on", "needs 0 <= grasp_off < grasp_on <= 1")
        require(self.scale > 0, "scale", f"must be > 0, got {self.scale}")


class QuestTeleop(TeleopStage):
    Config = QuestTeleopConfig

    def __init__(self, config: QuestTeleopConfig, io) -> None:
        super().__init__(config, io)
        self.align = Rotation.from_euler("xyz", config.device_to_base_rpy)
        self.hand: tuple[np.ndarray, Rotation] | None = None  # latest controller pose, in base axes
        self.anchor: tuple[np.ndarray, Rotation, np.ndarray, Rotation] | None = None  # hand and target at engagement
        self.inputs: HandInputs | None = None
        self.chord = False  # A+B held (the app's frame alignment) until both are released

    @property
    def clutched(self) -> bool:
        return self.anchor is not None

    @subscribe(hand=HandPose)
    def on_hand(self, hand: HandPose) -> None:
        self.hand = (self.align.apply(np.array(hand.position)), self.align * Rotation.from_quat(np.array(hand.orientation)) * self.align.inv())
        if self.anchor is not None:
            hand_p0, hand_r0, target_p0, target_r0 = self.anchor
            position, rotation = self.hand
            self.position = target_p0 + self.config.scale * (position - hand_p0)
            if self.config.follow_rotation:
                self.rotation = (rotation * hand_r0.inv()) * target_r0

    @subscribe(inputs=HandInputs)
    def on_inputs(self, inputs: HandInputs) -> None:
        c, previous = self.config, self.inputs
        self.inputs = inputs
        if self.anchor is None and inputs.middle >= c.clutch_on and self.hand is not None and self.position is not None:
            self.anchor = (*self.hand, self.position.copy(), self.rotation)
        elif self.anchor is not None and inputs.middle <= c.clutch_off:
            self.anchor = None
        if inputs.index >= c.grasp_on:
            self.gripper = c.gripper_closed
        elif inputs.index <= c.grasp_off:
            self.gripper = c.gripper_open
        if inputs.button_lower and inputs.button_upper:
            self.chord = True
        elif not (inputs.button_lower or inputs.button_upper):
            self.chord = False
        elif not self.chord:
            if inputs.button_lower and not (previous and previous.button_lower):
                self.start_or_save()
            if inputs.button_upper and not (previous and previous.button_upper):
                self.discard()


STAGE = QuestTeleop
