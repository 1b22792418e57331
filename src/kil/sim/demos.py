"""Demonstrations on the simulated rig: one rosbag2 episode per run of the `sim_demo` graph.

The teleop node is the scripted expert (`kil sim demos`, `kil record --teleop expert`) or
the keyboard (`kil record --teleop keyboard`, on the real-time clock); either starts and
saves its episode through the recorder as a real rig's operator does. Episode i of a batch
with seed s uses its own seed, derived from (s, i), and records it, so any episode can be
regenerated alone. The sim judges every episode: success and task completion (0, 0.5, 1
for two objects) go into its metadata; a failed episode is kept and marked unsuccessful.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kil.data.episode import NOT_TO_IMITATE, read_metadata, write_metadata
from kil.errors import ConfigError
from kil.graph import GraphSpec, load_graph
from kil.paths import graph_path

DEMO_GRAPH = "sim_demo"
TELEOPS = {"expert": "sim_expert", "keyboard": "keyboard_teleop"}  # --teleop -> the teleop node's stage


@dataclass(frozen=True)
class EpisodeResult:
    path: Path | None  # the episode written (None: discarded, or not recorded), or a rollout's video
    seed: int
    completion: float
    duration_s: float
    stop_reason: str
    keypoint_names: tuple[str, ...] = ()  # of the ground-truth keypoints, by index
    not_to_imitate_ns: tuple[tuple[int, int], ...] = ()  # the teleop's deliberate errors, [start, end) stamps

    @property
    def success(self) -> bool:
        return self.completion >= 1.0


def episode_seed(batch_seed: int, index: int) -> int:
    """The seed of episode `index` of a batch: independent streams per episode."""
    return int(np.random.SeedSequence([batch_seed, index]).generate_state(1)[0])


def demo_graph(task: str, robot: str, variation: str, seed: int, out: Path, camera_rate_hz: float | None = None,
               graph: str = DEMO_GRAPH, teleop: str = "expert", miss_rate: float = 0.0) -> GraphSpec:
    """The demonstration graph with every node set to one episode, recorded under `out`;
    `miss_rate`: the scripted expert's share of first picks aimed beside the object (it
    then picks again: demonstrations of recovery)."""
    from kil.sim.objects import load_catalogue
    from kil.sim.scene import check_variation
    from kil.sim.tasks import task_config
    from kil.sim.world import JOINT_NAMES

    task_config(task)  # unknown task, robot, variation or teleop: fail before building anything
    check_variation(variation)
    if robot not in JOINT_NAMES:
        raise ConfigError(f"unknown robot {robot!r} (choose one of: {', '.join(JOINT_NAMES)})")
    if teleop not in TELEOPS:
        raise ConfigError(f"--teleop: unknown teleop {teleop!r} for the simulated rig (choose one of: {', '.join(TELEOPS)})")
    load_catalogue()
    episode = {"task": task, "variation": variation, "seed": seed}
    rig = {**episode, "robot": robot}
    if camera_rate_hz is not None:
        rig["camera_rate_hz"] = camera_rate_hz
    operator = "scripted_expert" if teleop == "expert" else teleop
    overrides = {
        "rig": rig,
        "teleop": {**episode, **({"motion": {"miss_rate": miss_rate}} if miss_rate else {})} if teleop == "expert" else {},
        "recorder": {**episode, "out": str(out), "rig": "sim", "operator": operator, "extra": {"robot": robot}},
    }
    return load_graph(graph_path(graph), overrides, stages={"teleop": TELEOPS[teleop]})


def run_expert(task: str, robot: str, variation: str, seed: int, miss_rate: float = 0.0) -> EpisodeResult:
    """One scripted episode through the same graph, without camera or recorder: the
    expert's success alone (for benchmarks)."""
    graph = demo_graph(task, robot, variation, seed, Path("unused"), miss_rate=miss_rate)
    nodes = {k: v for k, v in graph.nodes.items() if k != "recorder"}
    nodes["teleop"] = replace(nodes["teleop"], publish={"chunk": nodes["teleop"].publish["chunk"]})  # it stops the run itself
    rig = nodes["rig"]
    nodes["rig"] = replace(rig, config=replace(rig.config, render=False))
    return run_episode(replace(graph, nodes=nodes), task, seed)


def run_episode(graph: GraphSpec, task: str, seed: int, clock: str = "stepped", time_limit_s: float | None = None) -> EpisodeResult:
    """Run one sim episode of `graph`: on the stepped clock within `time_limit_s` (default: the
    task's), on the real-time clock (a person driving) until the graph stops itself."""
    from kil.runtimes.local import LocalRuntime
    from kil.sim.tasks import task_config

    if clock == "stepped" and time_limit_s is None:
        time_limit_s = task_config(task).time_limit_s
    runtime = LocalRuntime(graph, clock=clock, threads=clock == "realtime")
    stats = runtime.run(time_limit_s)
    recorder = runtime.stages.get("recorder")
    written = recorder.session.saved[-1:] if recorder is not None else []
    rig = runtime.stages["rig"]
    spans = getattr(runtime.stages.get("teleop"), "not_to_imitate_ns", [])
    return EpisodeResult(written[0] if written else None, seed, float(rig.completion), (stats.end_ns - stats.start_ns) / 1e9,
                         stats.stop_reason, rig.keypoint_names, tuple(tuple(s) for s in spans))


def record_episode(task: str, robot: str, variation: str, seed: int, out: Path, camera_rate_hz: float | None = None,
                   teleop: str = "expert", miss_rate: float = 0.0) -> EpisodeResult:
    """Run one demonstration into the next episode directory under `out` and add the sim's
    verdict to its metadata. The expert runs on the stepped clock within the task's time
    limit; a person at the keyboard on the real-time clock until they save or discard."""
    from kil.sim.episode import episode_scene

    graph = demo_graph(task, robot, variation, seed, out, camera_rate_hz, teleop=teleop, miss_rate=miss_rate)
    result = run_episode(graph, task, seed, "stepped" if teleop == "expert" else "realtime")
    if result.path is not None:
        metadata = read_metadata(result.path)
        extra = {
            **metadata.extra,
            "object_ids": episode_scene(task, variation, seed).object_ids,
            "completion": result.completion,
            # what the operator's save said (the recorder keeps it beside the sim's verdict); the sim's verdict wins
            "operator_verdict": metadata.extra.get("operator_verdict", metadata.success),
            "ground_truth_keypoints": list(result.keypoint_names),  # names of /sim/keypoints indices
        }
        if result.not_to_imitate_ns:  # the dataset builder leaves these action labels out of training
            extra[NOT_TO_IMITATE] = [list(span) for span in result.not_to_imitate_ns]
        write_metadata(result.path, metadata.with_updates(success=result.success, extra=extra))
    return result


def require_new_batch(out: Path) -> None:
    """A scripted batch numbers its episodes from 0 (episode i has seed (s, i)): `out` must
    hold no episodes yet (episodes are never overwritten)."""
    from kil.data.episodes import next_episode_dir

    if next_episode_dir(out).name != "episode_0000":
        raise ConfigError(f"--out: {out} holds episodes already (episodes are never overwritten; choose another --out)")
