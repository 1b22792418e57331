"""The live graph's timing: a closed-loop run of a trained policy on the simulated rig with the
real-time clock (camera, features, keypoints, policy, interpolator, safety, rig, visualisation
in one process on this machine), profiled by the local runtime. Prints the interpolator's
period jitter and missed ticks, end-to-end latency from a camera frame's stamp to the first
robot command derived from it, the latency of each stage of the chain, and each node's
processing time per call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

INTERPOLATOR_TIMER = "interpolator.tick"
CHAIN = ("/kil/features", "/kil/keypoints", "/kil/chunk")  # stamps carry the camera frame's


def _ms(values, q) -> str:
    return f"{np.percentile(values, q) / 1e6:.1f}" if len(values) else "-"


def first_command_after(chunks: list[tuple[int, int]], commands: list[tuple[int, int]]) -> np.ndarray:
    """For each chunk (published at t, camera stamp S): time of the first robot command
    sent at or after t, minus S (ns). Chunks with no later command are left out."""
    sent = np.array([t for t, _ in commands], np.int64)
    latencies = []
    for t, stamp in chunks:
        i = int(np.searchsorted(sent, t, side="left"))
        if i < len(sent):
            latencies.append(sent[i] - stamp)
    return np.array(latencies, np.int64)


def live(policy: str | Path, duration_s: float = 60.0, task: str | None = None, robot: str = "panda", variation: str = "in",
         seed: int = 1000, threads: bool = True) -> int:
    from kil.runtimes.local import LocalRuntime
    from kil.sim.rollouts import policy_graph, trained_task

    console = Console(width=140)
    task = task or trained_task(policy)
    # The rig keeps running after the task is done: a full run of load.
    graph = policy_graph(policy, task, robot, variation, seed, rig_params={"stop_when_done_s": 0.0})
    runtime = LocalRuntime(graph, clock="realtime", profile=True, threads=threads)
    with console.status(f"{duration_s:g} s closed loop on the real-time clock ({task}, {robot}, seed {seed})"):
        stats = runtime.run(duration_s)
    profile = runtime.profile
    wall_s = (stats.end_ns - stats.start_ns) / 1e9
    mode = "one thread per node" if threads else "all nodes on one thread"
    console.print(f"[bold]{wall_s:.1f} s[/bold] of the live graph on the real-time clock ({mode}); task completion {runtime.stages['rig'].completion:.2f}; "
                  f"stopped: {stats.stop_reason}")

    ticks = np.array(profile.tick_ns.get(INTERPOLATOR_TIMER, []), np.int64)
    deadlines = np.array(profile.deadline_ns.get(INTERPOLATOR_TIMER, []), np.int64)
    period_ns = 1e9 / graph.nodes["interpolator"].config.rate_hz
    jitter = np.abs(np.diff(ticks) - period_ns)
    lateness = ticks - deadlines
    timing = Table(title="interpolator (100 Hz) timing")
    for col in ("ticks", "missed ticks", "period jitter p50 / p99 / max ms", "lateness vs deadline p50 / p99 / max ms"):
        timing.add_column(col)
    timing.add_row(str(len(ticks)), str(stats.skipped_ticks.get(INTERPOLATOR_TIMER, 0)),
                   f"{_ms(jitter, 50)} / {_ms(jitter, 99)} / {_ms(jitter, 100)}",
                   f"{_ms(lateness, 50)} / {_ms(lateness, 99)} / {_ms(lateness, 100)}")
    console.print(timing)

    chain = Table(title="latency from the camera frame's stamp (ms)")
    for col in ("until", "messages", "p50", "p99", "max"):
        chain.add_column(col)
    for topic in CHAIN:
        events = profile.publish.get(topic, [])
        age = np.array([t - s for t, s in events], np.int64)
        chain.add_row(f"{topic} published", str(len(events)), _ms(age, 50), _ms(age, 99), _ms(age, 100))
    e2e = first_command_after(profile.publish.get("/kil/chunk", []), profile.publish.get("/kil/pose_target", []))
    chain.add_row("first robot command derived from it (end to end)", str(len(e2e)), _ms(e2e, 50), _ms(e2e, 99), _ms(e2e, 100))
    console.print(chain)

    nodes = Table(title="processing time per call, by node (ms), and share of the run")
    for col in ("node", "calls", "p50", "p99", "max", "busy %"):
        nodes.add_column(col)
    for name, busy in sorted(profile.busy_ns.items(), key=lambda kv: -sum(kv[1])):
        busy = np.array(busy, np.int64)
        nodes.add_row(name, str(len(busy)), _ms(busy, 50), _ms(busy, 99), _ms(busy, 100), f"{busy.sum() / 1e9 / wall_s:.0%}")
    console.print(nodes)
    for label, count in sorted(stats.skipped_ticks.items()):
        console.print(f"timer {label}: {count} ticks skipped (could not keep up)")
    return 0
