"""Shared pytest setup: ROS-only and simulator tests are skipped, with the reason, where
rclpy or robosuite is missing."""

from __future__ import annotations

import importlib.util

import pytest

HAS_RCLPY = importlib.util.find_spec("rclpy") is not None
HAS_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None
HAS_ROBOSUITE = importlib.util.find_spec("robosuite") is not None


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs ROS 2 (rclpy, launch_ros): run docker/run_ros_tests.sh")
    skip_sim = pytest.mark.skip(reason="needs the simulator: scripts/setup.sh installs kil[sim]")
    for item in items:
        if "ros" in item.keywords and not (HAS_RCLPY and HAS_LAUNCH_ROS):
            item.add_marker(skip)
        if "sim" in item.keywords and not HAS_ROBOSUITE:
            item.add_marker(skip_sim)
