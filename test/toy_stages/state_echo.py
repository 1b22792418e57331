"""Echoes each RobotState it gets as a PoseCommand: position (gripper opening, 0, 0), the
state's stamp (what a test reads back to see which states came through, with which gripper)."""

from kil.msgs import PoseCommand, RobotState
from kil.stage import Stage, subscribe


class StateEcho(Stage):
    outputs = {"echo": PoseCommand}

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        self.io.publish("echo", PoseCommand(state.stamp_ns, state.frame_id, [state.gripper, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]))


STAGE = StateEcho
