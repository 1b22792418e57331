"""Helpers of the ROS 2 graph tests: `ros2 launch` as a person runs it (own process group,
Ctrl-C to stop, its output kept), a probe node that watches topics from its own thread, and
the ROS 2 CLI (`ros2 topic pub`, `ros2 service call`, `ros2 param set`) as subprocesses.

Everything runs in the environment conftest.py sets: CycloneDDS on loopback, a ROS domain of
the test run's own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEST_DIR = Path(__file__).resolve().parent


def ros_env() -> dict[str, str]:
    """The environment of processes the tests start: the toy test stages importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TEST_DIR), env.get("PYTHONPATH", "")])
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class LaunchResult:
    returncode: int
    log: str
    clean: list[str]  # processes that exited 0 ("process has finished cleanly")
    died: list[str]  # the others, with their exit codes


class Launch:
    """``ros2 launch ARGS`` in its own process group, its output in `log_path`."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(["ros2", "launch", *args], stdout=self._log, stderr=subprocess.STDOUT,
                                        env=ros_env(), start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float, count: int = 1) -> list[str]:
        """Wait until `pattern` (a regex) matches `count` times in the output; its matches."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.findall(pattern, self.text())
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise AssertionError(f"launch ended (exit {self.process.returncode}) before {pattern!r} x{count}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} x{count} within {timeout_s:g} s (found {len(found)}):\n{self.tail()}")
            time.sleep(0.2)

    def wait_exit(self, timeout_s: float) -> LaunchResult:
        """Wait for the launch to end by itself."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"launch still running after {timeout_s:g} s:\n{self.tail()}") from None
        return self._result()

    def stop(self, timeout_s: float = 60.0) -> LaunchResult:
        """Ctrl-C: SIGINT to the whole process group, as a terminal sends it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.wait_exit(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def _result(self) -> LaunchResult:
        self._log.close()
        text = self.text()
        clean = re.findall(r"\[INFO\] \[([\w.-]+)\]: process has finished cleanly", text)
        died = re.findall(r"\[(?:ERROR|INFO)\] \[([\w.-]+)\]: process has died \[pid \d+, exit code (-?\d+)", text)
        return LaunchResult(self.process.returncode, text, clean, [f"{name} (exit {code})" for name, code in died])

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def ros2(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """A ROS 2 CLI command (``ros2 ARGS``); its output (stdout and stderr) in `.stdout`."""
    return subprocess.run(["ros2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s, env=ros_env())


@dataclass
class Received:
    wall_s: float
    sim_ns: int | None  # the newest /clock when it arrived (None before any, or not watched)
    msg: Any


@dataclass
class Probe:
    """An rclpy node in its own context and thread that records what arrives on topics."""

    name: str = "kil_test_probe"
    messages: dict[str, list[Received]] = field(default_factory=dict)
    clock_ns: int | None = None  # the newest /clock (watch_clock)

    def __post_init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = Node(self.name, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.05)

    def subscribe(self, topic: str, ros_type: str, qos: Any = 10) -> None:
        from kil.converters.factory import RclpyFactory

        self.messages[topic] = []

        def keep(msg: Any) -> None:
            with self._lock:
                self.messages[topic].append(Received(time.monotonic(), self.clock_ns, msg))

        self.node.create_subscription(RclpyFactory().message_class(ros_type), topic, keep, qos)

    def watch_clock(self) -> None:
        """Follow /clock: each message received carries the simulated time it came at."""
        from rosgraph_msgs.msg import Clock

        def tick(msg: Clock) -> None:
            self.clock_ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec

        self.node.create_subscription(Clock, "/clock", tick, 100)

    def wait_sim(self, seconds: float, timeout_s: float) -> None:
        """Wait until `seconds` of simulated time have passed."""
        self.wait_until(lambda: self.clock_ns is not None, timeout_s, "/clock")
        end = self.clock_ns + int(seconds * 1e9)
        self.wait_until(lambda: self.clock_ns >= end, timeout_s, f"{seconds:g} s of simulated time")

    def get(self, topic: str) -> list[Received]:
        with self._lock:
            return list(self.messages[topic])

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.messages[topic])

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                counts = {t: len(m) for t, m in self.messages.items()}
                raise AssertionError(f"{what}: not within {timeout_s:g} s (messages so far: {counts})")
            time.sleep(0.1)

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join()
        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)
