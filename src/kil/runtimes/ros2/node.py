"""The generic ROS 2 shell: runs any stage of a graph description as one rclpy node.

``ros2 run kil kil_node --ros-args -r __node:=<graph node> -p graph:=<graph.yaml>`` (what
the launch helper generates) loads the graph, declares the stage's config fields as
parameters (defaults from the graph file), validates them into the config dataclass, and
wires the stage to ROS:

* outputs: one publisher per wire role, QoS from the graph; TF the message implies (the
  camera pose of an RGBD) goes to /tf_static, or /tf once it moves;
* inputs: one subscriber per role of every port of a subscription; several are matched by
  header stamp with message_filters, then converted back to project messages;
* a watchdog warns when a subscription has received nothing, naming the silent topics,
  their publisher counts and any QoS incompatibility (a silent message_filters otherwise);
* timers, one-shot calls, TF lookups through tf2.

rclpy is imported only when `main` runs, never at ``import kil``.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kil.converters.factory import RclpyFactory
from kil.converters.gripper import GripperCommandOptions, GripperGoal, gripper_goal
from kil.converters.pose import tf_message, transform_from_ros
from kil.converters.wire import TransformRouter
from kil.errors import ConfigError, KilError, MessageError, TransformError
from kil.graph import GraphSpec, NodeSpec, QoSSpec, TopicSpec, load_graph
from kil.paths import graph_path
from kil.rigs import graph_topics, load_rig
from kil.runtimes.ros2.params import config_from_parameters, flatten_config
from kil.stage import Stage, Subscription

WATCHDOG_PARAM = "input_timeout_s"
TF_WAIT_S = 0.05  # how long a stamped TF lookup may wait for its transform (the listener has its own thread)


def qos_profile(spec: QoSSpec) -> Any:
    """rclpy QoSProfile for a graph QoS spec."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST if spec.history == "keep_last" else HistoryPolicy.KEEP_ALL,
        depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE if spec.durability == "volatile" else DurabilityPolicy.TRANSIENT_LOCAL,
    )


def qos_incompatibility(offered: Any, requested: QoSSpec) -> str | None:
    """Why a publisher's offered QoS cannot serve a subscription (None if it can)."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    if offered.reliability == ReliabilityPolicy.BEST_EFFORT and requested.reliability == "reliable":
        return "publisher is best_effort, subscriber wants reliable"
    if offered.durability == DurabilityPolicy.VOLATILE and requested.durability == "transient_local":
        return "publisher is volatile, subscriber wants transient_local"
    return None


class _RosLog:
    """logging.Logger-style calls (``log.warning("x %s", y)``) on an rclpy logger."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def debug(self, msg: str, *args: Any) -> None:
        self._logger.debug(msg % args if args else msg)

    def info(self, msg: str, *args: Any) -> None:
        self._logger.info(msg % args if args else msg)

    def warning(self, msg: str, *args: Any) -> None:
        self._logger.warning(msg % args if args else msg)

    def error(self, msg: str, *args: Any) -> None:
        self._logger.error(msg % args if args else msg)


@dataclass(frozen=True)
class _Channel:
    """One ROS subscriber of a stage input: a role of the topic connected to a port."""

    port: str
    role: str
    ros_topic: str
    ros_type: str
    topic: TopicSpec


@dataclass
class _Input:
    """One stage subscription as ROS subscribers."""

    subscription: Subscription
    callback: Callable[..., None]
    channels: list[_Channel]
    received: Counter = field(default_factory=Counter)
    delivered: int = 0


