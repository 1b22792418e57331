"""Launch helpers: one launch_ros Node per graph node, from the graph description itself.

`graph_nodes` (pure) says what to start: executable, node name and parameters (the graph
file plus each stage's validated config, flattened). `graph_launch_actions` turns that into
launch_ros actions, so launch files and the local runtime read the same YAML::

    from kil.runtimes.ros2.launch import graph_launch_actions
    def generate_launch_description():
        return LaunchDescription(graph_launch_actions("live", {"policy": {"run": "runs/x"}}))
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kil.errors import ConfigError
from kil.graph import load_graph, merge_params, parse_overrides
from kil.paths import graph_path
from kil.rigs import RIGS, CameraCalibration, DriverLaunch, RigConfig, graph_topics, load_calibration, load_rig
from kil.runtimes.ros2.node import GRAPH_PARAM, NODE_PARAM, PROFILE_PARAM, RIG_PARAM  # the shell's own parameters
from kil.runtimes.ros2.params import flatten_config


PACKAGE = "kil"
EXECUTABLE = "kil_node"


@dataclass(frozen=True)
class NodeLaunch:
    """What launching one graph node means."""

    name: str
    parameters: dict[str, Any]
    package: str = PACKAGE
    executable: str = EXECUTABLE


def graph_nodes(
    graph: str | Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    only: list[str] | None = None,
    rig: str = "",
    use_sim_time: bool = False,
    profile: str = "",
) -> list[NodeLaunch]:
    """One NodeLaunch per node of the graph (or of `only`), parameters validated now so a
    bad launch argument fails before any process starts; with `rig`, the graph's topics
    carry that rig's ROS topic names (each node applies the same, from its `kil.rig`
    parameter); `use_sim_time`: every node follows /clock (the simulated rig drives it);
    `profile`: a directory each node writes its timing into at shutdown (kil bench live)."""
    path = graph_path(graph).resolve()
    spec = load_graph(path, overrides, graph_topics(load_rig(rig)) if rig else None)
    names = list(spec.nodes) if only is None else only
    unknown = [n for n in names if n not in spec.nodes]
    if unknown:
        raise KeyError(f"{path}: no node(s) {unknown} (nodes: {', '.join(spec.nodes)})")
    return [
        NodeLaunch(name, {GRAPH_PARAM: str(path), NODE_PARAM: name, RIG_PARAM: rig, "use_sim_time": use_sim_time,
                          **({PROFILE_PARAM: profile} if profile else {}), **flatten_config(spec.nodes[name].config)})
        for name in names
    ]


def graph_launch_actions(
    graph: str | Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    only: list[str] | None = None,
    namespace: str = "",
    rig: str = "",
    use_sim_time: bool = False,
    profile: str = "",
) -> list[Any]:
    """launch_ros Node actions for `graph_nodes` (imports launch_ros)."""
    from launch_ros.actions import Node

    return [
        Node(
            package=launch.package,
            executable=launch.executable,
            name=launch.name,
            namespace=namespace,
            parameters=[launch.parameters],
            output="screen",
            emulate_tty=True,
        )
        for launch in graph_nodes(graph, overrides, only, rig, use_sim_time, profile)
    ]


def declare_rig_arguments() -> list[Any]:
    """The launch arguments of every launch file that starts a rig."""
    from launch.actions import DeclareLaunchArgument

    return [
        DeclareLaunchArgument("rig", default_value="sim", description=f"robot + camera setup: config/rigs/<rig>.yaml ({', '.join(RIGS)}, or one you add) or a rig file's path"),
        DeclareLaunchArgument("drivers", default_value="true", choices=["true", "false"], description="start the robot and camera drivers"),
        DeclareLaunchArgument("robot_ip", default_value="", description="robot controller address (real rigs)"),
        DeclareLaunchArgument("fake_hardware", default_value="false", choices=["true", "false"], description="drivers with fake/mock hardware"),
        DeclareLaunchArgument("rig_set", default_value="", description="parameters of a kil driver graph (rig:=sim): 'rig.task=place_upright rig.robot=ur5e ...'"),
        DeclareLaunchArgument("use_sim_time", default_value="auto", choices=["auto", "true", "false"],
                              description="every node follows /clock (auto: for the simulated rig, whose node drives it)"),
        DeclareLaunchArgument("profile", default_value="", description="directory each kil node writes its timing into at shutdown (kil bench live)"),
    ]


def use_sim_time(rig: RigConfig, value: str) -> bool:
    """The use_sim_time launch argument for a rig: `auto` means the simulated rig's clock."""
    return rig.camera.driver == "sim" if value == "auto" else value == "true"



def driver_arguments(rig: RigConfig, robot_ip: str, fake_hardware: bool) -> list[tuple[DriverLaunch, dict[str, str]]]:
    """Each driver launch of the rig with its arguments filled in."""
    values = {"robot_ip": robot_ip, "fake_hardware": "true" if fake_hardware else "false"}
    drivers = []
    for driver in rig.drivers:
        needs_ip = any("{robot_ip}" in value for value in driver.arguments.values())
        if needs_ip and not robot_ip and not fake_hardware:
            raise ConfigError(f"rig {rig.name}: robot_ip:=... is required to start {driver.package} (or fake_hardware:=true)")
        drivers.append((driver, {key: value.format(**values) for key, value in driver.arguments.items()}))
    return drivers


def static_transform_arguments(calibration: CameraCalibration) -> list[str]:
    """Command-line arguments of tf2_ros static_transform_publisher for a calibration."""
    names = ("--x", "--y", "--z", "--qx", "--qy", "--qz", "--qw")
    values = (*calibration.translation, *calibration.rotation)
    pairs = [item for name, value in zip(names, values) for item in (name, repr(float(value)))]
    return [*pairs, "--frame-id", calibration.parent, "--child-frame-id", calibration.child]


def merge_overrides(base: dict[str, dict[str, Any]], given: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Node parameter overrides `given` (a launch argument) merged over `base` (what the
    launch file derives from the rig, task and policy)."""
    return {node: merge_params(base.get(node, {}), given.get(node, {})) for node in {*base, *given}}


def rig_actions(context: Any, driver_params: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """Driver includes and the calibration's static TF for the chosen rig (an OpaqueFunction);
    `driver_params`: node parameters of a kil driver graph under those of `rig_set` (the
    scene record_demos asks the simulated rig for)."""
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    rig = load_rig(arg("rig"))
    actions: list[Any] = []
    if arg("drivers") == "true":
        for driver, arguments in driver_arguments(rig, arg("robot_ip"), arg("fake_hardware") == "true"):
            source = f"{get_package_share_directory(driver.package)}/launch/{driver.launch_file}"
            actions.append(IncludeLaunchDescription(PythonLaunchDescriptionSource(source), launch_arguments=arguments.items()))
        if rig.driver_graph:
            overrides = merge_overrides(driver_params or {}, parse_overrides(shlex.split(arg("rig_set"))))
            actions.extend(graph_launch_actions(rig.driver_graph, overrides, use_sim_time=use_sim_time(rig, arg("use_sim_time")),
                                                profile=arg("profile")))
    if rig.camera.driver != "sim":  # the sim publishes its own camera pose
        arguments = static_transform_arguments(load_calibration(rig))
        actions.append(Node(package="tf2_ros", executable="static_transform_publisher", name="camera_calibration", arguments=arguments))
    return actions
