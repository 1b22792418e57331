"""A slow node: each frame it receives costs `busy_s` of computation (numpy, GIL released),
like a render or a model; it remembers which thread built and ran it."""

import threading
import time
from dataclasses import dataclass

import numpy as np

from kil.msgs import PoseCommand
from kil.stage import Stage, subscribe


@dataclass(frozen=True)
class BusyConfig:
    busy_s: float = 0.05
    fail: bool = False  # raise on the first frame


class Busy(Stage):
    Config = BusyConfig

    def __init__(self, config, io):
        super().__init__(config, io)
        self.threads = {threading.current_thread().name}
        self.calls = 0
        self.lag_ns: list[int] = []  # how old each message was when its work started (clock time - stamp)
        self.counts: list[float] = []  # the x of each message worked on

    @subscribe(inp=PoseCommand)
    def work(self, msg):
        self.threads.add(threading.current_thread().name)
        self.lag_ns.append(self.io.now_ns() - msg.stamp_ns)
        self.counts.append(float(msg.position[0]))
        if self.config.fail:
            raise RuntimeError("model failed")
        a = np.random.default_rng(0).standard_normal((300, 300))
        end = time.perf_counter() + self.config.busy_s
        while time.perf_counter() < end:
            a = np.tanh(a @ a.T / 300.0)  # BLAS releases the GIL
        self.calls += 1


STAGE = Busy
