"""Run kil live on a rig: drivers and calibration (rig.launch.py), the kil graph, RViz.

    ros2 launch kil bringup.launch.py rig:=franka robot_ip:=172.16.0.2 task:=pick_place policy:=runs/pp
    ros2 launch kil bringup.launch.py rig:=ur5e fake_hardware:=true task:=pick_place policy:=runs/pp rviz:=true
    ros2 launch kil bringup.launch.py rig:=sim task:=pick_place policy:=runs/pp rig_set:="rig.real_time_factor=0.3"
    ros2 launch kil bringup.launch.py rig:=sim drivers:=false graph:=synthetic_record \
        set:="recorder.path=/tmp/episode_0000"

By default the graph is config/graphs/live.yaml (features -> keypoints -> policy ->
interpolator -> safety -> the rig's Cartesian controller, plus visualisation), its topics
renamed to the rig's (config/rigs/<rig>.yaml) and its nodes set for `task` and `policy`.
Every node of the graph becomes one kil_node process; `set` overrides node parameters
("node.param=value", several separated by spaces), validated before anything starts. With
rig:=sim every node runs on the simulated rig's /clock (use_sim_time:=auto), so the loop
closes on a machine that renders slower than real time.
"""

import shlex

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from kil.errors import ConfigError
from kil.graph import parse_overrides
from kil.paths import share_dir
from kil.rigs import live_params, load_rig
from kil.runtimes.ros2.launch import declare_rig_arguments, graph_launch_actions, merge_overrides, rig_actions, use_sim_time

EXTRACTIONS = ["im", "in", "t"]  # paper 001's image matching, instance matching, tracking (kil.perception.keypoints.EXTRACTIONS)


def graph_actions(context) -> list:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    rig = load_rig(arg("rig"))
    overrides = parse_overrides(shlex.split(arg("set")))
    graph = arg("graph")
    if graph == "live":
        if not arg("policy"):
            raise ConfigError("policy:=RUN is required (the run directory of a trained policy, kil train --out)")
        overrides = merge_overrides(live_params(rig, arg("task"), arg("policy"), arg("extraction")), overrides)
    return graph_launch_actions(graph, overrides, rig=rig.name, use_sim_time=use_sim_time(rig, arg("use_sim_time")), profile=arg("profile"))


def generate_launch_description() -> LaunchDescription:
    rviz_config = str(share_dir() / "config" / "rviz" / "kil.rviz")
    return LaunchDescription(
        [
            *declare_rig_arguments(),
            DeclareLaunchArgument("graph", default_value="live", description="graph description: a name under config/graphs/ or a YAML path"),
            DeclareLaunchArgument("task", default_value="pick_place", description="task: its reference keypoints (config/tasks/<task>/)"),
            DeclareLaunchArgument("policy", default_value="", description="run directory of the trained policy (kil train --out)"),
            DeclareLaunchArgument("extraction", default_value="", choices=["", *EXTRACTIONS],
                                  description="keypoint extraction: im (image matching), in (instance matching) or t (tracking); "
                                              "default: as the policy's dataset was built (with its segmenter and tracker), which a value must match"),
            DeclareLaunchArgument("set", default_value="", description="node parameter overrides: 'node.param=value ...'"),
            DeclareLaunchArgument("rviz", default_value="true", choices=["true", "false"], description="start RViz with config/rviz/kil.rviz"),
            OpaqueFunction(function=rig_actions),
            OpaqueFunction(function=graph_actions),
            Node(package="rviz2", executable="rviz2", arguments=["-d", rviz_config], condition=IfCondition(LaunchConfiguration("rviz"))),
        ]
    )
