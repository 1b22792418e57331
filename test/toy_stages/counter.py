"""Publishes PoseCommands whose x counts 1, 2, 3, ... at `rate_hz`."""

from dataclasses import dataclass

from kil.msgs import PoseCommand
from kil.stage import Stage, every


@dataclass(frozen=True)
class CounterConfig:
    rate_hz: float = 10.0
    frame: str = "base"
    limit: int = 0  # stop the graph after this many messages (0: never)


class Counter(Stage):
    Config = CounterConfig
    outputs = {"out": PoseCommand}

    def __init__(self, config, io):
        super().__init__(config, io)
        self.count = 0

    @every(hz="rate_hz")
    def tick(self):
        self.count += 1
        self.io.publish("out", PoseCommand(self.io.now_ns(), self.config.frame, [self.count, 0, 0], [0, 0, 0, 1]))
        if self.count == self.config.limit:
            self.io.shutdown(f"sent {self.count} messages")


STAGE = Counter
