"""Runtimes wire stages into a graph from one graph description.

`local`: one process, in-memory topics, stepped or real-time clock (no ROS needed).
`ros2`: one rclpy node per stage through a generic shell, and launch helpers. Importing
this package (or `kil.runtimes.ros2`) never imports rclpy; only running a ROS node does.
"""
