"""The live graph's timing: a closed-loop run of a trained policy on the simulated rig
(camera, features, keypoints, policy, interpolator, safety, rig, visualisation), in one or
both runtimes, side by side:

* ``local``: one process, one thread per node, on the real-time clock (the rig's physics
  catches up after a late tick);
* ``ros2``: one process per node over DDS (``rig.launch.py rig:=sim`` plus
  ``bringup.launch.py rig:=sim drivers:=false``), on the simulated rig's /clock, at most
  `real_time_factor` times real time; its figures are in simulated time.

For each: the interpolator's period jitter and missed ticks, the latency from a camera frame's
stamp to each stage's output and to the first robot command derived from it, and each node's
processing time per call (wall time). Both runtimes record the same `Profile`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from kil.errors import ConfigError
from kil.runtimes.profile import Profile, load_profiles

INTERPOLATOR_TIMER = "interpolator.tick"
CHAIN = ("/kil/features", "/kil/keypoints", "/kil/chunk")  # stamps carry the camera frame's
RUNTIMES = ("local", "ros2")
NODE_STARTUP_S = 240.0  # wall seconds for every ROS 2 node to load its models
ROS2_NODES = 7  # the sim rig and the live graph's six nodes


@dataclass
class LiveRun:
    """What one runtime's run measured; times in ns on the graph's clock."""

    runtime: str
    clock: str  # which clock the figures are on
    wall_s: float
    graph_s: float
    ticks: np.ndarray
    missed: int
    jitter: np.ndarray
    lateness: np.ndarray | None  # vs the deadline (the local runtime knows it)
    chain: dict[str, np.ndarray]
    end_to_end: np.ndarray
    busy: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)


def first_command_after(chunks: list[tuple[int, int]], commands: list[tuple[int, int]]) -> np.ndarray:
    """For each chunk (published at t, camera stamp S): time of the first robot command
    sent at or after t, minus S (ns). Chunks with no later command are left out."""
    sent = np.sort(np.array([t for t, _ in commands], np.int64))
    latencies = []
    for t, stamp in chunks:
        i = int(np.searchsorted(sent, t, side="left"))
        if i < len(sent):
            latencies.append(sent[i] - stamp)
    return np.array(latencies, np.int64)


def summarise(runtime: str, clock: str, profile: Profile, wall_s: float, graph_s: float, notes: list[str]) -> LiveRun:
    ticks = np.sort(np.array(profile.tick_ns.get(INTERPOLATOR_TIMER, []), np.int64))
    period = profile.period_ns.get(INTERPOLATOR_TIMER, 10_000_000)
    gaps = np.diff(ticks)
    missed = int(np.maximum(np.round(gaps / period) - 1, 0).sum()) if len(gaps) else 0
    lateness = None
    if profile.deadline_ns.get(INTERPOLATOR_TIMER):
        lateness = np.array(profile.tick_ns[INTERPOLATOR_TIMER], np.int64) - np.array(profile.deadline_ns[INTERPOLATOR_TIMER], np.int64)
    chain = {topic: np.array([t - s for t, s in profile.publish.get(topic, [])], np.int64) for topic in CHAIN}
    e2e = first_command_after(profile.publish.get("/kil/chunk", []), profile.publish.get("/kil/pose_target", []))
    busy = {node: np.array(values, np.int64) for node, values in profile.busy_ns.items()}
    return LiveRun(runtime, clock, wall_s, graph_s, ticks, missed, np.abs(gaps - period), lateness, chain, e2e, busy, notes)


def run_local(policy: str | Path, duration_s: float, task: str, robot: str, variation: str, seed: int) -> LiveRun:
    from kil.runtimes.local import LocalRuntime
    from kil.sim.rollouts import policy_graph

    # The rig keeps running after the task is done: a full run of load.
    graph = policy_graph(policy, task, robot, variation, seed, rig_params={"stop_when_done_s": 0.0})
    runtime = LocalRuntime(graph, clock="realtime", profile=True, threads=True)
    quiet = logging.getLogger("kil")
    level, quiet.level = quiet.level, logging.ERROR  # the safety node's holds are counted below, not logged
    try:
        stats = runtime.run(duration_s)
    finally:
        quiet.setLevel(level)
    seconds = (stats.end_ns - stats.start_ns) / 1e9
    holds = ", ".join(f"{reason} x{n}" for reason, n in sorted(runtime.stages["safety"].rejections.items())) or "none"
    notes = [f"task completion {runtime.stages['rig'].completion:.2f}; stopped: {stats.stop_reason}; safety holds: {holds}"]
    notes += [f"timer {label}: {count} ticks skipped (could not keep up)" for label, count in sorted(stats.skipped_ticks.items())]
    return summarise("local", "wall clock", runtime.profile, seconds, seconds, notes)


def run_ros2(policy: str | Path, duration_s: float, task: str, robot: str, variation: str, seed: int, real_time_factor: float,
             console: Console) -> LiveRun:
    """The rig and the live graph as ROS 2 processes (the environment must have a ROS 2
    sourced: scripts/ros_env.sh); `duration_s` of wall time once every node runs."""
    if not os.environ.get("AMENT_PREFIX_PATH"):
        raise ConfigError("--runtime ros2: no ROS 2 in this environment (source /opt/ros/<distro>/setup.bash, or scripts/ros_env.sh)")
    from kil.sim.rollouts import trained_perception

    with tempfile.TemporaryDirectory(prefix="kil_bench_live_") as tmp:
        profile_dir, logs = Path(tmp) / "profile", Path(tmp)
        rig_set = f"rig.task={task} rig.robot={robot} rig.variation={variation} rig.seed={seed} rig.real_time_factor={real_time_factor}"
        model, spec, extraction = trained_perception(policy)
        bringup_set = " ".join([f"features.model={model} keypoints.model={model} keypoints.spec={spec}",
                                *(f"keypoints.{key}={value}" for key, value in extraction.items())])
        commands = {
            "rig": ["ros2", "launch", "kil", "rig.launch.py", "rig:=sim", f"rig_set:={rig_set}", f"profile:={profile_dir}"],
            "graph": ["ros2", "launch", "kil", "bringup.launch.py", "rig:=sim", "drivers:=false", "rviz:=false", f"task:={task}",
                      f"policy:={policy}", f"set:={bringup_set}", f"profile:={profile_dir}"],
        }
        env = isolated_dds_env()
        processes = {name: subprocess.Popen(cmd, stdout=(logs / f"{name}.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                                            env=env) for name, cmd in commands.items()}
        try:
            _wait_for_nodes(logs, processes, count=ROS2_NODES)
            start = time.monotonic()
            time.sleep(duration_s)
            wall = time.monotonic() - start
        finally:
            for process in processes.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGINT)
            for process in processes.values():
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        profile = load_profiles(profile_dir)
        clean = sum((logs / f"{name}.log").read_text(errors="replace").count("process has finished cleanly") for name in processes)
    ticks = profile.tick_ns.get("rig.control", [])
    graph_s = (max(ticks) - min(ticks)) / 1e9 if ticks else 0.0
    notes = [f"simulated time {graph_s:.1f} s in {wall:.1f} s of wall time after start-up (real-time factor {graph_s / wall:.2f}, "
             f"at most {real_time_factor:g}); {clean} of {ROS2_NODES} processes exited cleanly on Ctrl-C"]
    return summarise("ros2", "simulated time", profile, wall, graph_s, notes)


def isolated_dds_env() -> dict[str, str]:
    """The environment of the benchmark's processes: CycloneDDS on loopback only and a ROS
    domain of their own, so a simulated rig's commands never meet a robot's graph (or
    anything else) on this machine's network or default domain."""
    from kil.paths import share_dir

    env = dict(os.environ)
    env["RMW_IMPLEMENTATION"] = "rmw_cyclonedds_cpp"
    env["CYCLONEDDS_URI"] = f"file://{share_dir() / 'config' / 'dds' / 'cyclonedds_loopback.xml'}"
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(200 + os.getpid() % 30)
    return env


