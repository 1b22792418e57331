#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the test suite; extra arguments go to pytest.
# The `ros` tests run against a ROS 2 found by scripts/ros_env.sh (a sourced one,
# /opt/ros/<distro>, or ../shared/ros2); without one they skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/ros_env.sh
source test/driver_msgs.sh  # driver message packages this ROS 2 lacks (quest2ros, franka_msgs)
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
