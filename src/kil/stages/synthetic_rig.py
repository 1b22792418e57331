"""Synthetic rig node: a generated RGB-D camera over a table with a moving cube, and a robot
state tracing a circle. It publishes what a real rig's camera and state topics carry, so
the local graph, the recorder and bag reading can run before (and without) the simulator.

Rendering is an exact ray cast of the table plane z = 0 and an axis-aligned cube in the
base frame, so depth is metric and consistent with the intrinsics and camera pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.geometry import look_at_pose, matrix_to_quat
from kil.msgs import RGBD, RobotState
from kil.stage import Stage, every


@dataclass(frozen=True)
class SyntheticRigConfig:
    width: int = 320
    height: int = 240
    horizontal_fov_deg: float = 70.0
    camera_rate_hz: float = 15.0
    state_rate_hz: float = 30.0
    base_frame: str = "base_link"
    camera_frame: str = "camera_color_optical_frame"
    camera_position: tuple[float, float, float] = (0.45, -0.55, 0.55)  # metres, base frame
    look_at: tuple[float, float, float] = (0.45, 0.0, 0.0)
    cube_size: float = 0.06  # metres
    motion_period_s: float = 8.0  # one loop of the cube and the EE

    def __post_init__(self) -> None:
        require(self.width >= 8 and self.height >= 8, "width", "image must be at least 8x8")
        require(0 < self.horizontal_fov_deg < 170, "horizontal_fov_deg", "must be in (0, 170)")
        for name in ("camera_rate_hz", "state_rate_hz", "cube_size", "motion_period_s"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")


class SyntheticRig(Stage):
    Config = SyntheticRigConfig
    outputs = {"rgbd": RGBD, "state": RobotState}

    def __init__(self, config: SyntheticRigConfig, io) -> None:
        super().__init__(config, io)
        c = config
        fx = c.width / 2 / math.tan(math.radians(c.horizontal_fov_deg) / 2)
        self.K = np.array([[fx, 0, (c.width - 1) / 2], [0, fx, (c.height - 1) / 2], [0, 0, 1.0]])
        self.T_base_camera = look_at_pose(np.array(c.camera_position), np.array(c.look_at))
        u, v = np.meshgrid(np.arange(c.width), np.arange(c.height))
        rays = np.stack([(u - self.K[0, 2]) / fx, (v - self.K[1, 2]) / fx, np.ones_like(u, float)], -1)
        self.rays_base = rays @ self.T_base_camera[:3, :3].T  # (H, W, 3), camera z = 1 per ray
        self.t0: int | None = None

    def _phase(self) -> float:
        now = self.io.now_ns()
        self.t0 = now if self.t0 is None else self.t0
        return 2 * math.pi * (now - self.t0) / 1e9 / self.config.motion_period_s

    @every(hz="camera_rate_hz")
    def publish_frame(self) -> None:
        phase = self._phase()
        centre = np.array([0.45 + 0.1 * math.cos(phase), 0.1 * math.sin(phase), self.config.cube_size / 2])
        depth, rgb = self.render(centre)
        self.io.publish(
            "rgbd",
            RGBD(
                stamp_ns=self.io.now_ns(),
                frame_id=self.config.camera_frame,
                rgb=rgb,
                depth=depth,
                K=self.K,
                base_frame_id=self.config.base_frame,
                T_base_camera=self.T_base_camera,
            ),
        )

    def render(self, cube_centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth (H, W) float32 metres, rgb (H, W, 3) uint8) of the table and the cube."""
        eye = self.T_base_camera[:3, 3]
        d = self.rays_base
        with np.errstate(divide="ignore", invalid="ignore"):
            t_table = np.where(d[..., 2] < 0, -eye[2] / d[..., 2], np.inf)
            half = self.config.cube_size / 2
            lo = (cube_centre - half - eye) / d
            hi = (cube_centre + half - eye) / d
        t_near = np.minimum(lo, hi).max(-1)
        t_far = np.maximum(lo, hi).min(-1)
        t_cube = np.where((t_near <= t_far) & (t_far > 0), t_near, np.inf)
        depth = np.minimum(t_table, t_cube).astype(np.float32)  # rays have camera z = 1
        depth[~np.isfinite(depth)] = np.nan
        hit = eye + d * np.nan_to_num(t_table, posinf=0.0)[..., None]
        checker = ((np.floor(hit[..., 0] / 0.05) + np.floor(hit[..., 1] / 0.05)) % 2)[..., None]
        rgb = np.where(checker > 0, [200, 190, 170], [160, 150, 135]).astype(float)
        on_cube = t_cube < t_table
        face_axis = np.argmax(np.minimum(lo, hi), -1)  # the slab entered last is the face hit
        shade = np.array([0.7, 0.55, 1.0])[face_axis]
        rgb[on_cube] = np.array([210, 40, 40]) * shade[on_cube, None]
        rgb[np.isnan(depth)] = [90, 110, 140]
        return depth, rgb.clip(0, 255).astype(np.uint8)

    @every(hz="state_rate_hz")
    def publish_state(self) -> None:
        phase = self._phase()
        position = np.array([0.45 + 0.12 * math.cos(phase), 0.12 * math.sin(phase), 0.3])
        yaw = np.array([[math.cos(phase), -math.sin(phase), 0], [math.sin(phase), math.cos(phase), 0], [0, 0, 1]])
        orientation = matrix_to_quat(yaw @ np.diag([1.0, -1.0, -1.0]))  # pointing down, turning
        self.io.publish(
            "state",
            RobotState(
                stamp_ns=self.io.now_ns(),
                frame_id=self.config.base_frame,
                position=position,
                orientation=orientation,
                gripper=0.04 + 0.04 * math.sin(phase),
            ),
        )


STAGE = SyntheticRig