class _RosIO:
    """The StageIO a stage gets inside a ROS 2 node."""

    def __init__(self, shell: StageShell) -> None:
        self._shell = shell
        self.log = _RosLog(shell.node.get_logger())

    def publish(self, port: str, msg: Any) -> None:
        self._shell.publish(port, msg)

    def now_ns(self) -> int:
        return self._shell.node.get_clock().now().nanoseconds

    def topic(self, port: str) -> TopicSpec | None:
        spec = self._shell.spec
        name = spec.publish.get(port) or spec.subscribe.get(port)
        return None if name is None else self._shell.graph.topics[name]

    def lookup_transform(self, parent: str, child: str, stamp_ns: int | None = None) -> np.ndarray:
        return self._shell.lookup_transform(parent, child, stamp_ns)

    def send_transform(self, parent: str, child: str, T: np.ndarray, stamp_ns: int, static: bool = False) -> None:
        from kil.converters.pose import transform_to_ros

        self._shell.broadcast([transform_to_ros(self._shell.factory, stamp_ns, parent, child, T)], static)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        holder: list[Any] = []

        def once() -> None:
            self._shell.node.destroy_timer(holder[0])
            callback()

        holder.append(self._shell.node.create_timer(max(delay_s, 1e-9), once))

    def shutdown(self, reason: str) -> None:
        import rclpy

        self._shell.node.get_logger().info(f"stopping: {reason}")
        rclpy.try_shutdown()