def _wait_for_nodes(logs: Path, processes: dict[str, subprocess.Popen], count: int) -> None:
    deadline = time.monotonic() + NODE_STARTUP_S
    while True:
        text = "".join((logs / f"{name}.log").read_text(errors="replace") for name in processes)
        if text.count("]: running ") >= count:
            return
        dead = [name for name, p in processes.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = "\n".join(text.splitlines()[-20:])
            raise ConfigError(f"--runtime ros2: the graph did not start ({', '.join(dead) or 'timeout'}):\n{tail}")
        time.sleep(0.5)


def _ms(values: np.ndarray | None, q: float) -> str:
    return f"{np.percentile(values, q) / 1e6:.1f}" if values is not None and len(values) else "-"


def _tails(values: np.ndarray | None) -> str:
    return f"{_ms(values, 50)} / {_ms(values, 99)} / {_ms(values, 100)}"


def report(runs: list[LiveRun], console: Console) -> None:
    table = Table(title="live graph timing (ms: p50 / p99 / max)")
    table.add_column("")
    for run in runs:
        table.add_column(f"{run.runtime} ({run.clock})")
    rows = [
        ("graph time covered (s)", [f"{r.graph_s:.1f} in {r.wall_s:.1f} s wall" for r in runs]),
        ("interpolator ticks", [str(len(r.ticks)) for r in runs]),
        ("interpolator missed ticks", [str(r.missed) for r in runs]),
        ("interpolator period jitter", [_tails(r.jitter) for r in runs]),
        ("interpolator lateness vs deadline", [_tails(r.lateness) for r in runs]),
        *[(f"camera stamp -> {topic} published", [_tails(r.chain[topic]) for r in runs]) for topic in CHAIN],
        ("camera stamp -> first robot command", [_tails(r.end_to_end) for r in runs]),
        ("  (chunks measured)", [str(len(r.end_to_end)) for r in runs]),
    ]
    nodes = sorted({node for r in runs for node in r.busy}, key=lambda n: -max(r.busy.get(n, np.zeros(1)).sum() for r in runs))
    rows += [(f"node {node}: processing per call", [_tails(r.busy.get(node)) for r in runs]) for node in nodes]
    rows += [(f"node {node}: busy share of the run", [f"{r.busy[node].sum() / 1e9 / r.wall_s:.0%}" if node in r.busy else "-" for r in runs])
             for node in nodes]
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)
    for run in runs:
        for note in run.notes:
            console.print(f"{run.runtime}: {note}")


def live(policy: str | Path, duration_s: float = 60.0, task: str | None = None, robot: str = "panda", variation: str = "in",
         seed: int = 1000, runtimes: tuple[str, ...] = ("local",), real_time_factor: float = 0.25) -> int:
    from kil.sim.rollouts import trained_task

    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ConfigError(f"--runtime: expected a comma-separated subset of {', '.join(RUNTIMES)}, got {','.join(runtimes)!r}")
    console = Console(width=160)
    task = task or trained_task(policy)
    runs = []
    for runtime in runtimes:
        with console.status(f"{runtime}: {duration_s:g} s closed loop ({task}, {robot}, seed {seed})"):
            if runtime == "local":
                runs.append(run_local(policy, duration_s, task, robot, variation, seed))
            else:
                runs.append(run_ros2(policy, duration_s, task, robot, variation, seed, real_time_factor, console))
    report(runs, console)
    return 0
