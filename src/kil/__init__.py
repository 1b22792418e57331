"""kil: keypoint imitation learning as a ROS 2 node graph for live robot control.

Importing this package is cheap and never imports rclpy, torch or the simulator; the
layers live in subpackages: `kil.stages` (node logic, no ROS), `kil.runtimes` (local and
ROS 2 wiring), `kil.converters` (project dataclasses <-> ROS 2 messages).
"""

__version__ = "0.1.0"
