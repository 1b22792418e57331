"""A rig's drivers and camera calibration, from config/rigs/<rig>.yaml.

Included by bringup.launch.py and record_demos.launch.py; usable alone:
    ros2 launch kil rig.launch.py rig:=franka robot_ip:=172.16.0.2
"""

from launch import LaunchDescription
from launch.actions import OpaqueFunction

from kil.runtimes.ros2.launch import declare_rig_arguments, rig_actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*declare_rig_arguments(), OpaqueFunction(function=rig_actions)])
