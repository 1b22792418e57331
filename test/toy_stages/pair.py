"""Receives PoseCommands from two ports matched by stamp."""

from kil.msgs import PoseCommand
from kil.stage import Stage, subscribe


class Pair(Stage):
    def __init__(self, config, io):
        super().__init__(config, io)
        self.pairs = []

    @subscribe(slop_s=0.001, a=PoseCommand, b=PoseCommand)
    def on_pair(self, a, b):
        self.pairs.append((a.stamp_ns, b.stamp_ns, a.position[0], b.position[0]))


STAGE = Pair
