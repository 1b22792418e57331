"""The robosuite environment of the simulated rig: a table, one robot, a task's objects, a
fixture (tray or target), distractors and a scene camera.

Objects are built from the catalogue; the scene (poses, colours, lights) is applied after
the model loads, in the robot base frame, so one class serves every task and variation.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from kil.errors import ConfigError
from kil.sim.gl import select_gl_backend
from kil.sim.objects import ObjectInstance, build_mujoco_object
from kil.sim.scene import SceneSpec

ROBOTS = {"panda": "Panda", "ur5e": "UR5e"}  # our name -> robosuite's
TABLE_SIZE = (1.0, 1.2, 0.05)  # metres (x, y, thickness)
TABLE_TOP_WORLD = 0.8
CAMERA_NAME = "kil_camera"


def import_robosuite():
    """robosuite, loaded with a working GL backend and its console chatter turned down."""
    select_gl_backend()
    # robosuite sets its logger to INFO at import and warns about optional extras we do not
    # use; a filter outlives that.
    logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its wrappers print about gym at import
            import robosuite
            import robosuite.utils.camera_utils  # noqa: F401 - imports the wrappers too
    except ImportError as err:
        raise ConfigError(f"the simulator needs robosuite: pip install 'kil[sim]' (robosuite==1.5.2, mujoco==3.3.7, h5py) ({err})") from None
    return robosuite


def controller_config(robot: str, kp: float) -> dict:
    """robosuite's BASIC composite controller with an OSC_POSE arm taking absolute poses in
    the robot base frame."""
    from robosuite.controllers import load_composite_controller_config

    config = load_composite_controller_config(controller="BASIC", robot=ROBOTS[robot])
    for part in ("left", "torso", "head", "base", "legs"):  # parts a fixed single arm lacks
        config["body_parts"].pop(part, None)
    arm = config["body_parts"]["right"]
    arm.update(input_type="absolute", input_ref_frame="base", kp=kp, interpolation=None)
    return config


def make_env(robot: str, fixture: ObjectInstance, scene: SceneSpec, control_hz: float, kp: float = 300.0):
    """A reset robosuite environment for one episode."""
    if robot not in ROBOTS:
        raise ConfigError(f"unknown robot {robot!r} (choose one of: {', '.join(ROBOTS)})")
    import_robosuite()
    from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
    from robosuite.models.arenas import TableArena
    from robosuite.models.tasks import ManipulationTask

    class KilTableEnv(ManipulationEnv):
        def _load_model(self) -> None:
            super()._load_model()
            robot_model = self.robots[0].robot_model
            robot_model.set_base_xpos(robot_model.base_xpos_offset["table"](TABLE_SIZE[0]))
            arena = TableArena(table_full_size=TABLE_SIZE, table_offset=(0, 0, TABLE_TOP_WORLD))
            arena.set_origin([0, 0, 0])
            arena.set_camera(CAMERA_NAME, pos=[1.0, 0.0, 1.5], quat=[1, 0, 0, 0], camera_attribs={"fovy": "55"})
            self.task_objects = [build_mujoco_object(p.instance, f"obj{i}") for i, p in enumerate(scene.objects)]
            self.fixture = build_mujoco_object(fixture, "fixture", fixed=True)
            self.distractors = [build_mujoco_object(p.instance, f"distractor{i}") for i, p in enumerate(scene.distractors)]
            self.model = ManipulationTask(
                mujoco_arena=arena,
                mujoco_robots=[robot_model],
                mujoco_objects=[*self.task_objects, self.fixture, *self.distractors],
            )

        def reward(self, action=None) -> float:
            return 0.0

        def _check_success(self) -> bool:
            return False

    try:
        env = KilTableEnv(
            robots=ROBOTS[robot],
            controller_configs=controller_config(robot, kp),
            initialization_noise=None,
            use_camera_obs=False,
            has_renderer=False,
            has_offscreen_renderer=True,
            control_freq=control_hz,
            horizon=10**9,
            ignore_done=True,
            hard_reset=False,
            camera_names=[],
        )
    except FileNotFoundError as err:
        raise ConfigError(f"robosuite asset missing: {err.filename} (reinstall robosuite==1.5.2)") from None
    return env


def body_pose(sim, body: str) -> np.ndarray:
    """(4, 4) world pose of a MuJoCo body."""
    from kil.geometry import quat_to_matrix

    i = sim.model.body_name2id(body)
    T = np.eye(4)
    w, x, y, z = sim.data.body_xquat[i]
    T[:3, :3] = quat_to_matrix(np.array([x, y, z, w]))
    T[:3, 3] = sim.data.body_xpos[i]
    return T
