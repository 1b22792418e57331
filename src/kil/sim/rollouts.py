"""Closed-loop episodes of a trained policy on the simulated rig: the `sim_policy` graph
(camera -> features -> keypoints -> policy -> interpolator -> rig; `sim_policy_rgb` for the
RGB baseline) run once per episode on the stepped clock, so results do not depend on how
fast this machine is."""

from __future__ import annotations

from pathlib import Path

from kil.graph import GraphSpec, load_graph
from kil.paths import graph_path
from kil.sim.demos import EpisodeResult, _run

POLICY_GRAPHS = {"keypoint": "sim_policy", "rgb": "sim_policy_rgb"}  # by the policy's kind


def policy_graph(policy: str | Path, task: str, robot: str, variation: str, seed: int, feature_model: str | None = None,
                 policy_seed: int = 0, graph: str | None = None) -> GraphSpec:
    """The closed-loop graph set to one episode and one trained policy (its feature backend
    and keypoint spec are the ones the policy was trained with, unless overridden)."""
    from kil.config import load_yaml
    from kil.policy.inference import POLICY_FILE, checkpoint_dir

    meta = load_yaml(checkpoint_dir(policy) / POLICY_FILE)
    trained_on, kind = meta["trained_on"], meta["run"]["policy"]["kind"]
    overrides = {
        "rig": {"task": task, "robot": robot, "variation": variation, "seed": seed},
        "policy": {"policy": str(policy), "seed": policy_seed},
    }
    if kind == "keypoint":
        model = feature_model or trained_on.get("feature_model") or "descriptor_net"
        overrides["features"] = {"model": model}
        overrides["keypoints"] = {"model": model, "spec": trained_on.get("spec") or trained_on["task"]}
    return load_graph(graph_path(graph or POLICY_GRAPHS[kind]), overrides)


def run_policy(policy: str | Path, task: str, robot: str, variation: str, seed: int, time_limit_s: float | None = None,
               **kwargs) -> EpisodeResult:
    """One closed-loop episode (until the task is done and stays so for a second, or the
    task's time limit)."""
    return _run(policy_graph(policy, task, robot, variation, seed, **kwargs), task, seed, Path(""), time_limit_s)
