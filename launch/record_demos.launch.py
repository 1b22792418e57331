"""Record teleoperated demonstrations on a rig: one rosbag2 (MCAP) episode per demonstration.

    ros2 launch kil record_demos.launch.py rig:=franka robot_ip:=172.16.0.2 teleop:=quest task:=pick_place out:=demos/pp
    ros2 launch kil record_demos.launch.py rig:=ur5e robot_ip:=192.168.1.10 teleop:=spacemouse task:=pick_place out:=demos/pp
    ros2 launch kil record_demos.launch.py rig:=sim teleop:=expert task:=pick_place seed:=3 out:=demos/pp

Starts the rig's drivers and camera calibration (rig.launch.py's actions), the teleop device
driver (spacenav_node, or the ROS-TCP endpoint Quest2ROS connects to), and the graph
config/graphs/teleop_<teleop>.yaml: the teleop node's 10 Hz targets go through the same
interpolator and safety node as a policy's, and the recorder runs ``ros2 bag record -s mcap``
on the rig's record_topics, one bag per episode under `out` (episode_NNNN, never
overwritten) with kil_episode.yaml beside the bag's own metadata. Start / save / discard
with the teleop's buttons, or ``ros2 service call /recorder/<start|save|discard>_episode
std_srvs/srv/Trigger``. `kil build-dataset` reads these episodes like the sim's.

With rig:=sim teleop:=expert the simulated rig (its scene set to task, variation and seed)
and its scripted expert record one unattended episode on simulated time, judged by the sim;
the launch ends when the episode is saved.
"""

import shlex

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from kil.errors import ConfigError
from kil.graph import parse_overrides
from kil.rigs import TELEOPS, load_rig, record_params
from kil.runtimes.ros2.launch import declare_rig_arguments, graph_launch_actions, graph_nodes, merge_overrides, rig_actions, use_sim_time
from launch import LaunchDescription


def _arg(context, name: str) -> str:
    return LaunchConfiguration(name).perform(context)


def _seed(context) -> int:
    text = _arg(context, "seed")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"seed:={text}: expected an integer") from None


def scene_and_rig_actions(context) -> list:
    """The rig's drivers; the simulated rig set to the episode's scene (task, variation, seed)."""
    rig = load_rig(_arg(context, "rig"))
    scene = {"rig": {"task": _arg(context, "task"), "variation": _arg(context, "variation"), "seed": _seed(context)}}
    return rig_actions(context, scene if rig.camera.driver == "sim" else None)


def teleop_actions(context) -> list:
    rig, teleop = load_rig(_arg(context, "rig")), _arg(context, "teleop")
    sim_time = use_sim_time(rig, _arg(context, "use_sim_time"))
    base = record_params(rig, _arg(context, "task"), teleop, _arg(context, "out"), _arg(context, "variation"), _seed(context), sim_time)
    overrides = merge_overrides(base, parse_overrides(shlex.split(_arg(context, "set"))))
    graph = f"teleop_{teleop}"
    actions = graph_launch_actions(graph, overrides, rig=rig.name, use_sim_time=sim_time)
    if teleop == "expert":  # one unattended episode: done when the recorder has saved it
        recorder = actions[[n.name for n in graph_nodes(graph, overrides, rig=rig.name)].index("recorder")]
        actions.append(RegisterEventHandler(OnProcessExit(target_action=recorder, on_exit=[EmitEvent(event=Shutdown(reason="episode recorded"))])))
    return actions


def device_actions(context) -> list:
    """The teleop device's driver: spacenav_node for the SpaceMouse; for the Quest, the
    ROS-TCP endpoint the Quest2ROS app connects to."""
    if LaunchConfiguration("teleop_driver").perform(context) != "true" or LaunchConfiguration("teleop").perform(context) == "expert":
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
            DeclareLaunchArgument("variation", default_value="in", description="scene variation written into the metadata (rig:=sim: the scene's)"),
            DeclareLaunchArgument("seed", default_value="0", description="rig:=sim: the scene's seed (written into the metadata)"),
            DeclareLaunchArgument("out", default_value="demos", description="directory of the session's episodes (episode_NNNN inside)"),
            DeclareLaunchArgument("set", default_value="", description="node parameter overrides: 'node.param=value ...'"),
            OpaqueFunction(function=scene_and_rig_actions),
            OpaqueFunction(function=device_actions),
            OpaqueFunction(function=teleop_actions),
        ]
    )
