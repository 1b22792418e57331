"""The keypoint diffusion policy (paper 001, section III-C): representations, normalisation,
model, training and inference. No ROS here."""
