"""Gripper commands -> the goals of a real gripper's action servers.

kil publishes each gripper change as a `GripperCommand` (opening in metres). Real grippers
take actions instead: the Robotiq on a UR takes control_msgs/GripperCommand goals in its
joint's units; the Franka hand takes franka_gripper ~/move (open to a width) and ~/grasp
(close with a force, successful within an epsilon of the width). The ROS 2 shell sends the
goals built here; this module only decides what they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kil.config import require
from kil.converters.factory import MessageFactory
from kil.msgs import GripperCommand

GripperInterface = Literal["topic", "gripper_command", "franka_gripper"]


@dataclass(frozen=True)
class GripperCommandOptions:
    """How the gripper topic reaches the hardware. `topic`: only the topic (the sim, a
    recorder). `gripper_command`: a control_msgs/GripperCommand action at `action`, whose
    position is the joint value with opening = offset + scale * joint. `franka_gripper`: the
    franka_gripper node at `action`; openings below `grasp_below` are grasps."""

    interface: GripperInterface = "topic"
    action: str = ""
    scale: float = 1.0
    offset: float = 0.0
    speed: float = 0.1  # m/s, franka move / grasp
    force: float = 40.0  # N, franka grasp when the command names no effort
    grasp_below: float = 0.04  # m
    grasp_epsilon: float = 0.08  # m, both sides: any width the object stops the fingers at

    def __post_init__(self) -> None:
        require(self.interface == "topic" or self.action.startswith("/"), "action",
                f"the {self.interface} interface needs an absolute action name, got {self.action!r}")
        require(self.scale != 0, "scale", "must not be 0")
        require(self.speed > 0 and self.force > 0, "speed", "speed and force must be > 0")


@dataclass(frozen=True)
class GripperGoal:
    """One goal to send: the action server, its type (``pkg/action/Name``) and the goal message."""

    action: str
    action_type: str
    goal: Any


def gripper_goal(command: GripperCommand, options: GripperCommandOptions, factory: MessageFactory) -> GripperGoal | None:
    """The goal that carries out `command` (None for the `topic` interface)."""
    if options.interface == "gripper_command":
        joint = (command.position - options.offset) / options.scale
        inner = factory.new("control_msgs/msg/GripperCommand", position=joint, max_effort=command.max_effort)
        return GripperGoal(options.action, "control_msgs/action/GripperCommand",
                           factory.new("control_msgs/action/GripperCommand_Goal", command=inner))
    if options.interface == "franka_gripper":
        base = options.action.rstrip("/")
        if command.position < options.grasp_below:
            epsilon = factory.new("franka_msgs/msg/GraspEpsilon", inner=options.grasp_epsilon, outer=options.grasp_epsilon)
            goal = factory.new("franka_msgs/action/Grasp_Goal", width=command.position, epsilon=epsilon,
                               speed=options.speed, force=command.max_effort or options.force)
            return GripperGoal(f"{base}/grasp", "franka_msgs/action/Grasp", goal)
        goal = factory.new("franka_msgs/action/Move_Goal", width=command.position, speed=options.speed)
        return GripperGoal(f"{base}/move", "franka_msgs/action/Move", goal)
    return None
