"""The generic ROS 2 shell: runs any stage of a graph description as one rclpy node.

``ros2 run kil kil_node --ros-args -r __node:=<graph node> -p kil.graph:=<graph.yaml>`` (what
the launch helper generates) loads the graph, declares the stage's config fields as
parameters (defaults from the graph file), validates them into the config dataclass, and
wires the stage to ROS:

* parameters: the shell's own live under ``kil.`` (``kil.graph``, ``kil.node``, ``kil.rig``,
  ``kil.input_timeout_s``), apart from any stage field. A stage field is read-only unless
  the stage lists it in ``live_params``; a change to one of those is validated through the
  config dataclass and applied (``stage.reconfigure``) or refused with the reason;
* outputs: one publisher per wire role, QoS from the graph; a latched role (the keypoint
  names) goes out transient-local, once per change; TF the message implies (the camera pose
  of an RGBD) goes to /tf_static, or /tf once it moves;
* inputs: one subscriber per role of every port of a subscription; several are matched by
  header stamp with message_filters, then converted back to project messages. Ports the
  stage marks ``latest`` keep one message (a busy node takes the newest frame, not a queue
  of old ones). A wire format's held roles (a robot's /joint_states, from publishers of
  their own) are not matched: each message takes the newest usable one stamped before it;
* a watchdog warns when a subscription has received nothing, naming the silent topics,
  their publisher counts and any QoS incompatibility (a silent message_filters otherwise);
* time: the node's ROS clock (``use_sim_time`` follows /clock); a clock-driving stage (the
  simulator) with ``use_sim_time`` advances simulated time itself and publishes /clock
  (`kil.runtimes.ros2.sim_clock`);
* shutdown: SIGINT and SIGTERM stop the spin loop; the stage is stopped (files closed)
  while the ROS context is still valid, and the process exits 0.

rclpy is imported only when `main` runs, never at ``import kil``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kil.converters.factory import RclpyFactory, time_ns
from kil.converters.gripper import GripperCommandOptions, GripperGoal, gripper_goal
from kil.converters.keypoints import NamesNotReceived
from kil.converters.pose import tf_message, transform_from_ros
from kil.converters.wire import TransformRouter, pick_held
from kil.errors import ConfigError, KilError, MessageError, TransformError
from kil.graph import GraphSpec, NodeSpec, QoSSpec, TopicSpec, load_graph
from kil.paths import graph_path
from kil.rigs import graph_topics, load_rig
from kil.runtimes.profile import Profile
from kil.runtimes.ros2.params import config_from_parameters, flatten_config
from kil.runtimes.ros2.sim_clock import SimClock
from kil.stage import Stage, Subscription

GRAPH_PARAM = "kil.graph"
NODE_PARAM = "kil.node"
RIG_PARAM = "kil.rig"
WATCHDOG_PARAM = "kil.input_timeout_s"
PROFILE_PARAM = "kil.profile"
# Top-level names a stage config field may not take: the shell's namespace and the
# parameters rclpy declares itself.
RESERVED_FIELDS = frozenset({"kil", "use_sim_time", "qos_overrides", "start_type_description_service"})
LATCHED_QOS = QoSSpec(durability="transient_local", depth=1)
HELD_HISTORY = 256  # recent messages kept per held role (/joint_states at 500 Hz: half a second)
SPIN_TIMEOUT_S = 0.1  # how often the spin loop looks at the stop flag
WATCHDOG_PERIOD_NS = 1_000_000_000


def qos_profile(spec: QoSSpec, depth: int | None = None) -> Any:
    """rclpy QoSProfile for a graph QoS spec (`depth` overrides the history depth)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST if spec.history == "keep_last" else HistoryPolicy.KEEP_ALL,
        depth=spec.depth if depth is None else depth,
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


def check_reserved_fields(config_class: type, where: str) -> None:
    """A stage config may not have a top-level field the shell or rclpy declares itself."""
    import dataclasses

    clash = sorted(f.name for f in dataclasses.fields(config_class) if f.name in RESERVED_FIELDS)
    if clash:
        raise ConfigError(f"{where}: config field(s) {', '.join(clash)} clash with the ROS 2 shell's parameters; rename them")


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
    depth: int  # 1 for a port the stage marks `latest`


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
        return self._shell.now_ns()

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
        self._shell.call_later(delay_s, callback)

    def shutdown(self, reason: str) -> None:
        self._shell.request_stop(reason)


