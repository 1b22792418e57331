"""One simulated episode from its four coordinates: task, robot, variation, seed."""

from __future__ import annotations

from kil.sim.objects import load_catalogue
from kil.sim.scene import SceneSpec, sample_scene
from kil.sim.tasks import task_config
from kil.sim.world import CameraConfig, SimWorld, WorldConfig


def episode_scene(task: str, variation: str, seed: int) -> SceneSpec:
    """The scene (objects, poses, colours, lights) of an episode; pure and deterministic."""
    return sample_scene(task, task_config(task), load_catalogue(), variation, seed)


def make_world(task: str, robot: str, variation: str, seed: int, camera: CameraConfig = CameraConfig(),
               control_hz: float = 100.0, kp: float = 300.0) -> SimWorld:
    catalogue = load_catalogue()
    config = task_config(task)
    scene = sample_scene(task, config, catalogue, variation, seed)
    return SimWorld(WorldConfig(robot=robot, control_hz=control_hz, kp=kp, camera=camera), config, scene, catalogue)
