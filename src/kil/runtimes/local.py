"""The local runtime: a whole graph in one process, with typed in-memory topics.

Timers and delayed calls are kept in one queue of absolute deadlines. Published messages
are delivered, in publishing order, before the clock moves on, so with the stepped clock
a run is deterministic (identical message counts and stamps every time) and runs faster
than real time; with the real-time clock it paces itself against the wall clock and skips
(and counts) timer ticks it could not keep rather than bunching them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kil.graph import GraphSpec, NodeSpec, TopicSpec
from kil.runtimes.clock import RealTimeClock, SteppedClock
from kil.runtimes.tf import TransformBuffer
from kil.stage import Stage
from kil.sync import StampSynchronizer

DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000  # stepped runs start at a fixed epoch


@dataclass
class RunStats:
    """What a run did: messages per topic, timer ticks skipped under load, why it stopped."""

    published: Counter = field(default_factory=Counter)
    skipped_ticks: Counter = field(default_factory=Counter)
    start_ns: int = 0
    end_ns: int = 0
    stop_reason: str = ""


def _call_if_matched(callback: Callable[..., None], matched: tuple | None) -> None:
    if matched is not None:
        callback(*matched)


class _LocalIO:
    """The StageIO a stage gets in the local runtime."""

    def __init__(self, runtime: LocalRuntime, node: NodeSpec) -> None:
        self._runtime = runtime
        self._node = node
        self.log = logging.getLogger(f"kil.{node.name}")

    def publish(self, port: str, msg: Any) -> None:
        if port not in self._node.stage_class.outputs:
            raise KeyError(f"node {self._node.name}: no output port {port!r}")
        topic = self._node.publish.get(port)
        if topic is not None:
            self._runtime._publish(self._node.name, topic, msg)

    def now_ns(self) -> int:
        return self._runtime.clock.now_ns()

    def topic(self, port: str) -> TopicSpec | None:
        name = self._node.publish.get(port) or self._node.subscribe.get(port)
        return None if name is None else self._runtime.graph.topics[name]

    def lookup_transform(self, parent: str, child: str, stamp_ns: int | None = None) -> np.ndarray:
        return self._runtime.tf.lookup(parent, child, stamp_ns)

    def send_transform(self, parent: str, child: str, T: np.ndarray, stamp_ns: int, static: bool = False) -> None:
        self._runtime.tf.set_transform(parent, child, T, stamp_ns, static)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._runtime._schedule(self.now_ns() + int(round(delay_s * 1e9)), callback)

    def shutdown(self, reason: str) -> None:
        self._runtime.request_stop(f"{self._node.name}: {reason}")


class LocalRuntime:
    """Builds every node of a graph and runs them against one clock."""

    def __init__(self, graph: GraphSpec, clock: str = "stepped", start_ns: int = DEFAULT_START_NS) -> None:
        if clock not in ("stepped", "realtime"):
            raise ValueError(f"clock must be 'stepped' or 'realtime', got {clock!r}")
        self.graph = graph
        self.clock = SteppedClock(start_ns) if clock == "stepped" else RealTimeClock()
        self.tf = TransformBuffer()
        self.stats = RunStats()
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._deliveries: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._subscribers: dict[str, list[Callable[[Any], None]]] = {t: [] for t in graph.topics}
        self._timers: list[tuple[str, Callable[[], None], int]] = []  # scheduled when run() starts
        self._stop_reason: str | None = None
        self._pending_at: list[tuple[float, Callable[[], None]]] = []
        self.log = logging.getLogger("kil.local")
        self.stages: dict[str, Stage] = {name: self._build(node) for name, node in graph.nodes.items()}
        optional = {node.subscribe[p] for node in graph.nodes.values() for p in node.stage_class.optional_ports() if p in node.subscribe}
        for topic, subscribers in self._subscribers.items():
            if subscribers and not graph.publishers(topic) and topic not in optional:  # e.g. an e-stop: published from outside
                self.log.warning("topic %s has subscribers but no publisher in graph %s", topic, graph.name)

    def _build(self, node: NodeSpec) -> Stage:
        stage = node.stage_class(node.config, _LocalIO(self, node))
        for sub in node.stage_class.subscriptions():
            callback = getattr(stage, sub.method)
            if sub.any_port:
                for port, topic in node.subscribe.items():
                    if port not in sub.ports and port not in node.stage_class.input_ports():
                        self._subscribers[topic].append(lambda msg, p=port, cb=callback: cb(p, msg))
            elif len(sub.ports) == 1:
                (port,) = sub.ports
                if port in node.subscribe:  # an optional port may be unconnected
                    self._subscribers[node.subscribe[port]].append(callback)
            else:
                topics = [node.subscribe[p] for p in sub.ports]
                depth = max(self.graph.topics[t].qos.depth for t in topics)
                sync = StampSynchronizer(list(sub.ports), int(round(sub.slop_s * 1e9)), depth)
                for port, topic in zip(sub.ports, topics):
                    self._subscribers[topic].append(lambda msg, p=port, s=sync, cb=callback: _call_if_matched(cb, s.add(p, msg)))
        for timer in node.stage_class.timers():
            label = f"{node.name}.{timer.method}"
            self._timers.append((label, getattr(stage, timer.method), timer.period_ns(node.config)))
        return stage

    def _start_timer(self, label: str, callback: Callable[[], None], period_ns: int, start_ns: int) -> None:
        state = {"deadline": start_ns + period_ns}

        def tick() -> None:
            callback()
            state["deadline"] += period_ns
            late = self.clock.now_ns() - state["deadline"]
            if self.clock.realtime and late >= 0:  # overran: skip missed ticks, keep the phase
                missed = late // period_ns + 1
                self.stats.skipped_ticks[label] += missed
                state["deadline"] += missed * period_ns
            self._schedule(state["deadline"], tick)

        self._schedule(state["deadline"], tick)

    def _schedule(self, deadline_ns: int, callback: Callable[[], None]) -> None:
        heapq.heappush(self._events, (int(deadline_ns), next(self._sequence), callback))

    def _publish(self, node: str, topic: str, msg: Any) -> None:
        expected = self.graph.topics[topic].type
        if not isinstance(msg, expected):
            raise TypeError(f"node {node} published {type(msg).__name__} on {topic}, which carries {expected.__name__}")
        self.stats.published[topic] += 1
        for subscriber in self._subscribers[topic]:
            self._deliveries.append((subscriber, msg))

    def _drain(self) -> None:
        # Messages already published are delivered even after a stop request.
        while self._deliveries:
            callback, msg = self._deliveries.popleft()
            callback(msg)

    def call_service(self, node: str, service: str) -> tuple[bool, str]:
        """Call a stage's service (what `ros2 service call` does on a robot)."""
        stage = self.stages[node]
        methods = type(stage).services()
        if service not in methods:
            raise KeyError(f"node {node}: no service {service!r} (services: {', '.join(methods) or 'none'})")
        result = getattr(stage, methods[service])()
        self._drain()
        return result

    def at(self, time_s: float, callback: Callable[[], None]) -> None:
        """Run `callback` once `time_s` seconds of clock time after the run starts (an
        operator's action in a scripted run: an e-stop, a service call, a key)."""
        self._pending_at.append((time_s, callback))

    def inject(self, topic: str, msg: Any) -> None:
        """Publish `msg` on `topic` from outside the graph (what `ros2 topic pub` does)."""
        self._publish("<external>", topic, msg)
        self._drain()

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def run(self, duration_s: float | None = None) -> RunStats:
        """Start every stage, run until `duration_s` of clock time has passed (events at the
        end time included), a stage asks to stop, or nothing is left to do; then stop all.
        A runtime runs once."""
        try:
            for stage in self.stages.values():
                stage.start()
            start = self.stats.start_ns = self.clock.now_ns()  # timers count from here
            end = None if duration_s is None else start + int(round(duration_s * 1e9))
            for label, callback, period_ns in self._timers:
                self._start_timer(label, callback, period_ns, start)
            for time_s, callback in self._pending_at:
                self._schedule(start + int(round(time_s * 1e9)), callback)
            self._drain()
            while self._stop_reason is None and self._events:
                deadline = self._events[0][0]
                if end is not None and deadline > end:
                    self.clock.wait_until(end)
                    self.request_stop(f"ran for {duration_s:g} s")
                    break
                _, _, callback = heapq.heappop(self._events)
                self.clock.wait_until(deadline)
                callback()
                self._drain()
            if self._stop_reason is None:
                self.request_stop("nothing left to run")
        except KeyboardInterrupt:
            self.request_stop("interrupted")
            raise
        finally:
            self.stats.end_ns = self.clock.now_ns()
            self.stats.stop_reason = self._stop_reason or "error"
            for stage in self.stages.values():
                stage.stop()
        return self.stats
