"""The local runtime: a whole graph in one process, with typed in-memory topics.

Timers and delayed calls are kept in one queue of absolute deadlines. Published messages
are delivered, in publishing order, before the clock moves on, so with the stepped clock
a run is deterministic (identical message counts and stamps every time) and runs faster
than real time; with the real-time clock it paces itself against the wall clock and skips
(and counts) timer ticks it could not keep rather than bunching them.

With `threads=True` (real-time clock only) every node runs on its own thread, as each is its
own process under ROS 2: the node is built, started, called and stopped on that thread, one
callback at a time, so a 50 ms render or a policy prediction never delays the 100 Hz
interpolator on another (torch and MuJoCo release the GIL while they compute). A port the
stage marks `latest` keeps one pending message per node, as under ROS 2: a node still busy
with the last frame gets the newest one next, not a queue of old ones.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import sys
import threading
from concurrent.futures import Future
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kil.graph import GraphSpec, NodeSpec, TopicSpec
from kil.runtimes.clock import RealTimeClock, SteppedClock
from kil.runtimes.profile import Profile
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
        with self._runtime._lock:
            return self._runtime.tf.lookup(parent, child, stamp_ns)

    def send_transform(self, parent: str, child: str, T: np.ndarray, stamp_ns: int, static: bool = False) -> None:
        with self._runtime._lock:
            self._runtime.tf.set_transform(parent, child, T, stamp_ns, static)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._runtime._schedule(self.now_ns() + int(round(delay_s * 1e9)), callback, self._node.name)

    def shutdown(self, reason: str) -> None:
        self._runtime.request_stop(f"{self._node.name}: {reason}")


class _Worker:
    """A node's own thread: runs what is posted to it, in order, one at a time."""

    def __init__(self, name: str, on_error: Callable[[BaseException], None]) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._on_error = on_error
        self._pending: dict[Any, Callable[[], Any]] = {}  # key -> the newest call posted under it
        self._pending_lock = threading.Lock()
        self.replaced = 0  # calls dropped for a newer one under the same key
        self.thread = threading.Thread(target=self._loop, name=f"kil.{name}", daemon=True)
        self.thread.start()

    def post(self, fn: Callable[[], Any], key: Any = None) -> None:
        """Queue `fn`; with a `key`, a call still waiting under that key is replaced by it."""
        if key is None:
            self._queue.put(fn)
            return
        with self._pending_lock:
            queued = key in self._pending
            self.replaced += queued
            self._pending[key] = fn
        if not queued:
            self._queue.put(lambda: self._run_pending(key))

    def _run_pending(self, key: Any) -> None:
        with self._pending_lock:
            fn = self._pending.pop(key)
        fn()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on this thread and wait for its result (or exception)."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the caller
                future.set_exception(err)

        self._queue.put(run)
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while (fn := self._queue.get()) is not None:
            try:
                fn()
            except BaseException as err:  # a failing node stops the graph; run() re-raises
                self._on_error(err)


