"""Graph descriptions (`config/graphs/*.yaml`): nodes, their parameters, and the topics between them.

Both runtimes and the launch files read the same description::

    name: toy
    topics:
      /camera:                       # a project message type per topic
        type: RGBD
        qos: {reliability: reliable, depth: 10}
        roles: {image: /zed/zed_node/rgb/color/rect/image}   # ROS topics per role (optional)
        options: {base_frame: panda_link0}                    # wire options (optional)
    nodes:
      source:
        stage: counter               # kil.stages.counter, or a dotted module path
        params: {rate_hz: 10}        # validated against the stage's Config dataclass
        publish: {out: /camera}      # output port -> topic
        subscribe: {}                # input port -> topic

Every problem is a one-line `GraphError` naming the file and key.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kil.config import load_dataclass, load_yaml
from kil.converters.wire import WireFormat, wire_format
from kil.errors import ConfigError, GraphError
from kil.msgs import message_type
from kil.stage import Stage, load_stage_class

_TOPIC_NAME = re.compile(r"^/?[A-Za-z_~][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class QoSSpec:
    """ROS 2 QoS of a topic (the local runtime uses `depth` for its sync queues)."""

    reliability: Literal["reliable", "best_effort"] = "reliable"
    durability: Literal["volatile", "transient_local"] = "volatile"
    history: Literal["keep_last", "keep_all"] = "keep_last"
    depth: int = 10

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth: must be >= 1, got {self.depth}")


@dataclass(frozen=True)
class _TopicEntry:
    type: str
    qos: QoSSpec = QoSSpec()
    roles: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _NodeEntry:
    stage: str
    params: dict[str, Any] = field(default_factory=dict)
    publish: dict[str, str] = field(default_factory=dict)
    subscribe: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _GraphEntry:
    name: str
    nodes: dict[str, _NodeEntry]
    topics: dict[str, _TopicEntry] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class TopicSpec:
    """A topic: its project message class, QoS, wire options and ROS topic per role."""

    name: str
    type: type
    qos: QoSSpec
    options: Any
    ros_topics: dict[str, str]

    @property
    def wire(self) -> WireFormat:
        return wire_format(self.type)


@dataclass(frozen=True)
class NodeSpec:
    """A node: its stage class, validated config, and port -> topic maps."""

    name: str
    stage: str
    stage_class: type[Stage]
    params: dict[str, Any]
    config: Any
    publish: dict[str, str]
    subscribe: dict[str, str]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    source: str
    topics: dict[str, TopicSpec]
    nodes: dict[str, NodeSpec]
    description: str = ""

    def publishers(self, topic: str) -> list[str]:
        return [n.name for n in self.nodes.values() if topic in n.publish.values()]


def load_graph(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None,
               topics: dict[str, dict[str, Any]] | None = None, stages: dict[str, str] | None = None) -> GraphSpec:
    """Load and validate a graph description; `overrides` maps node -> params to merge in,
    `topics` maps topic -> {roles, options} to merge in (a rig's ROS topic names), `stages`
    maps node -> the stage to run there instead (a keyboard teleop for the scripted expert:
    its ports are checked like any other; the file's params for that node are dropped)."""
    return parse_graph(load_yaml(path), str(path), overrides, topics, stages)


def parse_graph(data: Any, source: str, overrides: dict[str, dict[str, Any]] | None = None,
                topics: dict[str, dict[str, Any]] | None = None, stages: dict[str, str] | None = None) -> GraphSpec:
    """Validate graph description data (already parsed YAML) from `source`."""
    if stages and isinstance(data, dict) and isinstance(data.get("nodes"), dict):
        data = copy.deepcopy(data)
        for name, stage in stages.items():
            if not isinstance(data["nodes"].get(name), dict):
                raise GraphError(f"{source}: stage override for unknown node {name!r} (nodes: {', '.join(data['nodes'])})")
            data["nodes"][name]["stage"] = stage
            data["nodes"][name]["params"] = {}  # they were the other stage's: only `overrides` apply
    if topics and isinstance(data, dict) and isinstance(data.get("topics"), dict):
        data = copy.deepcopy(data)
        for name, extra in topics.items():
            entry = data["topics"].get(name)
            if isinstance(entry, dict):  # topics the graph does not have are not added
                for key in ("roles", "options"):
                    entry[key] = {**(entry.get(key) or {}), **extra.get(key, {})}
    try:
        entry = load_dataclass(_GraphEntry, data, f"{source}:")
    except ConfigError as err:
        raise GraphError(str(err)) from None
    topics = {name: _topic(name, t, source) for name, t in entry.topics.items()}
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(entry.nodes))
    if unknown:
        raise GraphError(f"{source}: parameter override for unknown node {unknown[0]!r} (nodes: {', '.join(entry.nodes)})")
    nodes = {
        name: _node(name, node, topics, source, overrides.get(name, {})) for name, node in entry.nodes.items()
    }
    return GraphSpec(entry.name, source, topics, nodes, entry.description)


def _topic(name: str, entry: _TopicEntry, source: str) -> TopicSpec:
    where = f"{source}: topics.{name}"
    if not _TOPIC_NAME.match(name):
        raise GraphError(f"{where}: invalid ROS 2 topic name")
    try:
        msg_type = message_type(entry.type, f"{where}.type")
    except ConfigError as err:
        raise GraphError(str(err)) from None
    wire = wire_format(msg_type)
    known_roles = [r.name for r in wire.roles]  # "" renames a one-role topic
    for role, ros_topic in entry.roles.items():
        if role not in known_roles:
            raise GraphError(f"{where}.roles.{role}: {entry.type} has no role {role!r} (roles: {', '.join(r for r in known_roles if r) or 'none'})")
        if not _TOPIC_NAME.match(ros_topic):
            raise GraphError(f"{where}.roles.{role}: invalid ROS 2 topic name {ros_topic!r}")
    try:
        options = load_dataclass(wire.options_class, entry.options, f"{where}.options")
    except ConfigError as err:
        raise GraphError(str(err)) from None
    return TopicSpec(name, msg_type, entry.qos, options, wire.role_topics(name, entry.roles))


def merge_params(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (nested mappings merge key by key)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_params(merged[key], value)
        else:
            merged[key] = value
    return merged


def _node(name: str, entry: _NodeEntry, topics: dict[str, TopicSpec], source: str, override: dict[str, Any]) -> NodeSpec:
    where = f"{source}: nodes.{name}"
    if not _NODE_NAME.match(name):
        raise GraphError(f"{where}: invalid ROS 2 node name")
    try:
        stage = load_stage_class(entry.stage, f"{where}.stage")
        params = merge_params(entry.params, override)
        config = load_dataclass(stage.Config, params, f"{where}.params")
    except ConfigError as err:  # GraphError included: re-raised with the same text
        raise GraphError(str(err)) from None
    for port, topic in entry.publish.items():
        if port not in stage.outputs:
            raise GraphError(f"{where}.publish.{port}: {stage.__name__} has no such output (outputs: {', '.join(stage.outputs) or 'none'})")
        _check_topic(f"{where}.publish.{port}", stage.outputs[port], topic, topics)
    inputs = stage.input_ports()
    for port, topic in entry.subscribe.items():
        if port not in inputs and not stage.accepts_any_port():
            raise GraphError(f"{where}.subscribe.{port}: {stage.__name__} has no such input (inputs: {', '.join(inputs) or 'none'})")
        _check_topic(f"{where}.subscribe.{port}", inputs.get(port), topic, topics)
    for port in inputs:
        if port not in entry.subscribe and port not in stage.optional_ports():
            raise GraphError(f"{where}.subscribe.{port}: input port of {stage.__name__} is not connected to a topic")
    for sub in stage.subscriptions():
        for port in sub.ports if len(sub.ports) > 1 else ():
            if not topics[entry.subscribe[port]].wire.stamped:  # message_filters needs header stamps
                raise GraphError(f"{where}.subscribe.{port}: {sub.ports[port].__name__} has no header stamp to match with {', '.join(p for p in sub.ports if p != port)}")
    return NodeSpec(name, entry.stage, stage, params, config, dict(entry.publish), dict(entry.subscribe))


def _check_topic(where: str, wanted: type | None, topic: str, topics: dict[str, TopicSpec]) -> None:
    """The topic exists and carries `wanted` (None: any type, for subscribe_any ports)."""
    if topic not in topics:
        raise GraphError(f"{where}: topic {topic!r} is not declared under topics")
    if wanted is not None and topics[topic].type is not wanted:
        raise GraphError(f"{where}: topic {topic} carries {topics[topic].type.__name__}, the port takes {wanted.__name__}")


def parse_overrides(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """``["node.param=value", "node.a.b=[1, 2]"]`` -> {node: {param: value}}; values are YAML."""
    import yaml

    overrides: dict[str, dict[str, Any]] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {text!r}: expected NODE.PARAM=VALUE")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {text!r}: value is not valid YAML") from None
        target = overrides.setdefault(parts[0], {})
        for part in parts[1:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = parsed
    return overrides
