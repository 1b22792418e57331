"""A perfect robot in a still scene: three named keypoints at 10 Hz (the names of the tiny
policies in test_policy.py) and, at 50 Hz, a robot state at the last pose commanded."""

import numpy as np

from kil.msgs import Keypoints, PoseCommand, RobotState
from kil.stage import Stage, every, subscribe

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
NAMES = ("block/a", "block/b", "tray/c")
POINTS = np.array([[0.45, 0.0, 0.0], [0.48, 0.0, 0.0], [0.6, 0.2, 0.0]], np.float32)


class KeypointScene(Stage):
    outputs = {"keypoints": Keypoints, "state": RobotState}

    def __init__(self, config, io):
        super().__init__(config, io)
        self.position = np.array([0.5, 0.0, 0.25])
        self.orientation = DOWN

    @subscribe(command=PoseCommand)
    def on_command(self, command):
        self.position, self.orientation = command.position, command.orientation

    @every(hz=50)
    def state(self):
        self.io.publish("state", RobotState(stamp_ns=self.io.now_ns(), frame_id="base_link", position=self.position,
                                            orientation=self.orientation, gripper=0.08))

    @every(hz=10)
    def keypoints(self):
        n = len(NAMES)
        self.io.publish("keypoints", Keypoints(stamp_ns=self.io.now_ns(), frame_id="base_link", names=NAMES, uv=np.zeros((n, 2), np.float32),
                                               xyz=POINTS, score=np.ones(n, np.float32), visible=np.ones(n, bool)))


STAGE = KeypointScene
