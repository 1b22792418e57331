"""Stamp matching of several streams into sets (the counterpart of message_filters'
ApproximateTimeSynchronizer), used for multi-port stage inputs and for assembling the ROS
role topics of one project message."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any


def _stamp_ns(msg: Any) -> int:
    return msg.stamp_ns


class StampSynchronizer:
    """`add` returns one message per port once every port holds a message whose stamp lies
    within `slop_ns` of the newest arrival (the closest one per port); queued messages up to
    the matched ones are then dropped. Each port keeps at most `queue_size` messages."""

    def __init__(
        self,
        ports: Sequence[str],
        slop_ns: int = 0,
        queue_size: int = 10,
        stamp_of: Callable[[Any], int] = _stamp_ns,
    ) -> None:
        self.ports = tuple(ports)
        self.slop_ns = int(slop_ns)
        self.stamp_of = stamp_of
        self.queues: dict[str, deque] = {p: deque(maxlen=queue_size) for p in self.ports}

    def add(self, port: str, msg: Any) -> tuple[Any, ...] | None:
        self.queues[port].append(msg)
        target = self.stamp_of(msg)
        chosen = []
        for p in self.ports:
            candidates = [m for m in self.queues[p] if abs(self.stamp_of(m) - target) <= self.slop_ns]
            if not candidates:
                return None
            chosen.append(min(candidates, key=lambda m: abs(self.stamp_of(m) - target)))
        for p, picked in zip(self.ports, chosen):
            while self.queues[p] and self.stamp_of(self.queues[p][0]) <= self.stamp_of(picked):
                self.queues[p].popleft()
        return tuple(chosen)
