"""Run kil live on a rig: drivers and calibration (rig.launch.py), the kil graph, RViz.

    ros2 launch kil bringup.launch.py rig:=franka robot_ip:=172.16.0.2 graph:=<graph>
    ros2 launch kil bringup.launch.py rig:=sim drivers:=false graph:=synthetic_record \
        set:="recorder.path=/tmp/episode_0000"

Every node of the graph description (config/graphs/<graph>.yaml) becomes one kil_node
process; `set` overrides node parameters ("node.param=value", several separated by
spaces), validated before anything starts.
"""

import shlex

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from kil.graph import parse_overrides
from kil.paths import share_dir
from kil.runtimes.ros2.launch import declare_rig_arguments, graph_launch_actions, rig_actions


def graph_actions(context) -> list:
    overrides = parse_overrides(shlex.split(LaunchConfiguration("set").perform(context)))
    return graph_launch_actions(LaunchConfiguration("graph").perform(context), overrides)


def generate_launch_description() -> LaunchDescription:
    rviz_config = str(share_dir() / "config" / "rviz" / "kil.rviz")
    return LaunchDescription(
        [
            *declare_rig_arguments(),
            DeclareLaunchArgument("graph", description="graph description: a name under config/graphs/ or a YAML path"),
            DeclareLaunchArgument("set", default_value="", description="node parameter overrides: 'node.param=value ...'"),
            DeclareLaunchArgument("rviz", default_value="true", choices=["true", "false"], description="start RViz with config/rviz/kil.rviz"),
            OpaqueFunction(function=rig_actions),
            OpaqueFunction(function=graph_actions),
            Node(package="rviz2", executable="rviz2", arguments=["-d", rviz_config], condition=IfCondition(LaunchConfiguration("rviz"))),
        ]
    )
