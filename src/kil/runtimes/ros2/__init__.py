"""ROS 2 runtime: the generic node shell (`node`), parameter mapping (`params`) and launch
helpers (`launch`). Nothing here imports rclpy or launch_ros at import time."""
