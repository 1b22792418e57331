"""Every node of every shipped graph under the ROS 2 shell (`kil_node`, one process per node,
over DDS): each starts with its stage's real config (the shell's own parameters apart from the
stage's fields), and all stop cleanly (exit 0) on Ctrl-C. Graphs that take a rig's topic
names run for every rig at once, each in a namespace of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ros_graph import Launch, ros2

from kil.graph import load_graph
from kil.paths import graph_path
from kil.rigs import RIGS

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "config" / "graphs").glob("*.yaml"))
SIM_STAGES = {"sim_rig", "sim_expert", "policy", "policy_rgb"}  # need the simulator (or a policy trained in it)


def needs_sim(graph: str) -> bool:
    return any(node.stage in SIM_STAGES for node in load_graph(graph_path(graph)).nodes.values())


def rigs_of(graph: str) -> list[str]:
    """The rigs a graph runs with: its own topics where it has a sim rig node or is
    synthetic; every rig's topic names otherwise."""
    stages = {node.stage for node in load_graph(graph_path(graph)).nodes.values()}
    if "sim_rig" in stages or "synthetic_rig" in stages:
        return [""]
    return ["sim"] if "sim_expert" in stages else list(RIGS)


def overrides_for(graph: str, rig: str, out: Path, policies: tuple[Path, Path] | None) -> dict:
    """Parameters a graph's nodes need here: trained policies, output directories, and a
    feature backend with weights on this machine (a real rig's default, RADIO, has none)."""
    overrides: dict = {}
    for name, node in load_graph(graph_path(graph)).nodes.items():
        if node.stage in ("policy", "policy_rgb"):
            overrides[name] = {"policy": str(policies[node.stage == "policy_rgb"])}
        elif node.stage == "recorder":
            overrides[name] = {"path": str(out / "episode_0000")} if node.config.path else {"out": str(out)}
        elif node.stage in ("features", "keypoints") and rig not in ("", "sim"):
            overrides[name] = {"model": "descriptor_net"}
    return overrides


@pytest.mark.parametrize("graph", [pytest.param(g, marks=[pytest.mark.sim] if needs_sim(g) else []) for g in SHIPPED])
def test_every_node_of_a_shipped_graph_runs_under_the_shell_and_stops_cleanly(graph, request, tmp_path):
    policies = request.getfixturevalue("replay_policy")[:2] if needs_sim(graph) else None
    entries = [
        {"graph": graph, "namespace": rig or "graph", "rig": rig, "overrides": overrides_for(graph, rig, tmp_path / (rig or "out"), policies)}
        for rig in rigs_of(graph)
    ]
    spec = tmp_path / "graphs.json"
    spec.write_text(json.dumps(entries))
    nodes = sum(len(load_graph(graph_path(graph)).nodes) for _ in entries)
    with Launch([str(ROOT / "test" / "data" / "graph_nodes.launch.py"), f"spec:={spec}"], tmp_path / "launch.log") as launch:
        running = launch.wait_for(r"\]: running (\w+) from ", timeout_s=240, count=nodes)
        assert "Traceback" not in launch.text(), launch.tail()
        if graph == "teleop_spacemouse":  # parameters: the shell's apart, stage fields validated
            _check_parameters()
        result = launch.stop()
    stages = {node.stage_class.__name__ for node in load_graph(graph_path(graph)).nodes.values()}
    assert set(running) == stages
    assert result.returncode == 0 and not result.died and len(result.clean) == nodes, result.log[-3000:]
    assert "Traceback" not in result.log and "RCLError" not in result.log, result.log[-3000:]


def _check_parameters() -> None:
    """On the running teleop graph (sim rig's topic names): ros2 param sees the shell's own
    parameters under kil.; a live stage field is validated and applied or refused with the
    reason; a fixed one is refused."""
    names = ros2("param", "list", "--no-daemon", "/sim/safety").stdout.split()
    assert {"kil.graph", "kil.node", "kil.rig", "kil.input_timeout_s", "rig", "keypoint_max_age_s", "use_sim_time"} <= set(names), names
    refused = ros2("param", "set", "--no-daemon", "/sim/safety", "keypoint_max_age_s", "-5.0")
    assert "Setting parameter failed" in refused.stdout and "keypoint_max_age_s: must be >= 0, got -5.0" in refused.stdout, refused
    assert "0.5" in ros2("param", "get", "--no-daemon", "/sim/safety", "keypoint_max_age_s").stdout
    applied = ros2("param", "set", "--no-daemon", "/sim/safety", "keypoint_max_age_s", "0.8")
    assert "Set parameter successful" in applied.stdout, applied
    assert "0.8" in ros2("param", "get", "--no-daemon", "/sim/safety", "keypoint_max_age_s").stdout
    typo = ros2("param", "set", "--no-daemon", "/sim/interpolator", "max_speed", "100.0")
    assert "Setting parameter failed" in typo.stdout and "max_speed: must be <= 3.0 m/s, got 100.0" in typo.stdout, typo
    wrong_type = ros2("param", "set", "--no-daemon", "/sim/interpolator", "max_speed", "fast")
    assert "Setting parameter failed" in wrong_type.stdout and "max_speed: expected float, got 'fast'" in wrong_type.stdout, wrong_type
    fixed = ros2("param", "set", "--no-daemon", "/sim/safety", "rig", "franka")
    assert "Setting parameter failed" in fixed.stdout and "read-only" in fixed.stdout, fixed
    shell = ros2("param", "set", "--no-daemon", "/sim/teleop", "kil.graph", "live")
    assert "Setting parameter failed" in shell.stdout, shell
