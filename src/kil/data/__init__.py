"""Demonstration data: rosbag2 episodes and their metadata (later: datasets, stores)."""
