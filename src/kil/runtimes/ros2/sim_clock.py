"""Simulated time for the ROS 2 node of a clock-driving stage (the simulator).

With ``use_sim_time`` the simulator is the graph's clock: its node runs the stage's timers
on simulated time that it advances itself, one deadline at a time, publishes each new time
on /clock, and every other node (``use_sim_time:=true``) stamps, times and watches its
inputs by it. The simulator never runs faster than `real_time_factor` times the wall clock;
when its own work (physics, rendering) is slower than that, simulated time simply runs
slower: nothing is skipped and nothing has to catch up, so a slow machine sees the same
control loop as a fast one, only stretched in wall-clock time.

Between deadlines (and before each one) the node's incoming messages are handled, so a pose
target that arrived before a control tick is in force at that tick.

Pure Python: the ROS 2 shell passes in the callables that touch rclpy.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

MAX_LAG_S = 0.05  # wall seconds behind schedule after which the pace restarts from now
MAX_DRAIN = 200  # incoming callbacks handled at most before one deadline


class SimClock:
    """Deadlines on simulated time (ns), run in order and paced against the wall clock.

    `publish_clock(t_ns)` announces a new simulated time (/clock); `pace()` gives the
    real-time factor in force (it may change while running); `spin(timeout_s)` handles at
    most one incoming callback, waiting up to `timeout_s`, and says whether it handled one.
    """

    def __init__(self, start_ns: int, pace: Callable[[], float], publish_clock: Callable[[int], None],
                 wall: Callable[[], float] = time.monotonic) -> None:
        self._now = int(start_ns)
        self._pace = pace
        self._publish_clock = publish_clock
        self._wall = wall
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self.published_ns: int | None = None
        self.lag_restarts = 0  # how often the wall clock got ahead of the schedule (work slower than the pace)

    def now_ns(self) -> int:
        return self._now

    def schedule(self, deadline_ns: int, callback: Callable[[], None]) -> None:
        heapq.heappush(self._events, (int(deadline_ns), next(self._sequence), callback))

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.schedule(self._now + max(int(round(delay_s * 1e9)), 1), callback)

    def every(self, period_ns: int, callback: Callable[[], None]) -> None:
        """Run `callback` every `period_ns` of simulated time, first one period from now."""
        period_ns = int(period_ns)

        def tick(deadline: int) -> None:
            self.schedule(deadline + period_ns, lambda: tick(deadline + period_ns))
            callback()

        first = self._now + period_ns
        self.schedule(first, lambda: tick(first))

    def run(self, stop: threading.Event, spin: Callable[[float], bool]) -> None:
        """Advance time deadline by deadline until `stop` is set."""
        self._announce()
        anchor_wall, anchor_sim, anchor_pace = self._wall(), self._now, self._pace()
        while not stop.is_set():
            if not self._events:
                spin(0.1)
                continue
            deadline = self._events[0][0]
            pace = self._pace()
            if pace != anchor_pace:  # a new real-time factor counts from now
                anchor_wall, anchor_sim, anchor_pace = self._wall(), self._now, pace
            due = anchor_wall + (deadline - anchor_sim) / 1e9 / pace
            remaining = due - self._wall()
            if remaining > 0:
                spin(min(remaining, 0.1))
                continue
            if remaining < -MAX_LAG_S:  # the work is slower than the pace: simulated time runs slower
                anchor_wall, anchor_sim = self._wall(), deadline
                self.lag_restarts += 1
            for _ in range(MAX_DRAIN):  # inputs that came in count from this deadline on
                if not spin(0.0):
                    break
            self._now = max(self._now, deadline)
            self._announce()
            while self._events and self._events[0][0] <= self._now and not stop.is_set():
                _, _, callback = heapq.heappop(self._events)
                callback()

    def _announce(self) -> None:
        if self.published_ns != self._now:
            self.published_ns = self._now
            self._publish_clock(self._now)