class LocalRuntime:
    """Builds every node of a graph and runs them against one clock."""

    def __init__(self, graph: GraphSpec, clock: str = "stepped", start_ns: int = DEFAULT_START_NS, profile: bool = False,
                 threads: bool = False) -> None:
        if clock not in ("stepped", "realtime"):
            raise ValueError(f"clock must be 'stepped' or 'realtime', got {clock!r}")
        if threads and clock != "realtime":
            raise ValueError("threads=True needs the real-time clock (the stepped clock runs one deterministic thread)")
        self.graph = graph
        self.clock = SteppedClock(start_ns) if clock == "stepped" else RealTimeClock()
        self.tf = TransformBuffer()
        self.stats = RunStats()
        self.profile = Profile() if profile else None
        self._events: list[tuple[int, int, str | None, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._deliveries: deque[tuple[Callable[[Any], None], Any]] = deque()
        # topic -> (node, callback, key): a key marks a `latest` port (one pending message per key)
        self._subscribers: dict[str, list[tuple[str, Callable[[Any], None], Any]]] = {t: [] for t in graph.topics}
        self._wake = threading.Condition()  # guards _events in threaded runs
        self._lock = threading.RLock()  # TF and stats, shared by the node threads
        self._error: BaseException | None = None
        self.workers: dict[str, _Worker] = {}
        if threads:
            self.workers = {name: _Worker(name, self._fail) for name in graph.nodes}
        self._timers: list[tuple[str, Callable[[], None], int]] = []  # scheduled when run() starts
        self._stop_reason: str | None = None
        self._pending_at: list[tuple[float, Callable[[], None]]] = []
        self.log = logging.getLogger("kil.local")
        self.stages: dict[str, Stage] = {name: self._on(name, lambda n=node: self._build(n)) for name, node in graph.nodes.items()}
        optional = {node.subscribe[p] for node in graph.nodes.values() for p in node.stage_class.optional_ports() if p in node.subscribe}
        for topic, subscribers in self._subscribers.items():
            if subscribers and not graph.publishers(topic) and topic not in optional:  # e.g. an e-stop: published from outside
                self.log.warning("topic %s has subscribers but no publisher in graph %s", topic, graph.name)

    def _on(self, node: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the node's thread (threaded runs) or here, and return its result."""
        worker = self.workers.get(node)
        return fn() if worker is None else worker.call(fn)

    def _fail(self, err: BaseException) -> None:
        if self._error is None:
            self._error = err
        self.request_stop(f"error: {type(err).__name__}: {err}")

    def _timed(self, node: str, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback`, recording how long each call takes when profiling."""
        if self.profile is None:
            return callback
        busy = self.profile.busy_ns.setdefault(node, [])
        now = self.clock.now_ns

        def timed(*args: Any) -> None:
            start = now()
            callback(*args)
            busy.append(now() - start)

        return timed

    def _build(self, node: NodeSpec) -> Stage:
        stage = node.stage_class(node.config, _LocalIO(self, node))
        for sub in node.stage_class.subscriptions():
            callback = self._timed(node.name, getattr(stage, sub.method))
            if sub.any_port:
                for port, topic in node.subscribe.items():
                    if port not in sub.ports and port not in node.stage_class.input_ports():
                        self._subscribers[topic].append((node.name, lambda msg, p=port, cb=callback: cb(p, msg), None))
            elif len(sub.ports) == 1:
                (port,) = sub.ports
                if port in node.subscribe:  # an optional port may be unconnected
                    key = (sub.method, port) if port in sub.latest else None
                    self._subscribers[node.subscribe[port]].append((node.name, callback, key))
            else:
                topics = [node.subscribe[p] for p in sub.ports]
                depth = max(self.graph.topics[t].qos.depth for t in topics)
                sync = StampSynchronizer(list(sub.ports), int(round(sub.slop_s * 1e9)), depth)
                for port, topic in zip(sub.ports, topics):
                    key = (sub.method, port) if port in sub.latest else None
                    self._subscribers[topic].append((node.name, lambda msg, p=port, s=sync, cb=callback: _call_if_matched(cb, s.add(p, msg)), key))
        for timer in node.stage_class.timers():
            label = f"{node.name}.{timer.method}"
            self._timers.append((node.name, label, self._timed(node.name, getattr(stage, timer.method)), timer.period_ns(node.config)))
        return stage

    def _start_timer(self, node: str, label: str, callback: Callable[[], None], period_ns: int, start_ns: int) -> None:
        state = {"deadline": start_ns + period_ns}

        ticks = deadlines = None
        if self.profile is not None:
            ticks, deadlines = self.profile.tick_ns.setdefault(label, []), self.profile.deadline_ns.setdefault(label, [])
            self.profile.period_ns[label] = period_ns

        def tick() -> None:
            if ticks is not None:
                ticks.append(self.clock.now_ns())
                deadlines.append(state["deadline"])
            callback()
            state["deadline"] += period_ns
            late = self.clock.now_ns() - state["deadline"]
            if self.clock.realtime and late >= 0:  # overran: skip missed ticks, keep the phase
                missed = late // period_ns + 1
                self.stats.skipped_ticks[label] += missed
                state["deadline"] += missed * period_ns
            self._schedule(state["deadline"], tick, node)

        self._schedule(state["deadline"], tick, node)

    def _schedule(self, deadline_ns: int, callback: Callable[[], None], node: str | None = None) -> None:
        """Run `callback` at `deadline_ns`, on `node`'s thread in threaded runs."""
        with self._wake:
            heapq.heappush(self._events, (int(deadline_ns), next(self._sequence), node, callback))
            self._wake.notify()

    def _publish(self, node: str, topic: str, msg: Any) -> None:
        expected = self.graph.topics[topic].type
        if not isinstance(msg, expected):
            raise TypeError(f"node {node} published {type(msg).__name__} on {topic}, which carries {expected.__name__}")
        with self._lock:
            self.stats.published[topic] += 1
            if self.profile is not None:
                self.profile.publish.setdefault(topic, []).append((self.clock.now_ns(), getattr(msg, "stamp_ns", 0)))
        for node, subscriber, key in self._subscribers[topic]:
            if self.workers:
                self.workers[node].post(lambda cb=subscriber: cb(msg), key)
            else:
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
        result = self._on(node, getattr(stage, methods[service]))
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
        with self._wake:
            self._wake.notify()

    def run(self, duration_s: float | None = None) -> RunStats:
        """Start every stage, run until `duration_s` of clock time has passed (events at the
        end time included), a stage asks to stop, or nothing is left to do; then stop all.
        A runtime runs once."""
        switch = sys.getswitchinterval()
        try:
            for name, stage in self.stages.items():
                self._on(name, stage.start)
            start = self.stats.start_ns = self.clock.now_ns()  # timers count from here
            end = None if duration_s is None else start + int(round(duration_s * 1e9))
            for node, label, callback, period_ns in self._timers:
                self._start_timer(node, label, callback, period_ns, start)
            for time_s, callback in self._pending_at:
                self._schedule(start + int(round(time_s * 1e9)), callback)
            self._drain()
            if self.workers:
                sys.setswitchinterval(0.0005)  # a 100 Hz thread should not wait 5 ms for the GIL
                self._run_threaded(end, duration_s)
            else:
                self._run_inline(end, duration_s)
            if self._stop_reason is None:
                self.request_stop("nothing left to run")
        except KeyboardInterrupt:
            self.request_stop("interrupted")
            raise
        finally:
            sys.setswitchinterval(switch)
            self.stats.end_ns = self.clock.now_ns()
            self.stats.stop_reason = self._stop_reason or "error"
            for name, stage in self.stages.items():
                self._on(name, stage.stop)
            for worker in self.workers.values():
                worker.close()
        if self._error is not None:
            raise self._error
        return self.stats

    def _run_inline(self, end: int | None, duration_s: float | None) -> None:
        while self._stop_reason is None and self._events:
            deadline = self._events[0][0]
            if end is not None and deadline > end:
                self.clock.wait_until(end)
                self.request_stop(f"ran for {duration_s:g} s")
                break
            _, _, _, callback = heapq.heappop(self._events)
            self.clock.wait_until(deadline)
            callback()
            self._drain()

    def _run_threaded(self, end: int | None, duration_s: float | None) -> None:
        """Hand each event to its node's thread at its deadline (operator actions run here)."""
        while self._stop_reason is None:
            with self._wake:
                now = self.clock.now_ns()
                if end is not None and now >= end:
                    self.request_stop(f"ran for {duration_s:g} s")
                    break
                wake_at = min([e for e in (end, self._events[0][0] if self._events else None) if e is not None], default=None)
                if wake_at is None or wake_at > now:
                    self._wake.wait(None if wake_at is None else (wake_at - now) / 1e9)
                    continue
                _, _, node, callback = heapq.heappop(self._events)
            if node is None:
                callback()
            else:
                self.workers[node].post(callback)
