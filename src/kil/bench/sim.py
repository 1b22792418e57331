"""Simulator benchmark: render and control throughput, the real-time factor of a recorded
demonstration, and the scripted expert's success per task, robot and variation."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kil.bench.stats import clopper_pearson, wald


@dataclass(frozen=True)
class Throughput:
    render_fps: float
    control_ticks_per_s: float
    demo_realtime_factor: float
    demo_sim_s: float
    demo_wall_s: float


def measure_throughput(robot: str = "panda", frames: int = 30, ticks: int = 1000) -> Throughput:
    from kil.sim.demos import episode_seed, record_episode
    from kil.sim.episode import make_world

    world = make_world("pick_place", robot, "in", 0)
    try:
        world.render()  # first render sets up buffers
        t = time.perf_counter()
        for _ in range(frames):
            world.render()
        render_fps = frames / (time.perf_counter() - t)
        T = world.ee_pose()
        t = time.perf_counter()
        for i in range(ticks):
            world.step(T[:3, 3] + [0, 0.05 * np.sin(i / 100), 0], T[:3, :3], None)
        control = ticks / (time.perf_counter() - t)
    finally:
        world.close()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = record_episode("pick_place", robot, "in", episode_seed(0, 0), Path(tmp), camera_rate_hz=10)
        wall = time.perf_counter() - t
    return Throughput(render_fps, control, result.duration_s / wall, result.duration_s, wall)


def run(tasks: list[str], robots: list[str], variations: list[str], episodes: int, seed: int = 1000) -> int:
    from kil.sim.demos import episode_seed, run_expert

    console = Console(width=160)
    tp = measure_throughput(robots[0])
    console.print(f"[bold]sim throughput[/bold] ({robots[0]}, 640x480): rendered RGB-D {tp.render_fps:.1f} frames/s; "
                  f"control {tp.control_ticks_per_s:.0f} ticks/s ({tp.control_ticks_per_s / 100:.1f}x real time at 100 Hz without camera)")
    console.print(f"[bold]recorded demonstration[/bold] (camera 10 Hz, recorder on): {tp.demo_sim_s:.1f} s simulated in "
                  f"{tp.demo_wall_s:.1f} s: real-time factor {tp.demo_realtime_factor:.2f}")
    table = Table(title=f"scripted expert, {episodes} episodes each (seed {seed})")
    for col in ("task", "robot", "variation", "success", "95% CI (Clopper-Pearson)", "completion", "95% CI (Wald)", "mean duration s"):
        table.add_column(col)
    combos = [(t, r, v) for t in tasks for r in robots for v in variations]
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("expert episodes", total=len(combos) * episodes)
        for task, robot, variation in combos:
            results = []
            for i in range(episodes):
                results.append(run_expert(task, robot, variation, episode_seed(seed, i)))
                progress.advance(bar)
            wins = sum(r.success for r in results)
            lo, hi = clopper_pearson(wins, episodes)
            completion = [r.completion for r in results]
            clo, chi = wald(completion)
            table.add_row(task, robot, variation, f"{wins}/{episodes} = {wins / episodes:.0%}", f"[{lo:.0%}, {hi:.0%}]",
                          f"{np.mean(completion):.2f}", f"[{clo:.2f}, {chi:.2f}]", f"{np.mean([r.duration_s for r in results]):.1f}")
            console.print(f"{task}/{robot}/{variation}: {wins}/{episodes}")
    console.print(table)
    return 0
