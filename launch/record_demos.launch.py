"""Record teleoperated demonstrations on a rig: one rosbag2 (MCAP) episode per demonstration.

    ros2 launch kil record_demos.launch.py rig:=franka robot_ip:=172.16.0.2 teleop:=quest task:=pick_place out:=demos/pp
    ros2 launch kil record_demos.launch.py rig:=ur5e robot_ip:=192.168.1.10 teleop:=spacemouse task:=pick_place out:=demos/pp

Starts the rig's drivers and camera calibration (rig.launch.py's actions), the teleop device
driver (spacenav_node, or the ROS-TCP endpoint Quest2ROS connects to), and the graph
config/graphs/teleop_<teleop>.yaml: the teleop node's 10 Hz targets go through the same
interpolator and safety node as a policy's, and the recorder runs ``ros2 bag record -s mcap``
on the rig's record_topics, one bag per episode under `out` (episode_NNNN, never
overwritten) with kil_episode.yaml beside the bag's own metadata. Start / save / discard
with the teleop's buttons, or ``ros2 service call /recorder/<start|save|discard>_episode
std_srvs/srv/Trigger``. `kil build-dataset` reads these episodes like the sim's.
"""

import shlex

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from kil.graph import merge_params, parse_overrides
from kil.rigs import TELEOPS, load_rig, record_params
from kil.runtimes.ros2.launch import declare_rig_arguments, graph_launch_actions, rig_actions
from launch import LaunchDescription


def teleop_actions(context) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    rig, teleop = load_rig(arg("rig")), arg("teleop")
    base = record_params(rig, arg("task"), teleop, arg("out"), arg("variation"))
    overrides = parse_overrides(shlex.split(arg("set")))
    overrides = {node: merge_params(base.get(node, {}), overrides.get(node, {})) for node in {*base, *overrides}}
    return graph_launch_actions(f"teleop_{teleop}", overrides, rig=rig.name)


def device_actions(context) -> list:
    """The teleop device's driver: spacenav_node for the SpaceMouse; for the Quest, the
    ROS-TCP endpoint the Quest2ROS app connects to."""
    if LaunchConfiguration("teleop_driver").perform(context) != "true":
        return []
    if LaunchConfiguration("teleop").perform(context) == "spacemouse":
        return [Node(package="spacenav", executable="spacenav_node", name="spacenav")]
    return [Node(package="ros_tcp_endpoint", executable="default_server_endpoint", name="quest2ros_endpoint",
                 parameters=[{"ROS_IP": "0.0.0.0"}])]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            *declare_rig_arguments(),
            DeclareLaunchArgument("teleop", default_value="quest", choices=list(TELEOPS), description="teleoperation device"),
            DeclareLaunchArgument("teleop_driver", default_value="true", choices=["true", "false"],
                                  description="start the device's driver (spacenav_node / ros_tcp_endpoint)"),
            DeclareLaunchArgument("task", default_value="pick_place", description="task name written into each episode's metadata"),
            DeclareLaunchArgument("variation", default_value="in", description="scene variation written into the metadata"),
            DeclareLaunchArgument("out", default_value="demos", description="directory of the session's episodes (episode_NNNN inside)"),
            DeclareLaunchArgument("set", default_value="", description="node parameter overrides: 'node.param=value ...'"),
            OpaqueFunction(function=rig_actions),
            OpaqueFunction(function=device_actions),
            OpaqueFunction(function=teleop_actions),
        ]
    )
