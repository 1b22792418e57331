"""Graph descriptions: malformed files get one-line errors naming file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kil.errors import ConfigError, GraphError
from kil.graph import load_graph, parse_overrides
from kil.msgs import GripperCommand, PoseCommand
from kil.stage import Subscription

TOY = Path(__file__).parent / "data" / "toy_graph.yaml"
CONFIG = Path(__file__).resolve().parents[1] / "config" / "graphs"


def write(tmp_path, text):
    path = tmp_path / "graph.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def expect(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_graph(path)
    error = str(info.value)
    assert "\n" not in error
    assert error.startswith(str(path)), error
    assert message in error, error


def test_toy_graph_loads():
    graph = load_graph(TOY)
    assert list(graph.nodes) == ["counter", "scaler", "collector"]
    assert graph.topics["/toy/scaled"].qos.reliability == "best_effort"
    assert graph.topics["/toy/count"].type is PoseCommand
    assert graph.nodes["scaler"].config.gain == 2.0
    assert graph.publishers("/toy/count") == ["counter"]


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_graphs_load(path):
    assert load_graph(path).nodes


def test_malformed_yaml(tmp_path):
    expect(tmp_path, "name: x\nnodes: {a: [1, 2\n", "invalid YAML")


def test_missing_nodes(tmp_path):
    expect(tmp_path, "name: x\n", "nodes: required key is missing")


def test_unknown_top_level_key(tmp_path):
    expect(tmp_path, "name: x\nnodes: {}\nnoodles: 1\n", "noodles: unknown key")


def test_unknown_topic_type(tmp_path):
    expect(
        tmp_path,
        """
        name: x
        topics: {/t: {type: Wrench}}
        nodes: {}
        """,
        "topics./t.type: unknown message type 'Wrench' (known: RGBD, FeatureMap, Keypoints, Image, RobotState, ActionChunk, PoseCommand, "
        "GripperCommand, EStop, HandPose, HandInputs, Twist, Buttons, EpisodeControl, TaskProgress)",
    )


def test_stage_override_swaps_a_node_and_checks_its_ports(tmp_path):
    from kil.graph import load_graph
    from kil.paths import graph_path

    graph = load_graph(graph_path("sim_demo"), stages={"teleop": "keyboard_teleop"})
    assert graph.nodes["teleop"].stage_class.__name__ == "KeyboardTeleop"
    with pytest.raises(ConfigError, match=r"nodes.teleop.subscribe.hand: input port of QuestTeleop is not connected"):
        load_graph(graph_path("sim_demo"), stages={"teleop": "quest_teleop"})
    with pytest.raises(ConfigError, match=r"stage override for unknown node 'pilot'"):
        load_graph(graph_path("sim_demo"), stages={"pilot": "keyboard_teleop"})


def test_unknown_stage(tmp_path):
    expect(tmp_path, "name: x\nnodes: {a: {stage: warp_drive}}\n", "nodes.a.stage: unknown stage 'warp_drive'")


def test_bad_stage_parameter(tmp_path):
    expect(
        tmp_path,
        """
        name: x
        topics: {/t: {type: PoseCommand}}
        nodes: {a: {stage: toy_stages.counter, params: {rate_hz: fast}, publish: {out: /t}}}
        """,
        "nodes.a.params.rate_hz: expected float, got 'fast'",
    )


def test_port_type_mismatch(tmp_path):
    expect(
        tmp_path,
        """
        name: x
        topics: {/t: {type: RobotState}}
        nodes: {a: {stage: toy_stages.counter, publish: {out: /t}}}
        """,
        "nodes.a.publish.out: topic /t carries RobotState, the port takes PoseCommand",
    )


def test_undeclared_topic_unknown_port_and_unconnected_input(tmp_path):
    expect(tmp_path, "name: x\nnodes: {a: {stage: toy_stages.counter, publish: {out: /nope}}}\n", "nodes.a.publish.out: topic '/nope' is not declared")
    expect(tmp_path, "name: x\ntopics: {/t: {type: PoseCommand}}\nnodes: {a: {stage: toy_stages.counter, publish: {oot: /t}}}\n", "nodes.a.publish.oot: Counter has no such output (outputs: out)")
    expect(tmp_path, "name: x\nnodes: {a: {stage: toy_stages.collector}}\n", "nodes.a.subscribe.inp: input port of Collector is not connected")


def test_headerless_messages_cannot_be_stamp_matched(tmp_path, monkeypatch):
    monkeypatch.setattr("toy_stages.pair.Pair.on_pair._kil_subscription", Subscription("on_pair", {"a": PoseCommand, "b": GripperCommand}))
    expect(
        tmp_path,
        "name: x\ntopics: {/a: {type: PoseCommand}, /g: {type: GripperCommand}}\nnodes: {p: {stage: toy_stages.pair, subscribe: {a: /a, b: /g}}}\n",
        "nodes.p.subscribe.b: GripperCommand has no header stamp to match with a",
    )


def test_bad_topic_name_role_and_options(tmp_path):
    expect(tmp_path, "name: x\ntopics: {'/bad topic': {type: PoseCommand}}\nnodes: {}\n", "topics./bad topic: invalid ROS 2 topic name")
    expect(tmp_path, "name: x\ntopics: {/c: {type: RGBD, roles: {colour: /x}}}\nnodes: {}\n", "topics./c.roles.colour: RGBD has no role 'colour' (roles: image, depth, camera_info)")
    expect(tmp_path, "name: x\ntopics: {/c: {type: RGBD, options: {depth_encoding: 8UC1}}}\nnodes: {}\n", "topics./c.options.depth_encoding: expected one of '32FC1', '16UC1', got '8UC1'")


def test_role_topics_default_and_override(tmp_path):
    graph = load_graph(write(tmp_path, "name: x\ntopics: {/camera: {type: RGBD, roles: {image: /zed/rgb}}}\nnodes: {}\n"))
    assert graph.topics["/camera"].ros_topics == {"image": "/zed/rgb", "depth": "/camera/depth", "camera_info": "/camera/camera_info"}


def test_overrides():
    assert parse_overrides(["a.rate_hz=5", "a.inner.gain=[1, 2]", "b.name=hello"]) == {
        "a": {"rate_hz": 5, "inner": {"gain": [1, 2]}},
        "b": {"name": "hello"},
    }
    with pytest.raises(ConfigError, match="expected NODE.PARAM=VALUE"):
        parse_overrides(["rate_hz=5"])
    with pytest.raises(GraphError, match="parameter override for unknown node 'nope'"):
        load_graph(TOY, {"nope": {"x": 1}})
