"""Launch file of the graph tests: the nodes of one or more graphs, each set in its own
namespace, exactly as bringup.launch.py starts a graph's nodes (kil.runtimes.ros2.launch)
but without a rig's drivers or camera calibration, which these machines do not have.

    ros2 launch test/data/graph_nodes.launch.py spec:=/tmp/graphs.json

spec: a JSON list of {"graph", "namespace", "rig", "overrides", "use_sim_time"}.
"""

import json

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from kil.runtimes.ros2.launch import graph_launch_actions


def graph_actions(context) -> list:
    with open(LaunchConfiguration("spec").perform(context)) as file:
        entries = json.load(file)
    return [action for e in entries for action in graph_launch_actions(
        e["graph"], e.get("overrides") or {}, namespace=e.get("namespace", ""), rig=e.get("rig", ""), use_sim_time=e.get("use_sim_time", False))]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([DeclareLaunchArgument("spec"), OpaqueFunction(function=graph_actions)])
