"""Shared pytest setup: ROS-only tests are skipped, with the reason, where rclpy is missing."""

from __future__ import annotations

import importlib.util

import pytest

HAS_RCLPY = importlib.util.find_spec("rclpy") is not None
HAS_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs ROS 2 (rclpy, launch_ros): run docker/run_ros_tests.sh")
    for item in items:
        if "ros" in item.keywords and not (HAS_RCLPY and HAS_LAUNCH_ROS):
            item.add_marker(skip)