class StageShell:
    """Wires one stage of a graph into an rclpy node."""

    def __init__(self, node: Any) -> None:
        from rcl_interfaces.msg import ParameterDescriptor

        self.node = node
        node.declare_parameter("graph", "", ParameterDescriptor(description="graph description (path or name under config/graphs/)"))
        node.declare_parameter("graph_node", "", ParameterDescriptor(description="node of the graph to run (default: this node's name)"))
        node.declare_parameter(
            WATCHDOG_PARAM, 5.0, ParameterDescriptor(description="warn when an input has been silent this long (s)", dynamic_typing=True)
        )
        node.declare_parameter("rig", "", ParameterDescriptor(description="rig whose ROS topic names the graph's topics take (config/rigs/)"))
        graph_file = node.get_parameter("graph").value
        if not graph_file:
            raise ConfigError(f"node {node.get_name()}: parameter 'graph' (a graph description) is required")
        rig = node.get_parameter("rig").value
        self.graph: GraphSpec = load_graph(graph_path(graph_file), topics=graph_topics(load_rig(rig)) if rig else None)
        node_name = node.get_parameter("graph_node").value or node.get_name()
        if node_name not in self.graph.nodes:
            raise ConfigError(f"{self.graph.source}: no node {node_name!r} (nodes: {', '.join(self.graph.nodes)})")
        self.spec: NodeSpec = self.graph.nodes[node_name]
        self.factory = RclpyFactory()
        self._warned: set[str] = set()
        self._router = TransformRouter()
        self._publishers: dict[str, dict[str, Any]] = {}
        self._action_clients: dict[str, Any] = {}  # action name -> rclpy ActionClient (gripper goals)
        self._inputs: list[_Input] = []
        self._keep: list[Any] = []  # message_filters objects must outlive this method
        self._setup_tf()
        config = self._declare_config()
        self.stage: Stage = self.spec.stage_class(config, _RosIO(self))
        self._setup_outputs()
        self._setup_inputs()
        for timer in self.spec.stage_class.timers():
            node.create_timer(timer.period_ns(config) / 1e9, getattr(self.stage, timer.method))
        for service, method in self.spec.stage_class.services().items():
            self._add_service(service, getattr(self.stage, method))
        timeout = float(node.get_parameter(WATCHDOG_PARAM).value)
        if self._inputs and timeout > 0:
            node.create_timer(timeout, self._check_inputs)
        self.stage.start()
        node.get_logger().info(f"running {self.spec.stage_class.__name__} from {self.graph.source}")

    # -- parameters ---------------------------------------------------------------------
    def _declare_config(self) -> Any:
        from rcl_interfaces.msg import ParameterDescriptor

        values = {}
        for name, default in flatten_config(self.spec.config).items():
            descriptor = ParameterDescriptor(description=f"{self.spec.stage_class.__name__} config", dynamic_typing=True)
            values[name] = self.node.declare_parameter(name, default, descriptor).value
        return config_from_parameters(self.spec.stage_class.Config, values, f"node {self.node.get_name()}: parameters:")

    # -- TF -----------------------------------------------------------------------------
    def _setup_tf(self) -> None:
        from tf2_ros import Buffer, TransformBroadcaster, TransformListener

        self._tf_buffer = Buffer()
        self._tf_listener = TransformListener(self._tf_buffer, self.node)
        self._broadcaster = TransformBroadcaster(self.node)
        # /tf_static by hand: tf2_ros' StaticTransformBroadcaster latches only its last call on
        # Humble and never updates a child frame on Jazzy; this keeps every child's newest pose.
        self._static_transforms: dict[str, Any] = {}
        self._static_publisher = self.node.create_publisher(
            self.factory.message_class("tf2_msgs/msg/TFMessage"), "/tf_static", qos_profile(QoSSpec(durability="transient_local", depth=1))
        )

    def lookup_transform(self, parent: str, child: str, stamp_ns: int | None) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time
        from tf2_ros import TransformException

        try:
            if stamp_ns is None:
                transform = self._tf_buffer.lookup_transform(parent, child, Time())
            else:  # a frame can arrive just before the TF of its instant (a moving camera)
                transform = self._tf_buffer.lookup_transform(parent, child, Time(nanoseconds=int(stamp_ns)), timeout=Duration(seconds=TF_WAIT_S))
            return transform_from_ros(transform)[3]
        except TransformException as err:
            raise TransformError(f"TF {parent} <- {child}: {err}") from err

    def broadcast(self, transforms: list[Any], static: bool) -> None:
        if not static:
            self._broadcaster.sendTransform(transforms)
            return
        for transform in transforms:
            self._static_transforms[str(transform.child_frame_id)] = transform
        self._static_publisher.publish(tf_message(self.factory, list(self._static_transforms.values())))

    # -- outputs ------------------------------------------------------------------------
    def _setup_outputs(self) -> None:
        for port, topic_name in self.spec.publish.items():
            topic = self.graph.topics[topic_name]
            qos = qos_profile(topic.qos)
            self._publishers[port] = {
                role.name: self.node.create_publisher(self.factory.message_class(role.ros_type), topic.ros_topics[role.name], qos)
                for role in topic.wire.roles
            }

    def publish(self, port: str, msg: Any) -> None:
        if port not in self.spec.stage_class.outputs:
            raise KeyError(f"node {self.node.get_name()}: no output port {port!r}")
        if port not in self._publishers:
            return
        topic = self.graph.topics[self.spec.publish[port]]
        packet = topic.wire.to_ros(msg, self.factory, topic.options)
        for transform in packet.transforms:
            route = self._router.route(transform)
            if route is not None:
                self.broadcast([transform], static=route == "static")
        for role, ros_msg in packet.messages.items():
            self._publishers[port][role].publish(ros_msg)
        if isinstance(topic.options, GripperCommandOptions):
            goal = gripper_goal(msg, topic.options, self.factory)
            if goal is not None:
                self._send_goal(goal)

    def _send_goal(self, goal: GripperGoal) -> None:
        """Send a gripper goal (a newer goal preempts the older one at the server)."""
        from rclpy.action import ActionClient

        client = self._action_clients.get(goal.action)
        if client is None:
            client = self._action_clients[goal.action] = ActionClient(self.node, self.factory.action_class(goal.action_type), goal.action)
        if not client.server_is_ready():
            self._warn_once(f"action:{goal.action}", f"gripper action server {goal.action} ({goal.action_type}) is not available: "
                            "gripper commands are not executed (fake hardware has none)")
            return
        client.send_goal_async(goal.goal)

    # -- inputs -------------------------------------------------------------------------
    def _setup_inputs(self) -> None:
        declared = self.spec.stage_class.input_ports()
        for sub in self.spec.stage_class.subscriptions():
            callback = getattr(self.stage, sub.method)
            if sub.any_port:
                for port in (p for p in self.spec.subscribe if p not in declared):
                    single = Subscription(sub.method, {port: self.graph.topics[self.spec.subscribe[port]].type})
                    self._add_input(single, lambda msg, p=port, cb=callback: cb(p, msg))
            elif all(port in self.spec.subscribe for port in sub.ports):  # optional ports may be unconnected
                self._add_input(sub, callback)

    def _add_input(self, sub: Subscription, callback: Callable[..., None]) -> None:
        channels = []
        for port in sub.ports:
            topic = self.graph.topics[self.spec.subscribe[port]]
            for role in topic.wire.input_roles():
                channels.append(_Channel(port, role.name, topic.ros_topics[role.name], role.ros_type, topic))
        entry = _Input(sub, callback, channels)
        self._inputs.append(entry)
        if len(channels) == 1:
            c = channels[0]
            self.node.create_subscription(
                self.factory.message_class(c.ros_type), c.ros_topic, lambda msg, e=entry: self._on_messages(e, msg), qos_profile(c.topic.qos)
            )
            return
        import message_filters

        subscribers = []
        for index, c in enumerate(channels):
            subscriber = message_filters.Subscriber(self.node, self.factory.message_class(c.ros_type), c.ros_topic, qos_profile=qos_profile(c.topic.qos))
            subscriber.registerCallback(lambda _msg, e=entry, i=index: e.received.update([i]))
            subscribers.append(subscriber)
        slop = max([sub.slop_s] + [c.topic.wire.sync_slop_s for c in channels])
        queue = max(c.topic.qos.depth for c in channels)
        if slop > 0:
            sync = message_filters.ApproximateTimeSynchronizer(subscribers, queue, slop)
        else:
            sync = message_filters.TimeSynchronizer(subscribers, queue)
        sync.registerCallback(lambda *msgs, e=entry: self._on_messages(e, *msgs))
        self._keep.extend([*subscribers, sync])

    def _add_service(self, name: str, method: Callable[[], tuple[bool, str]]) -> None:
        from std_srvs.srv import Trigger

        def handle(_request: Any, response: Any) -> Any:
            response.success, response.message = method()
            return response

        self._keep.append(self.node.create_service(Trigger, f"~/{name}", handle))

    def _on_messages(self, entry: _Input, *ros_msgs: Any) -> None:
        if len(entry.channels) == 1:
            entry.received.update([0])
        entry.delivered += 1
        groups: dict[str, dict[str, Any]] = {}
        for channel, msg in zip(entry.channels, ros_msgs):
            groups.setdefault(channel.port, {})[channel.role] = msg
        now = self.node.get_clock().now().nanoseconds
        messages = []
        for port, group in groups.items():
            topic = self.graph.topics[self.spec.subscribe[port]]
            try:
                messages.append(topic.wire.from_ros(group, topic.options, self.lookup_transform, now))
            except (MessageError, TransformError) as err:
                self._warn_once(f"{topic.name}: {type(err).__name__}", f"dropping input on {topic.name}: {err}")
                return
        entry.callback(*messages)

    def _check_inputs(self) -> None:
        """Warn (once per cause) about subscriptions that have never fired."""
        for entry in self._inputs:
            if entry.delivered:
                continue
            for index, c in enumerate(entry.channels):
                if entry.received[index]:
                    continue
                infos = self.node.get_publishers_info_by_topic(c.ros_topic)
                problems = [p for p in (qos_incompatibility(i.qos_profile, c.topic.qos) for i in infos) if p]
                detail = f"incompatible QoS ({problems[0]})" if problems else f"{len(infos)} publisher(s)"
                self._warn_once(f"silent:{c.ros_topic}", f"nothing received on {c.ros_topic} ({c.port}): {detail}")
            if all(entry.received[i] for i in range(len(entry.channels))):
                topics = ", ".join(c.ros_topic for c in entry.channels)
                self._warn_once(f"unmatched:{entry.subscription.method}", f"messages arrive on {topics} but their header stamps never match")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.node.get_logger().warning(text)

    def close(self) -> None:
        self.stage.stop()


def main(args: list[str] | None = None) -> int:
    """Entry point of the `kil_node` executable; clean exit on Ctrl-C or ROS shutdown."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from rclpy.node import Node

    rclpy.init(args=args)
    node = shell = None
    status = 0
    try:
        node = Node("kil_node")
        shell = StageShell(node)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except KilError as err:
        print(f"kil_node: error: {err}", file=sys.stderr)
        status = 1
    finally:
        if shell is not None:
            shell.close()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status
