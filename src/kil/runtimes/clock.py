"""Clocks for the local runtime. Both keep absolute deadlines, so timers never drift."""

from __future__ import annotations

import time


class SteppedClock:
    """Simulated time: jumps straight to each deadline, so runs are deterministic and as
    fast as the computation allows."""

    realtime = False

    def __init__(self, start_ns: int = 0) -> None:
        self._now = int(start_ns)

    def now_ns(self) -> int:
        return self._now

    def wait_until(self, deadline_ns: int) -> None:
        self._now = max(self._now, int(deadline_ns))


class RealTimeClock:
    """Wall-clock time (epoch nanoseconds) that never steps backwards; waits sleep until an
    absolute deadline rather than for a duration."""

    realtime = True

    def __init__(self) -> None:
        self._offset = time.time_ns() - time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() + self._offset

    def wait_until(self, deadline_ns: int) -> None:
        while True:
            remaining = deadline_ns - self.now_ns()
            if remaining <= 0:
                return
            time.sleep(remaining / 1e9)
