"""Stamp matching of several input ports for one callback (the local runtime's counterpart
of message_filters' ApproximateTimeSynchronizer)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any


class StampSynchronizer:
    """Calls `callback(*msgs)` with one message per port once every port holds a message
    whose `stamp_ns` lies within `slop_ns` of the newest arrival; older queued messages are
    dropped afterwards. Each port keeps at most `queue_size` messages."""

    def __init__(self, ports: Sequence[str], callback: Callable[..., None], slop_ns: int = 0, queue_size: int = 10) -> None:
        self.ports = tuple(ports)
        self.callback = callback
        self.slop_ns = int(slop_ns)
        self.queues: dict[str, deque] = {p: deque(maxlen=queue_size) for p in self.ports}

    def add(self, port: str, msg: Any) -> None:
        self.queues[port].append(msg)
        target = msg.stamp_ns
        chosen = []
        for p in self.ports:
            candidates = [m for m in self.queues[p] if abs(m.stamp_ns - target) <= self.slop_ns]
            if not candidates:
                return
            chosen.append(min(candidates, key=lambda m: abs(m.stamp_ns - target)))
        for p, picked in zip(self.ports, chosen):
            while self.queues[p] and self.queues[p][0].stamp_ns <= picked.stamp_ns:
                self.queues[p].popleft()
        self.callback(*chosen)
