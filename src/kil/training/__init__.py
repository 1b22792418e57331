"""Training of learned components (no ROS): the dense descriptor net, later the policy."""
