"""Closed-loop episodes of a trained policy on the simulated rig: the `sim_policy` graph
(camera -> features -> keypoints -> policy -> interpolator -> rig) run once per episode on
the stepped clock, so results do not depend on how fast this machine is."""

from __future__ import annotations

from pathlib import Path

from kil.graph import GraphSpec, load_graph
from kil.paths import graph_path
from kil.sim.demos import EpisodeResult, _run

POLICY_GRAPH = "sim_policy"


def policy_graph(policy: str | Path, task: str, robot: str, variation: str, seed: int, feature_model: str | None = None,
                 policy_seed: int = 0, graph: str = POLICY_GRAPH) -> GraphSpec:
    """The closed-loop graph set to one episode and one trained policy (its feature backend
    and keypoint spec are the ones the policy was trained with, unless overridden)."""
    from kil.policy.inference import POLICY_FILE, checkpoint_dir
    from kil.config import load_yaml

    trained_on = load_yaml(checkpoint_dir(policy) / POLICY_FILE)["trained_on"]
    model = feature_model or trained_on.get("feature_model") or "descriptor_net"
    overrides = {
        "rig": {"task": task, "robot": robot, "variation": variation, "seed": seed},
        "features": {"model": model},
        "keypoints": {"model": model, "spec": trained_on["task"]},
        "policy": {"policy": str(policy), "seed": policy_seed},
    }
    return load_graph(graph_path(graph), overrides)


def run_policy(policy: str | Path, task: str, robot: str, variation: str, seed: int, **kwargs) -> EpisodeResult:
    return _run(policy_graph(policy, task, robot, variation, seed, **kwargs), task, seed, Path(""))
