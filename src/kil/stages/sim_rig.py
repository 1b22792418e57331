"""Sim rig node: the simulated robot, camera and table, with a real rig's interfaces.

Inputs: absolute EE pose targets (100 Hz, base frame) and gripper commands. Outputs: RGB-D
frames at the camera rate, the robot state, and ground truth for oracle keypoints and for
scoring (true named keypoints with each frame; object poses on TF as ``sim/obj<i>`` with
each state). Each control tick
advances physics by exactly one period of the runtime clock, so on the stepped clock sim
time and graph time are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kil.config import require
from kil.geometry import matrix_to_quat, quat_to_matrix
from kil.msgs import RGBD, GripperCommand, Keypoints, PoseCommand, RobotState, TaskProgress
from kil.sim.world import CameraConfig
from kil.stage import Stage, every, service, subscribe


MAX_CATCH_UP_STEPS = 20  # physics steps one late control tick may run


@dataclass(frozen=True)
class SimRigConfig:
    robot: str = "panda"
    task: str = "pick_place"
    variation: str = "in"
    seed: int = 0
    control_hz: float = 100.0
    camera_rate_hz: float = 15.0
    state_rate_hz: float = 50.0
    base_frame: str = "base_link"
    camera_frame: str = "camera_color_optical_frame"
    camera: CameraConfig = field(default_factory=CameraConfig)
    kp: float = 300.0  # OSC stiffness
    visibility_tolerance: float = 0.01  # m: a keypoint is visible when the depth image agrees
    render: bool = True  # false: no camera frames (benchmarks of the expert's success only)
    stop_when_done_s: float = 0.0  # > 0: stop the graph once the task has been complete this long (evaluation)
    # Under ROS 2 with use_sim_time: simulated seconds per wall-clock second, at most (the
    # rig publishes /clock; below 1 a slow machine still closes the loop as a fast one would).
    real_time_factor: float = 1.0

    def __post_init__(self) -> None:
        require(10 <= self.camera_rate_hz <= 30, "camera_rate_hz", f"a camera runs at 10-30 Hz, got {self.camera_rate_hz}")
        require(self.control_hz >= 50, "control_hz", f"must be >= 50, got {self.control_hz}")
        require(self.state_rate_hz > 0, "state_rate_hz", "must be > 0")
        require(0 < self.real_time_factor <= 10, "real_time_factor", f"must be in (0, 10], got {self.real_time_factor}")


def build_world(config: SimRigConfig):
    """The SimWorld for a rig config (task, robot, variation, seed)."""
    from kil.sim.episode import make_world

    return make_world(config.task, config.robot, config.variation, config.seed, config.camera, config.control_hz, config.kp)


class SimRig(Stage):
    Config = SimRigConfig
    outputs = {"rgbd": RGBD, "state": RobotState, "ground_truth": Keypoints, "progress": TaskProgress}
    drives_clock = True
    live_params = frozenset({"real_time_factor"})

    def __init__(self, config: SimRigConfig, io) -> None:
        super().__init__(config, io)
        self.world = build_world(config)
        T = self.world.ee_pose()
        self._target = (T[:3, 3].copy(), T[:3, :3].copy())  # hold the start pose until told otherwise
        self._gripper_opening: float | None = None
        self.keypoint_names = tuple(self.world.keypoints()[0])  # ground truth, by index
        self.completion: float | None = None
        self._done_since_ns: int | None = None
        self.camera_on = True
        self._last_control_ns: int | None = None

    @service("stop_camera")
    def stop_camera(self) -> tuple[bool, str]:
        """Fault injection: the camera stops publishing (as if unplugged) until start_camera."""
        self.camera_on = False
        return True, "camera stopped"

    @service("start_camera")
    def start_camera(self) -> tuple[bool, str]:
        self.camera_on = True
        return True, "camera started"

    @property
    def real_time_factor(self) -> float:
        return self.config.real_time_factor

    def start(self) -> None:
        self.io.send_transform(self.config.base_frame, "sim/table", _translation(0, 0, self.world.table_z), self.io.now_ns(), static=True)

    @subscribe(target=PoseCommand)
    def on_target(self, target: PoseCommand) -> None:
        if target.frame_id != self.config.base_frame:
            self.io.log.warning("pose target in frame %r ignored: the sim takes %r", target.frame_id, self.config.base_frame)
            return
        self._target = (target.position, quat_to_matrix(target.orientation))

    @subscribe(gripper=GripperCommand)
    def on_gripper(self, command: GripperCommand) -> None:
        self._gripper_opening = command.position

    @every(hz="control_hz")
    def control(self) -> None:
        # On the real-time clock a tick can come late (a render on this thread): physics
        # catches up so sim time keeps pace with the clock. On the stepped clock: one step.
        now, period = self.io.now_ns(), 1e9 / self.config.control_hz
        steps = 1 if self._last_control_ns is None else int(min(max(round((now - self._last_control_ns) / period), 1), MAX_CATCH_UP_STEPS))
        self._last_control_ns = now
        for _ in range(steps):
            self.world.step(*self._target, self._gripper_opening)

    @every(hz="state_rate_hz")
    def publish_state(self) -> None:
        now = self.io.now_ns()
        for i in range(len(self.world.scene.objects)):
            self.io.send_transform(self.config.base_frame, f"sim/obj{i}", self.world.object_pose(i), now)
        T = self.world.ee_pose()
        self.io.publish("state", RobotState(
            stamp_ns=now,
            frame_id=self.config.base_frame,
            position=T[:3, 3],
            orientation=matrix_to_quat(T[:3, :3]),
            gripper=self.world.gripper_opening(),
            joint_names=self.world.joint_names(),
            joint_positions=self.world.joint_positions(),
        ))

    @every(hz="camera_rate_hz")
    def publish_frame(self) -> None:
        if not (self.config.render and self.camera_on):
            return
        now = self.io.now_ns()
        rgb, depth = self.world.render()
        frame = RGBD(
            stamp_ns=now, frame_id=self.config.camera_frame, rgb=rgb, depth=depth, K=self.world.K,
            base_frame_id=self.config.base_frame, T_base_camera=self.world.T_base_camera,
        )
        self.io.publish("rgbd", frame)
        self.io.publish("ground_truth", self.true_keypoints(frame))
        completion = float(self.world.completion())
        self.io.publish("progress", TaskProgress(stamp_ns=now, completion=completion))
        if self.config.stop_when_done_s > 0:
            self._check_done(now, completion)

    def _check_done(self, now: int, completion: float) -> None:
        if completion < 1.0:
            self._done_since_ns = None
        elif self._done_since_ns is None:
            self._done_since_ns = now
        elif now - self._done_since_ns >= self.config.stop_when_done_s * 1e9:
            self.io.shutdown("task complete")

    def true_keypoints(self, frame: RGBD) -> Keypoints:
        """The objects' named points at their true positions, projected into `frame`; a point
        is visible where it is in the image and the depth image sees it (not occluded)."""
        truth = self.world.projected_keypoints(frame.depth, self.config.visibility_tolerance)
        return Keypoints(
            stamp_ns=frame.stamp_ns, frame_id=self.config.base_frame, names=truth.names,
            uv=truth.uv.astype(np.float32), xyz=truth.xyz.astype(np.float32),
            score=np.ones(len(truth.names), np.float32), visible=truth.visible, instance=truth.instance,
        )

    def stop(self) -> None:
        self.completion = self.world.completion()
        self.world.close()


def _translation(x: float, y: float, z: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


STAGE = SimRig
