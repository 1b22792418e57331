"""Perception: feature backends, reference keypoint specs, image matching and 3D lifting.

No ROS here; the features and keypoints stages (kil.stages.features / .keypoints) wrap it.
"""
