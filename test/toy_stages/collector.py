"""Keeps (receive time, message) for every PoseCommand it gets."""

from kil.msgs import PoseCommand
from kil.stage import Stage, subscribe


class Collector(Stage):
    def __init__(self, config, io):
        super().__init__(config, io)
        self.received = []
        self.stopped = False

    @subscribe(inp=PoseCommand)
    def on_pose(self, msg):
        self.received.append((self.io.now_ns(), msg))

    def stop(self):
        self.stopped = True


STAGE = Collector
