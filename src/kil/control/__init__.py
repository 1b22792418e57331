"""Control logic without ROS: the safety limits a rig declares, the safety filter that
enforces them, and frame changes of poses through TF (used by the interpolator and safety
stages)."""
