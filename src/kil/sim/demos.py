"""Scripted demonstrations: one rosbag2 episode per run of the `sim_demo` graph.

Episode i of a batch with seed s uses its own seed, derived from (s, i), and records it,
so any episode can be regenerated alone. A failed expert episode is kept and marked
unsuccessful; the task completion (0, 0.5, 1 for two objects) is in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kil.data.episode import read_metadata, write_metadata
from kil.errors import ConfigError
from kil.graph import GraphSpec, load_graph
from kil.paths import graph_path

DEMO_GRAPH = "sim_demo"


@dataclass(frozen=True)
class EpisodeResult:
    path: Path
    seed: int
    completion: float
    duration_s: float
    stop_reason: str
    keypoint_names: tuple[str, ...] = ()  # of the ground-truth keypoints, by index

    @property
    def success(self) -> bool:
        return self.completion >= 1.0


def episode_seed(batch_seed: int, index: int) -> int:
    """The seed of episode `index` of a batch: independent streams per episode."""
    return int(np.random.SeedSequence([batch_seed, index]).generate_state(1)[0])


def demo_graph(task: str, robot: str, variation: str, seed: int, path: Path, camera_rate_hz: float | None = None,
               graph: str = DEMO_GRAPH) -> GraphSpec:
    """The demonstration graph with every node set to one episode."""
    from kil.sim.objects import load_catalogue
    from kil.sim.scene import check_variation
    from kil.sim.tasks import task_config
    from kil.sim.world import JOINT_NAMES

    task_config(task)  # unknown task, robot or variation: fail before building anything
    check_variation(variation)
    if robot not in JOINT_NAMES:
        raise ConfigError(f"unknown robot {robot!r} (choose one of: {', '.join(JOINT_NAMES)})")
    load_catalogue()
    episode = {"task": task, "variation": variation, "seed": seed}
    rig = {**episode, "robot": robot}
    if camera_rate_hz is not None:
        rig["camera_rate_hz"] = camera_rate_hz
    overrides = {
        "rig": rig,
        "expert": dict(episode),
        "recorder": {**episode, "path": str(path), "rig": "sim", "extra": {"robot": robot}},
    }
    return load_graph(graph_path(graph), overrides)


def run_expert(task: str, robot: str, variation: str, seed: int) -> EpisodeResult:
    """One scripted episode through the same graph, without camera or recorder: the
    expert's success alone (for benchmarks)."""
    graph = demo_graph(task, robot, variation, seed, Path("unused"))
    graph = replace(graph, nodes={k: v for k, v in graph.nodes.items() if k != "recorder"})
    rig = graph.nodes["rig"]
    graph.nodes["rig"] = replace(rig, config=replace(rig.config, render=False))
    return _run(graph, task, seed, Path(""))


def _run(graph: GraphSpec, task: str, seed: int, path: Path, time_limit_s: float | None = None) -> EpisodeResult:
    from kil.runtimes.local import LocalRuntime
    from kil.sim.tasks import task_config

    runtime = LocalRuntime(graph, clock="stepped")
    stats = runtime.run(time_limit_s or task_config(task).time_limit_s)
    rig = runtime.stages["rig"]
    return EpisodeResult(path, seed, float(rig.completion), (stats.end_ns - stats.start_ns) / 1e9, stats.stop_reason, rig.keypoint_names)


def record_episode(task: str, robot: str, variation: str, seed: int, path: Path, camera_rate_hz: float | None = None) -> EpisodeResult:
    """Run one scripted demonstration into the episode directory `path` (must not exist)."""
    from kil.sim.episode import episode_scene

    result = _run(demo_graph(task, robot, variation, seed, path, camera_rate_hz), task, seed, path)
    completion, duration = result.completion, result.duration_s
    metadata = read_metadata(path)
    extra = {
        **metadata.extra,
        "object_ids": episode_scene(task, variation, seed).object_ids,
        "completion": completion,
        "duration_s": round(duration, 3),
        "stop_reason": result.stop_reason,
        "operator": "scripted_expert",
        "ground_truth_keypoints": list(result.keypoint_names),  # names of /sim/keypoints indices
    }
    write_metadata(path, metadata.with_updates(success=result.success, extra=extra))
    return result


def episode_dirs(out: Path, count: int) -> list[Path]:
    """Episode directories out/episode_0000..; refuses to touch any that exist."""
    paths = [out / f"episode_{i:04d}" for i in range(count)]
    existing = [p.name for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"{out}: episodes {existing[0]}.. exist already (episodes are never overwritten; choose another --out)")
    return paths