class StageShell:
    """Wires one stage of a graph into an rclpy node."""

    def __init__(self, node: Any, stop: threading.Event | None = None) -> None:
        from rcl_interfaces.msg import ParameterDescriptor

        self.node = node
        self.stop_event = stop or threading.Event()
        self.stop_reason = ""
        fixed = {"read_only": True}
        node.declare_parameter(GRAPH_PARAM, "", ParameterDescriptor(description="graph description (path or name under config/graphs/)", **fixed))
        node.declare_parameter(NODE_PARAM, "", ParameterDescriptor(description="node of the graph to run (default: this node's name)", **fixed))
        node.declare_parameter(RIG_PARAM, "", ParameterDescriptor(description="rig whose ROS topic names the graph's topics take (config/rigs/)", **fixed))
        node.declare_parameter(WATCHDOG_PARAM, 5.0, ParameterDescriptor(description="warn when an input has been silent this long (s)", **fixed))
        node.declare_parameter(PROFILE_PARAM, "", ParameterDescriptor(description="directory to write this node's timing into at shutdown (kil bench live)", **fixed))
        graph_file = node.get_parameter(GRAPH_PARAM).value
        if not graph_file:
            raise ConfigError(f"node {node.get_name()}: parameter '{GRAPH_PARAM}' (a graph description) is required")
        rig = node.get_parameter(RIG_PARAM).value
        self.graph: GraphSpec = load_graph(graph_path(graph_file), topics=graph_topics(load_rig(rig)) if rig else None)
        node_name = node.get_parameter(NODE_PARAM).value or node.get_name()
        if node_name not in self.graph.nodes:
            raise ConfigError(f"{self.graph.source}: no node {node_name!r} (nodes: {', '.join(self.graph.nodes)})")
        self.spec: NodeSpec = self.graph.nodes[node_name]
        check_reserved_fields(self.spec.stage_class.Config, f"{self.graph.source}: nodes.{node_name}.stage")
        self.factory = RclpyFactory()
        self.handled = 0  # stage-bound callbacks run so far (the simulated clock drains inputs by it)
        self.profile_dir = node.get_parameter(PROFILE_PARAM).value
        self.profile = Profile() if self.profile_dir else None
        self._busy = None if self.profile is None else self.profile.busy_ns.setdefault(node_name, [])
        self._warned: set[str] = set()
        self._router = TransformRouter()
        self._publishers: dict[str, dict[str, Any]] = {}
        self._latched_sent: dict[tuple[str, str], Any] = {}  # (port, role) -> the latched message last published
        self._latched_in: dict[tuple[str, str], Any] = {}  # (topic, role) -> the latched message last received
        self._held_in: dict[tuple[str, str], deque] = {}  # (topic, role) -> its recent usable messages (WireFormat.held)
        self._held_missing: set[str] = set()  # topics whose messages were dropped for want of a held role's
        self._action_clients: dict[str, Any] = {}  # action name -> rclpy ActionClient (gripper goals)
        self._inputs: list[_Input] = []
        self._keep: list[Any] = []  # message_filters objects must outlive this method
        self.sim_clock: SimClock | None = None
        if self.spec.stage_class.drives_clock and node.get_parameter("use_sim_time").value:
            self._setup_sim_clock()
        self._setup_tf()
        self._params: dict[str, Any] = {}
        config = self._declare_config()
        self.stage: Stage = self.spec.stage_class(config, _RosIO(self))
        self._setup_outputs()
        self._setup_inputs()
        for timer in self.spec.stage_class.timers():
            period = timer.period_ns(config)
            self._every(period, self._ticked(f"{node_name}.{timer.method}", period, self._counted(getattr(self.stage, timer.method))))
        for service, method in self.spec.stage_class.services().items():
            self._add_service(service, getattr(self.stage, method))
        self._input_timeout_s = float(node.get_parameter(WATCHDOG_PARAM).value)
        self._watch_since_ns: int | None = None
        if self._inputs and self._input_timeout_s > 0:
            self._every(WATCHDOG_PERIOD_NS, self._check_inputs)
        node.add_on_set_parameters_callback(self._on_set_parameters)
        self.stage.start()
        clock = "drives /clock" if self.sim_clock else ("simulated time" if node.get_parameter("use_sim_time").value else "wall-clock time")
        node.get_logger().info(f"running {self.spec.stage_class.__name__} from {self.graph.source} ({clock})")

    # -- time ---------------------------------------------------------------------------
    def _setup_sim_clock(self) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        clock_class = self.factory.message_class("rosgraph_msgs/msg/Clock")
        publisher = self.node.create_publisher(clock_class, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

        def publish_clock(t_ns: int) -> None:
            msg = clock_class()
            msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
            publisher.publish(msg)

        # Simulated time starts at a whole second of wall time: stamps look like a robot's,
        # and periods that divide a second keep their phase across nodes.
        start = time.time_ns() // 1_000_000_000 * 1_000_000_000
        self.sim_clock = SimClock(start, lambda: self.stage.real_time_factor, publish_clock)

    def now_ns(self) -> int:
        if self.sim_clock is not None:
            return self.sim_clock.now_ns()
        return self.node.get_clock().now().nanoseconds

    def _every(self, period_ns: int, callback: Callable[[], None]) -> None:
        if self.sim_clock is not None:
            self.sim_clock.every(period_ns, callback)
        else:
            self.node.create_timer(period_ns / 1e9, callback)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        callback = self._counted(callback)
        if self.sim_clock is not None:
            self.sim_clock.call_later(delay_s, callback)
            return
        holder: list[Any] = []

        def once() -> None:
            self.node.destroy_timer(holder[0])
            callback()

        holder.append(self.node.create_timer(max(delay_s, 1e-9), once))

    def _counted(self, callback: Callable[..., None]) -> Callable[..., None]:
        """A stage-bound callback: counted, and timed (wall clock) when profiling."""
        busy = self._busy

        def run(*args: Any) -> Any:
            self.handled += 1
            if busy is None:
                return callback(*args)
            start = time.perf_counter_ns()
            try:
                return callback(*args)
            finally:
                busy.append(time.perf_counter_ns() - start)

        return run

    def _ticked(self, label: str, period_ns: int, callback: Callable[[], None]) -> Callable[[], None]:
        """A stage timer, its tick times (node clock) recorded when profiling."""
        if self.profile is None:
            return callback
        ticks = self.profile.tick_ns.setdefault(label, [])
        self.profile.period_ns[label] = period_ns

        def tick() -> None:
            ticks.append(self.now_ns())
            callback()

        return tick

    # -- running ------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.node.get_logger().info(f"stopping: {reason}")
        self.stop_event.set()

    def spin(self) -> None:
        """Handle callbacks (and advance simulated time, for the simulator) until stopped."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        executor = SingleThreadedExecutor(context=self.node.context)
        executor.add_node(self.node)

        def spin_once(timeout_s: float) -> bool:
            before = self.handled
            executor.spin_once(timeout_sec=timeout_s)
            return self.handled != before

        try:
            if self.sim_clock is not None:
                self.sim_clock.run(self.stop_event, spin_once)
            else:
                while not self.stop_event.is_set() and rclpy.ok(context=self.node.context):
                    executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
        finally:
            executor.remove_node(self.node)
            executor.shutdown(timeout_sec=0)

    def close(self) -> None:
        try:
            self.stage.stop()
        finally:
            if self.profile is not None:
                Path(self.profile_dir).mkdir(parents=True, exist_ok=True)
                self.profile.save(Path(self.profile_dir) / f"{self.spec.name}.json")

    # -- parameters ---------------------------------------------------------------------
    def _declare_config(self) -> Any:
        from rcl_interfaces.msg import ParameterDescriptor

        live = self.spec.stage_class.live_params
        name = self.spec.stage_class.__name__
        for key, default in flatten_config(self.spec.config).items():
            descriptor = ParameterDescriptor(
                description=f"{name} config" + (" (may change while running)" if key in live else " (fixed while running)"),
                dynamic_typing=True, read_only=key not in live,
            )
            self._params[key] = self.node.declare_parameter(key, default, descriptor).value
        return config_from_parameters(self.spec.stage_class.Config, self._params, f"node {self.node.get_name()}: parameters:")

    def _on_set_parameters(self, parameters: list[Any]) -> Any:
        """Validate a change of stage fields through the config dataclass; apply or refuse it."""
        from rcl_interfaces.msg import SetParametersResult

        changes = {p.name: p.value for p in parameters if p.name in self._params}
        if not changes:
            return SetParametersResult(successful=True)
        fixed = sorted(set(changes) - self.spec.stage_class.live_params)
        if fixed:  # declared read-only too; this guards overrides that bypass the descriptor
            return SetParametersResult(successful=False, reason=f"{', '.join(fixed)}: fixed while the node runs (restart it with the new value)")
        values = {**self._params, **changes}
        try:
            config = config_from_parameters(self.spec.stage_class.Config, values, f"node {self.node.get_name()}:")
            self.stage.reconfigure(config)
        except (ConfigError, ValueError, TypeError) as err:
            self.node.get_logger().warning(f"parameter change refused: {err}")
            return SetParametersResult(successful=False, reason=str(err))
        self._params = values
        self.node.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items())))
        return SetParametersResult(successful=True)

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
        """Never waits: the listener shares this node's single thread, so nothing could
        arrive meanwhile; a frame whose TF is not there yet fails and the next one is tried."""
        from rclpy.time import Time
        from tf2_ros import TransformException

        try:
            at = Time() if stamp_ns is None else Time(nanoseconds=int(stamp_ns))
            return transform_from_ros(self._tf_buffer.lookup_transform(parent, child, at))[3]
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
            self._publishers[port] = {
                role.name: self.node.create_publisher(self.factory.message_class(role.ros_type), topic.ros_topics[role.name],
                                                      qos_profile(LATCHED_QOS if role.latched else topic.qos))
                for role in topic.wire.roles
            }

    def publish(self, port: str, msg: Any) -> None:
        if port not in self.spec.stage_class.outputs:
            raise KeyError(f"node {self.node.get_name()}: no output port {port!r}")
        if port not in self._publishers:
            return
        topic = self.graph.topics[self.spec.publish[port]]
        if self.profile is not None:
            self.profile.publish.setdefault(topic.name, []).append((self.now_ns(), getattr(msg, "stamp_ns", 0)))
        packet = topic.wire.to_ros(msg, self.factory, topic.options)
        for transform in packet.transforms:
            route = self._router.route(transform)
            if route is not None:
                self.broadcast([transform], static=route == "static")
        latched = {r.name for r in topic.wire.latched_roles()}
        for role, ros_msg in packet.messages.items():
            if role in latched:
                if self._latched_sent.get((port, role)) == ros_msg:
                    continue
                self._latched_sent[(port, role)] = ros_msg
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
        for topic_name in sorted(set(self.spec.subscribe.values())):
            self._add_latched_inputs(self.graph.topics[topic_name])
            self._add_held_inputs(self.graph.topics[topic_name])

    def _add_held_inputs(self, topic: TopicSpec) -> None:
        """Keep the recent usable messages of each held role of a subscribed topic (a robot's
        /joint_states, from publishers of their own): each message of the topic is completed
        with the newest one stamped at most held_max_age_s before it (wire.pick_held)."""
        for role in (r for r in topic.wire.roles if r.name in topic.wire.held):
            history = self._held_in[(topic.name, role.name)] = deque(maxlen=HELD_HISTORY)

            def keep(msg: Any, role: str = role.name, history: deque = history) -> None:
                if topic.wire.completes(role, msg, topic.options):
                    history.append(msg)

            self.node.create_subscription(self.factory.message_class(role.ros_type), topic.ros_topics[role.name], keep,
                                          qos_profile(topic.qos))

    def _add_latched_inputs(self, topic: TopicSpec) -> None:
        """Keep the newest message of each latched role of a subscribed topic (the keypoint
        names): it travels with every message of the topic into the converter."""
        for role in topic.wire.latched_roles():
            def keep(msg: Any, key: tuple[str, str] = (topic.name, role.name)) -> None:
                self._latched_in[key] = msg

            self.node.create_subscription(self.factory.message_class(role.ros_type), topic.ros_topics[role.name], keep,
                                          qos_profile(LATCHED_QOS))

    def _add_input(self, sub: Subscription, callback: Callable[..., None]) -> None:
        channels = []
        for port in sub.ports:
            topic = self.graph.topics[self.spec.subscribe[port]]
            depth = 1 if port in sub.latest else topic.qos.depth
            for role in (r for r in topic.wire.input_roles() if r.name not in topic.wire.held):
                channels.append(_Channel(port, role.name, topic.ros_topics[role.name], role.ros_type, topic, depth))
        entry = _Input(sub, self._counted(callback), channels)
        self._inputs.append(entry)
        if len(channels) == 1:
            c = channels[0]
            self.node.create_subscription(
                self.factory.message_class(c.ros_type), c.ros_topic, lambda msg, e=entry: self._on_messages(e, msg), qos_profile(c.topic.qos, c.depth)
            )
            return
        import message_filters

        subscribers = []
        for index, c in enumerate(channels):
            subscriber = message_filters.Subscriber(self.node, self.factory.message_class(c.ros_type), c.ros_topic,
                                                    qos_profile=qos_profile(c.topic.qos, c.depth))
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

        method = self._counted(method)

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
        now = self.now_ns()
        messages = []
        for port, group in groups.items():
            topic = self.graph.topics[self.spec.subscribe[port]]
            for role in topic.wire.latched_roles():
                if (topic.name, role.name) in self._latched_in:
                    group[role.name] = self._latched_in[(topic.name, role.name)]
            if not self._complete_held(topic, group):
                return
            try:
                messages.append(topic.wire.from_ros(group, topic.options, self.lookup_transform, now))
            except NamesNotReceived:  # just started: the latched names are on their way
                if f"names:{topic.name}" not in self._warned:
                    self._warned.add(f"names:{topic.name}")
                    self.node.get_logger().info(f"waiting for the keypoint names of {topic.name}")
                return
            except (MessageError, TransformError) as err:
                self._warn_once(f"{topic.name}: {type(err).__name__}", f"dropping input on {topic.name}: {err}")
                return
        entry.callback(*messages)

    def _complete_held(self, topic: TopicSpec, group: dict[str, Any]) -> bool:
        """Add each held role's message to `group`; False (logged once) while one has none."""
        if not topic.wire.held:
            return True
        stamp = time_ns(next(iter(group.values())).header.stamp)
        for role in topic.wire.held:
            msg = pick_held(self._held_in[(topic.name, role)], stamp, int(topic.wire.held_max_age_s * 1e9))
            if msg is None:
                self._held_missing.add(topic.name)
                if f"held:{topic.name}" not in self._warned:  # at start-up the first poses come before any joint state
                    self._warned.add(f"held:{topic.name}")
                    self.node.get_logger().info(f"{topic.name}: waiting for {topic.ros_topics[role]} stamped within "
                                                f"{topic.wire.held_max_age_s} s of it")
                return False
            group[role] = msg
        return True

    def _check_inputs(self) -> None:
        """Warn (once per cause) about subscriptions that have never fired within the timeout
        (counted from the first check: on simulated time the clock starts when /clock does)."""
        now = self.now_ns()
        if self._watch_since_ns is None:
            self._watch_since_ns = now
        if now - self._watch_since_ns < self._input_timeout_s * 1e9:
            return
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
                starved = [c.topic for c in entry.channels if c.topic.name in self._held_missing]
                if starved:  # the held role (a robot's /joint_states) never had a usable message
                    t = starved[0]
                    held = " + ".join(t.ros_topics[r] for r in t.wire.held)
                    self._warn_once(f"held:{entry.subscription.method}", f"messages arrive on {entry.channels[0].ros_topic} but {held} had none "
                                    f"usable stamped within {t.wire.held_max_age_s} s of them (silent, or without the joints its options name)")
                    continue
                topics = ", ".join(c.ros_topic for c in entry.channels)
                self._warn_once(f"unmatched:{entry.subscription.method}", f"messages arrive on {topics} but their header stamps never match")

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.node.get_logger().warning(text)


def main(args: list[str] | None = None) -> int:
    """Entry point of the `kil_node` executable. SIGINT / SIGTERM (Ctrl-C, `ros2 launch`
    shutting down) end the spin loop; the stage stops, then ROS, and the exit status is 0."""
    import rclpy
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    # rclpy's own handler would shut the context down under running callbacks (their
    # publishers then fail); this process stops its stage first, then ROS.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = shell = None
    status = 0
    try:
        node = Node("kil_node")
        shell = StageShell(node, stop)
        shell.spin()
    except KilError as err:
        print(f"kil_node: error: {err}", file=sys.stderr)
        status = 1
    finally:
        try:
            if shell is not None:
                shell.close()
        finally:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
            # A second Ctrl-C (a terminal signals the launch and its children; the launch then
            # signals them again) must not kill a process that is already exiting: ignored
            # handlers, unlike Python ones, survive the interpreter's finalisation.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
    return status
