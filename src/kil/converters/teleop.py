"""Teleoperation inputs and recording commands <-> ROS 2 messages.

Quest2ROS publishes the controller pose as geometry_msgs/PoseStamped and its buttons as
quest2ros/OVR2ROSInputs; spacenav publishes geometry_msgs/Twist and sensor_msgs/Joy.
Messages without a header (OVR2ROSInputs, Twist, String) are stamped with their receive time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kil.converters.factory import MessageFactory, header_msg, time_ns
from kil.converters.pose import point_msg, pose_of, pose_stamped_msg, vector_of
from kil.msgs import Buttons, EpisodeControl, HandInputs, HandPose, Twist


def hand_pose_to_ros(factory: MessageFactory, hand: HandPose) -> Any:
    return pose_stamped_msg(factory, hand.stamp_ns, hand.frame_id, hand.position, hand.orientation)


def hand_pose_from_ros(msg: Any) -> HandPose:
    position, orientation = pose_of(msg.pose)
    return HandPose(stamp_ns=time_ns(msg.header.stamp), frame_id=str(msg.header.frame_id), position=position, orientation=orientation)


def hand_inputs_to_ros(factory: MessageFactory, inputs: HandInputs) -> Any:
    return factory.new(
        "quest2ros/msg/OVR2ROSInputs",
        button_upper=inputs.button_upper,
        button_lower=inputs.button_lower,
        thumb_stick_horizontal=float(inputs.thumb_stick[0]),
        thumb_stick_vertical=float(inputs.thumb_stick[1]),
        press_index=inputs.index,
        press_middle=inputs.middle,
    )


def hand_inputs_from_ros(msg: Any, stamp_ns: int) -> HandInputs:
    return HandInputs(
        stamp_ns=stamp_ns,
        button_upper=bool(msg.button_upper),
        button_lower=bool(msg.button_lower),
        thumb_stick=np.array([msg.thumb_stick_horizontal, msg.thumb_stick_vertical], float),
        index=float(msg.press_index),
        middle=float(msg.press_middle),
    )


def twist_to_ros(factory: MessageFactory, twist: Twist) -> Any:
    vector = "geometry_msgs/msg/Vector3"
    return factory.new("geometry_msgs/msg/Twist", linear=point_msg(factory, twist.linear, vector), angular=point_msg(factory, twist.angular, vector))


def twist_from_ros(msg: Any, stamp_ns: int) -> Twist:
    return Twist(stamp_ns=stamp_ns, linear=vector_of(msg.linear), angular=vector_of(msg.angular))


def buttons_to_ros(factory: MessageFactory, buttons: Buttons, frame_id: str = "") -> Any:
    return factory.new("sensor_msgs/msg/Joy", header=header_msg(factory, buttons.stamp_ns, frame_id),
                       buttons=np.array(buttons.pressed, np.int32))


def buttons_from_ros(msg: Any) -> Buttons:
    return Buttons(stamp_ns=time_ns(msg.header.stamp), pressed=tuple(bool(b) for b in msg.buttons))


def episode_control_to_ros(factory: MessageFactory, control: EpisodeControl) -> Any:
    return factory.new("std_msgs/msg/String", data=control.command)


def episode_control_from_ros(msg: Any, stamp_ns: int) -> EpisodeControl:
    return EpisodeControl(stamp_ns=stamp_ns, command=str(msg.data).strip().lower())
