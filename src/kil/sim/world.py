"""SimWorld: one episode of the simulated rig, with the interfaces of a real one.

It takes an absolute EE pose target (base frame) and a gripper command, advances physics by
one control tick, and reports the robot state, RGB-D frames with intrinsics and the camera
pose, and the ground truth (object poses, named keypoints, task completion). Everything
it returns is in the robot base frame; the world frame of MuJoCo stays inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kil.config import require
from kil.geometry import invert, look_at_pose, matrix_to_quat, project
from kil.perception.spec import keypoint_name
from kil.sim.correspondence import View
from kil.sim.env import CAMERA_NAME, TABLE_TOP_WORLD, body_pose, make_env
from kil.sim.objects import Catalogue, shape_of
from kil.sim.scene import SceneSpec
from kil.sim.tasks import ObjectState, TaskConfig, make_task

# Arm joint names as the real drivers publish them.
JOINT_NAMES = {
    "panda": tuple(f"panda_joint{i}" for i in range(1, 8)),
    "ur5e": ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"),
}


@dataclass(frozen=True)
class CameraConfig:
    """The scene camera, placed like a tripod-mounted ZED 2i: eye and look-at point in the
    robot base frame (metres), vertical field of view in degrees."""

    width: int = 640
    height: int = 480
    fovy_deg: float = 55.0
    eye: tuple[float, float, float] = (1.08, -0.38, 0.56)
    look_at: tuple[float, float, float] = (0.48, 0.04, -0.12)

    def __post_init__(self) -> None:
        # robosuite's offscreen buffer is 640x480
        require(16 <= self.width <= 640 and 16 <= self.height <= 480, "width", f"image size must be at most 640x480 px, got {self.width}x{self.height}")
        require(10 <= self.fovy_deg <= 150, "fovy_deg", f"must be in [10, 150], got {self.fovy_deg}")
        require(np.linalg.norm(np.subtract(self.look_at, self.eye)) > 0.05, "look_at", "must differ from eye")


@dataclass(frozen=True)
class WorldConfig:
    robot: str = "panda"
    control_hz: float = 100.0
    kp: float = 300.0  # OSC stiffness
    camera: CameraConfig = field(default_factory=CameraConfig)


def intrinsics(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """(3, 3) pinhole matrix of an OpenGL camera; pixel centres at integer (u, v)."""
    f = height / 2 / math.tan(math.radians(fovy_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


GRIPPER_DEADBAND = 0.003  # metres

# MuJoCo cameras look along -z with +y up; the optical frame looks along +z with +y down.
_OPTICAL_FROM_MUJOCO = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class ProjectedKeypoints:
    """True named points: names; xyz (N, 3) metres, base frame; instance (N,); uv (N, 2)
    pixels (0 where outside the image); inside (N,) bool; visible (N,) bool (not occluded)."""

    names: tuple[str, ...]
    xyz: np.ndarray
    instance: np.ndarray
    uv: np.ndarray
    inside: np.ndarray
    visible: np.ndarray


class SimWorld:
    def __init__(self, config: WorldConfig, task_config: TaskConfig, scene: SceneSpec, catalogue: Catalogue) -> None:
        self.config = config
        self.scene = scene
        self.catalogue = catalogue
        self.env = make_env(config.robot, catalogue.instance(task_config.fixture.instance), scene, config.control_hz, config.kp)
        self.env.reset()
        self.sim = self.env.sim
        self.robot = self.env.robots[0]
        self.T_world_base = body_pose(self.sim, self.robot.robot_model.root_body)
        self.T_base_world = invert(self.T_world_base)
        self.task = make_task(scene.task, task_config, catalogue, self.table_z)
        self.gripper_model = self.robot.gripper["right"]
        self.grip_site = self.gripper_model.important_sites["grip_site"]
        self.ticks = 0
        self._gripper_target: float | None = None  # opening in metres; None: fully open
        self._setup_camera(config.camera)
        self._apply_scene()
        self.hold()

    # ------------------------------------------------------------------ set-up

    def _setup_camera(self, cam: CameraConfig) -> None:
        model = self.sim.model._model
        self.K = intrinsics(cam.width, cam.height, cam.fovy_deg)
        model.cam_fovy[self.sim.model.camera_name2id(CAMERA_NAME)] = cam.fovy_deg
        self.set_camera_pose(look_at_pose(np.asarray(cam.eye, float), np.asarray(cam.look_at, float)))

    def set_camera_pose(self, T_base_camera: np.ndarray) -> None:
        """Move the scene camera: (4, 4) optical-frame pose in the base frame."""
        self.T_base_camera = np.asarray(T_base_camera, dtype=float)
        T_world_cam = self.T_world_base @ self.T_base_camera
        model = self.sim.model._model
        cam_id = self.sim.model.camera_name2id(CAMERA_NAME)
        model.cam_pos[cam_id] = T_world_cam[:3, 3]
        x, y, z, w = matrix_to_quat(T_world_cam[:3, :3] @ _OPTICAL_FROM_MUJOCO)
        model.cam_quat[cam_id] = [w, x, y, z]
        self.sim.forward()

    def _apply_scene(self) -> None:
        model = self.sim.model
        fixture_body = model.body_name2id("fixture_root")
        model._model.body_pos[fixture_body] = self.world_point(self.task.fixture_position)
        placed = [(f"obj{i}_joint0", p) for i, p in enumerate(self.scene.objects)]
        placed += [(f"distractor{i}_joint0", p) for i, p in enumerate(self.scene.distractors)]
        for joint, p in placed:
            half = shape_of(p.instance).half_extents(p.instance)
            position = self.world_point(np.array([*p.xy, self.table_z + half[2] + 0.002]))
            yaw_world = p.yaw + math.atan2(self.T_world_base[1, 0], self.T_world_base[0, 0])
            self.sim.data.set_joint_qpos(joint, np.array([*position, math.cos(yaw_world / 2), 0, 0, math.sin(yaw_world / 2)]))
        table = model.geom_name2id("table_visual")
        model._model.geom_rgba[table] = self.scene.table_rgba
        if not self.scene.table_texture:
            model._model.geom_matid[table] = -1
        light = self.scene.lighting
        model._model.light_diffuse[:] = light.diffuse
        model._model.light_ambient[:] = light.ambient
        model._model.light_dir[:] = light.direction
        self.sim.forward()

    def hold(self, settle_s: float = 0.3) -> None:
        """Let objects settle with the arm holding its pose (before the episode starts)."""
        T = self.ee_pose()
        for _ in range(int(round(settle_s * self.config.control_hz))):
            self.step(T[:3, 3], T[:3, :3], None)
        self.ticks = 0

    # ------------------------------------------------------------------ frames

    @property
    def table_z(self) -> float:
        """Height of the table top in the base frame (metres)."""
        return TABLE_TOP_WORLD - self.T_world_base[2, 3]

    def world_point(self, p_base: np.ndarray) -> np.ndarray:
        return self.T_world_base[:3, :3] @ p_base + self.T_world_base[:3, 3]

    @property
    def time_s(self) -> float:
        return self.ticks / self.config.control_hz

    # ------------------------------------------------------------------ control

    def step(self, position: np.ndarray, rotation: np.ndarray, gripper_opening: float | None) -> None:
        """Advance one control tick towards the EE target (position (3,) m and rotation (3, 3),
        base frame) and the gripper opening (m; None keeps the last command)."""
        from scipy.spatial.transform import Rotation

        if gripper_opening is not None:
            self._gripper_target = gripper_opening
        action = np.concatenate([position, Rotation.from_matrix(rotation).as_rotvec(), [self._gripper_action()]])
        self.env.step(action)
        self.ticks += 1

    def _gripper_action(self) -> float:
        """robosuite's grippers integrate the sign of the action (+1 closes, 0 holds), so a
        deadband loop on the measured opening tracks a width; closing on an object keeps
        squeezing."""
        if self._gripper_target is None:
            return -1.0
        error = self.gripper_opening() - self._gripper_target
        return 0.0 if abs(error) < GRIPPER_DEADBAND else float(np.sign(error))

    # ------------------------------------------------------------------ state

    def ee_pose(self) -> np.ndarray:
        """(4, 4) pose of the grip site (the controlled EE frame) in the base frame."""
        sid = self.sim.model.site_name2id(self.grip_site)
        T = np.eye(4)
        T[:3, :3] = self.sim.data.site_xmat[sid].reshape(3, 3)
        T[:3, 3] = self.sim.data.site_xpos[sid]
        return self.T_base_world @ T

    def gripper_opening(self) -> float:
        """Distance between the finger pads (metres)."""
        pads = [self.gripper_model.important_geoms[k][0] for k in ("left_fingerpad", "right_fingerpad")]
        ids = [self.sim.model.geom_name2id(g) for g in pads]
        between = self.sim.data.geom_xpos[ids[1]] - self.sim.data.geom_xpos[ids[0]]
        gap = float(np.linalg.norm(between))
        axis = between / max(gap, 1e-9)
        # each pad's half-thickness along the closing direction (box half-sizes in its own frame)
        thickness = sum(float(np.abs(self.sim.data.geom_xmat[i].reshape(3, 3).T @ axis) @ self.sim.model.geom_size[i]) for i in ids)
        return max(0.0, gap - thickness)

    def joint_positions(self) -> np.ndarray:
        return np.array(self.sim.data.qpos[self.robot._ref_joint_pos_indexes], dtype=float)

    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES[self.config.robot]

    # ------------------------------------------------------------------ camera

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (H, W, 3) uint8, depth (H, W) float32 metres along the optical axis), right way up."""
        from robosuite.utils.camera_utils import get_real_depth_map

        cam = self.config.camera
        rgb, depth = self.sim.render(width=cam.width, height=cam.height, camera_name=CAMERA_NAME, depth=True)
        depth = get_real_depth_map(self.sim, depth)
        return np.ascontiguousarray(rgb[::-1]), np.ascontiguousarray(depth[::-1], dtype=np.float32)

    def render_segmentation(self) -> np.ndarray:
        """(H, W) int32 MuJoCo body id seen at each pixel (-1: none)."""
        cam = self.config.camera
        seg = self.sim.render(width=cam.width, height=cam.height, camera_name=CAMERA_NAME, segmentation=True)
        seg = np.ascontiguousarray(seg[::-1])
        geom_ids = np.where(seg[..., 0] == 5, seg[..., 1], -1)  # mjOBJ_GEOM
        body = np.full(geom_ids.shape, -1, dtype=np.int32)
        valid = geom_ids >= 0
        body[valid] = self.sim.model.geom_bodyid[geom_ids[valid]]
        return body

    # ------------------------------------------------------------------ ground truth

    def object_body(self, index: int) -> str:
        return f"obj{index}_root"

    def object_pose(self, index: int) -> np.ndarray:
        """(4, 4) pose of task object `index` in the base frame."""
        return self.T_base_world @ body_pose(self.sim, self.object_body(index))

    def object_states(self) -> list[ObjectState]:
        return [ObjectState(T[:3, 3], T[:3, :3]) for T in (self.object_pose(i) for i in range(len(self.scene.objects)))]

    def object_half_heights(self) -> list[float]:
        return [float(shape_of(p.instance).half_extents(p.instance)[2]) for p in self.scene.objects]

    def keypoints(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """True named points of every task object and the fixture: names as a spec's layout
        writes them ("<category>/<point>", "<category>[i]/<point>" for object i of several),
        (N, 3) positions in the base frame, (N,) instance index (the fixture is last)."""
        names, points, instance = [], [], []
        several = len(self.scene.objects) > 1
        category = self.task.config.category
        wanted = self.catalogue.category(category).keypoints
        for i, placement in enumerate(self.scene.objects):
            T = self.object_pose(i)
            kps = shape_of(placement.instance).keypoints(placement.instance)
            for name in wanted:
                names.append(keypoint_name(category, name, i if several else None))
                points.append(T[:3, :3] @ kps[name] + T[:3, 3])
                instance.append(i)
        fixture_category = self.catalogue.category_of(self.task.fixture.id)
        T_fix = np.eye(4)
        T_fix[:3, 3] = self.task.fixture_position
        for name, p in shape_of(self.task.fixture).keypoints(self.task.fixture).items():
            names.append(keypoint_name(fixture_category, name))
            points.append(p + T_fix[:3, 3])
            instance.append(len(self.scene.objects))
        return names, np.array(points, dtype=float).reshape(-1, 3), np.array(instance, dtype=np.int32)

    def projected_keypoints(self, depth: np.ndarray, tolerance: float = 0.01) -> ProjectedKeypoints:
        """The true named points seen by the camera now: a point is visible where it projects
        into the image and `depth` (this camera's render) agrees within `tolerance` metres at
        its pixel or a neighbouring one (points on an object's edge, like a block's corner,
        fall on either side of it)."""
        names, xyz, instance = self.keypoints()
        uv, z = project(self.K, self.T_base_camera, xyz)
        h, w = depth.shape
        px = np.round(np.nan_to_num(uv, nan=-1.0)).astype(int)
        inside = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        visible = np.zeros(len(z), bool)
        for k in np.flatnonzero(inside):
            u, v = px[k]
            window = depth[max(v - 1, 0): v + 2, max(u - 1, 0): u + 2]
            visible[k] = bool(np.any(np.abs(window - z[k]) < tolerance))
        return ProjectedKeypoints(tuple(names), xyz, instance, np.where(inside[:, None], uv, 0.0), inside, visible)

    def capture_view(self) -> View:
        """Render everything needed to relate this view's pixels to another view's."""
        rgb, depth = self.render()
        bodies = self.render_segmentation()
        poses = {int(b): self.T_base_world @ body_pose(self.sim, self.sim.model.body_id2name(int(b))) for b in np.unique(bodies) if b >= 0}
        return View(rgb, depth, bodies, self.K.copy(), self.T_base_camera.copy(), poses, self.object_bodies(), self.robot_bodies(),
                    self.distractor_bodies())

    def recolour_objects(self, rng: np.random.Generator) -> None:
        """Give every task object, the fixture and every distractor one random colour (hue
        anywhere, saturation and value in [0.25, 1]), so that colour alone tells nothing of
        what an object is (training views for colour-invariant descriptors)."""
        import colorsys

        model = self.sim.model
        targets = set(self.object_bodies()) | set(self.distractor_bodies())
        colour = {b: (*colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.25, 1), rng.uniform(0.25, 1)), 1.0) for b in sorted(targets)}
        for g in range(model.ngeom):
            body = int(model.geom_bodyid[g])
            while body not in targets and body > 0:
                body = int(model.body_parentid[body])
            if body in targets and model._model.geom_rgba[g][3] > 0:  # collision-only geoms stay invisible
                model._model.geom_rgba[g] = colour[body]
                model._model.geom_matid[g] = -1
        self.sim.forward()

    def distractor_bodies(self) -> frozenset[int]:
        """MuJoCo body ids of the scene's distractors (clutter that is no task object)."""
        model = self.sim.model
        return frozenset(i for i in range(model.nbody) if (model.body_id2name(i) or "").startswith("distractor"))

    def robot_bodies(self) -> frozenset[int]:
        """MuJoCo body ids of the arm and its gripper."""
        model = self.sim.model
        prefixes = (self.robot.robot_model.naming_prefix, self.gripper_model.naming_prefix)
        return frozenset(i for i in range(model.nbody) if (model.body_id2name(i) or "").startswith(prefixes))

    def object_bodies(self) -> dict[int, tuple[str, np.ndarray]]:
        """MuJoCo body id -> (category, (3,) half extents) of the task objects and the fixture."""
        out = {}
        placed = [(self.object_body(i), p.instance) for i, p in enumerate(self.scene.objects)]
        placed.append(("fixture_root", self.task.fixture))
        for body, instance in placed:
            out[self.sim.model.body_name2id(body)] = (self.catalogue.category_of(instance.id), shape_of(instance).half_extents(instance))
        return out

    def completion(self) -> float:
        """Task completion now: 0..1 (success is 1)."""
        return self.task.completion(self.object_states(), self.object_half_heights())

    def close(self) -> None:
        self.env.close()

