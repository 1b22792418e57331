"""Layout and packaging: one setup serves pip and colcon (ament_python)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layout():
    for path in ("src/kil", "launch", "config/graphs", "config/rigs", "config/rviz/kil.rviz", "docker/Dockerfile", "test", "colcon.meta", "package.xml", "setup.py", "setup.cfg", "resource/kil", "README.md", ".ci/run"):
        assert (ROOT / path).exists(), path
    for launch in ("bringup.launch.py", "record_demos.launch.py", "rig.launch.py"):
        assert (ROOT / "launch" / launch).is_file()


def test_package_xml_declares_ros_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.findtext("name") == "kil"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    wanted = {"rclpy", "launch_ros", "sensor_msgs", "geometry_msgs", "nav_msgs", "trajectory_msgs", "visualization_msgs",
              "control_msgs", "std_msgs", "tf2_ros", "cv_bridge", "message_filters", "zed_wrapper", "franka_bringup", "ur_robot_driver"}
    assert wanted <= deps, wanted - deps


@pytest.mark.skipif(shutil.which("colcon") is None, reason="colcon is not installed (scripts/setup.sh installs Debian's colcon)")
def test_colcon_build_installs_launch_and_config(tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(ROOT, workspace, ignore=shutil.ignore_patterns(".venv", "runs", "build", "install", "log", ".git", "__pycache__", "*.egg-info"))
    subprocess.run(["colcon", "build"], cwd=workspace, check=True, capture_output=True, timeout=300)
    share = workspace / "install" / "kil" / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "kil").is_file()
    for rel in ("package.xml", "launch/bringup.launch.py", "config/graphs/synthetic_record.yaml", "config/rigs/franka.yaml", "config/rviz/kil.rviz"):
        assert (share / "kil" / rel).is_file(), rel
    executables = {p.name for p in (workspace / "install" / "kil" / "lib" / "kil").iterdir()}
    assert {"kil", "kil_node"} <= executables
    assert list((workspace / "install" / "kil" / "lib").glob("python3*/site-packages/kil/converters/msgdefs/control_msgs/msg/GripperCommand.msg"))
