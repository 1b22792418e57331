"""rosbag2 (MCAP) episodes: one bag directory per demonstration, plus `kil_episode.yaml`.

Writing goes through `rosbags` (the same topics and ROS 2 types a real rig records with
``ros2 bag record -s mcap``); reading goes through rosbags' AnyReader, so a bag from a
robot and one written here read the same. Project messages are converted by the topic's
wire format (`kil.converters.wire`), the camera pose goes to /tf_static.

Crash safety: the writer completes and fsyncs an MCAP chunk at least every
`flush_interval_s`. A writer killed mid-episode leaves a bag without summary and
metadata.yaml; `recover_episode` (run by `EpisodeReader` or `kil bag recover`) rebuilds a
complete bag from every flushed message and keeps the partial file beside it.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos
from rosbags.rosbag2.storage_mcap import McapWriter
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from kil.converters.factory import TypestoreFactory
from kil.converters.pose import tf_message, transform_from_ros
from kil.converters.typestore import ros2_typestore
from kil.converters.wire import HELD_LEAD_NS, RoleAssembler, TransformRouter
from kil.data.episode import METADATA_FILE, EpisodeMetadata, read_metadata, write_metadata
from kil.errors import BagError, MessageError, TransformError
from kil.graph import QoSSpec, TopicSpec
from kil.runtimes.tf import TransformBuffer

log = logging.getLogger(__name__)

TF_TYPE = "tf2_msgs/msg/TFMessage"
TF_QOS = QoSSpec(depth=100)
TF_STATIC_QOS = QoSSpec(durability="transient_local", depth=1)
_ZERO = QosTime(0, 0)


def qos_profile(spec: QoSSpec) -> Qos:
    """rosbags Qos (what metadata.yaml records as offered_qos_profiles) for a QoSSpec."""
    return Qos(
        history=QosHistory.KEEP_LAST if spec.history == "keep_last" else QosHistory.KEEP_ALL,
        depth=spec.depth,
        reliability=QosReliability.RELIABLE if spec.reliability == "reliable" else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if spec.durability == "transient_local" else QosDurability.VOLATILE,
        deadline=_ZERO,
        lifespan=_ZERO,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_ZERO,
        avoid_ros_namespace_conventions=False,
    )


class _FlushingMcapWriter(McapWriter):
    """rosbags' MCAP storage writer that can push the open chunk to disk on demand."""

    def flush(self) -> None:
        if self.chunk.msgs:
            self.close_chunk()
        self.bio.flush()
        os.fsync(self.bio.fileno())


class _Rosbag2Writer(Writer):
    STORAGE_PLUGINS = {StoragePlugin.MCAP: _FlushingMcapWriter}


class EpisodeWriter:
    """Writes one episode. Use as a context manager; `close` also happens on errors, so what
    was recorded before an exception is kept."""

    def __init__(self, path: str | Path, metadata: EpisodeMetadata, flush_interval_s: float = 0.5) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path}: exists already; episodes are never overwritten")
        self.metadata = metadata.with_updates(status="recording")
        self.typestore = ros2_typestore(metadata.distro)
        self.factory = TypestoreFactory(self.typestore)
        self.flush_interval_s = flush_interval_s
        self.message_count = 0
        self._writer = _Rosbag2Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, Any] = {}
        self._router = TransformRouter()
        self._latched: dict[str, Any] = {}  # ROS topic -> the latched role message last written
        self._last_flush_ns: int | None = None  # log time of the last flush
        self._open = False

    def open(self) -> EpisodeWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.open()
        write_metadata(self.path, self.metadata)
        self._open = True
        return self

    def __enter__(self) -> EpisodeWriter:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, topic: TopicSpec, msg: Any, log_time_ns: int) -> None:
        """Record a project message on `topic` (all its roles, and the TF it implies)."""
        packet = topic.wire.to_ros(msg, self.factory, topic.options)
        for transform in packet.transforms:
            route = self._router.route(transform)
            if route is not None:
                static = route == "static"
                self.write_ros(
                    "/tf_static" if static else "/tf",
                    TF_TYPE,
                    tf_message(self.factory, [transform]),
                    log_time_ns,
                    TF_STATIC_QOS if static else TF_QOS,
                )
        roles = {role.name: role for role in topic.wire.roles}
        for name, ros_msg in packet.messages.items():
            ros_topic, role = topic.ros_topics[name], roles[name]
            if role.latched:  # once per change, as a latched publisher sends it
                if self._latched.get(ros_topic) == ros_msg:
                    continue
                self._latched[ros_topic] = ros_msg
            self.write_ros(ros_topic, role.ros_type, ros_msg, log_time_ns, TF_STATIC_QOS if role.latched else topic.qos)

    def write_ros(self, topic: str, typename: str, msg: Any, log_time_ns: int, qos: QoSSpec = QoSSpec()) -> None:
        """Record a ROS 2 message (a typestore message of `typename`)."""
        self.write_cdr(topic, typename, self.typestore.serialize_cdr(msg, typename), log_time_ns, qos)

    def write_cdr(self, topic: str, typename: str, data: bytes, log_time_ns: int, qos: QoSSpec = QoSSpec()) -> None:
        """Record an already serialised message."""
        if not self._open:
            raise BagError(f"{self.path}: writer is not open")
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(
                topic, typename, typestore=self.typestore, offered_qos_profiles=[qos_profile(qos)]
            )
            self._connections[topic] = connection
        elif connection.msgtype != typename:
            raise BagError(f"{self.path}: topic {topic} is recorded as {connection.msgtype}, got {typename}")
        self._writer.write(connection, int(log_time_ns), data)
        self.message_count += 1
        # Flushing by log time, not wall time, keeps a stepped-clock recording byte-identical.
        if self._last_flush_ns is None:
            self._last_flush_ns = int(log_time_ns)
        elif log_time_ns - self._last_flush_ns >= self.flush_interval_s * 1e9:
            self.flush()
            self._last_flush_ns = int(log_time_ns)

    def flush(self) -> None:
        """Make everything written so far durable (a complete MCAP chunk, fsynced)."""
        if self._open:
            self._writer.storage.flush()

    def close(self, **metadata_updates: Any) -> None:
        """Finish the bag (summary, metadata.yaml) and mark the episode complete."""
        if not self._open:
            return
        self._open = False
        self._writer.close()
        self.metadata = self.metadata.with_updates(status="complete", **metadata_updates)
        write_metadata(self.path, self.metadata)


MCAP_MAGIC = b"\x89MCAP0\r\n"  # at both ends of a complete MCAP file


def is_complete(path: str | Path) -> bool:
    """Whether the bag was closed (its metadata.yaml written); see `bag_problem` for more."""
    return (Path(path) / "metadata.yaml").is_file()


def _listed_files(path: Path) -> list[str]:
    """The storage files metadata.yaml lists (a BagError when it cannot be read)."""
    import yaml

    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        return [str(f) for f in info.get("relative_file_paths") or []]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise BagError(f"{path / 'metadata.yaml'}: not a rosbag2 metadata file ({type(err).__name__}: {err})") from None


def _cut_mcap(file: Path) -> str | None:
    """Why an MCAP file is not whole (missing magic at either end), or None."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        head = stream.read(len(MCAP_MAGIC))
        stream.seek(max(0, size - len(MCAP_MAGIC)))
        tail = stream.read()
    if head != MCAP_MAGIC:
        return f"{file} is not an MCAP file (no MCAP magic at its start, {size} bytes)"
    if tail != MCAP_MAGIC or size < 2 * len(MCAP_MAGIC):
        return f"{file} is cut short (no MCAP footer after {size} bytes)"
    return None


def bag_problem(path: str | Path) -> str | None:
    """What keeps the episode directory `path` from being read as a whole rosbag2 bag, in one
    line naming the file (and the fix), or None when it looks whole. Cheap: it reads the
    metadata and the ends of each storage file, not the messages."""
    path = Path(path)
    if not path.is_dir():
        return f"{path}: not a directory"
    mcaps = sorted(path.glob("*.mcap"))
    if not is_complete(path):
        if not mcaps:
            return f"{path}: not a rosbag2 episode (no metadata.yaml, no .mcap file)"
        return f"{path}: the recording was not closed (no metadata.yaml); `kil bag recover {path}` rebuilds it from its complete chunks"
    try:
        listed = _listed_files(path)
    except BagError as err:
        return str(err)
    for name in listed:
        file = path / name
        if not file.is_file():
            return f"{path}: {name}, listed in metadata.yaml, is missing"
        if file.suffix == ".mcap" and (why := _cut_mcap(file)):
            return f"{why}; `kil bag recover {path}` keeps every complete chunk" if "cut short" in why else why
    return None


def needs_recovery(path: str | Path) -> bool:
    """An unclosed recording, or a closed one whose MCAP file was cut short."""
    problem = bag_problem(path)
    return problem is not None and ("not closed" in problem or "cut short" in problem)


def recover_episode(path: str | Path) -> int:
    """Rebuild a complete bag from an episode whose writer was killed (no metadata.yaml) or
    whose MCAP file was cut short, keeping every message of its complete chunks; returns the
    number of messages recovered (0: nothing to recover). The damaged file is kept in the
    episode as ``*.mcap.partial`` (and a cut bag's metadata.yaml as ``metadata.yaml.cut``);
    kil_episode.yaml is marked ``recovered``."""
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    path = Path(path)
    if not needs_recovery(path):
        problem = bag_problem(path)
        if problem is not None:
            raise BagError(problem)
        return 0
    closed = is_complete(path)
    partials = [path / n for n in _listed_files(path) if n.endswith(".mcap")] if closed else sorted(path.glob("*.mcap"))
    if len(partials) != 1:
        raise BagError(f"{path}: expected one .mcap file to recover, found {len(partials)}")
    staging = path.parent / f".{path.name}.recovering"
    shutil.rmtree(staging, ignore_errors=True)
    rebuilt = staging / path.name
    schemas: dict[int, Schema] = {}
    channels: dict[int, Any] = {}
    store = get_typestore(Stores.EMPTY)
    count = 0
    writer = Writer(rebuilt, version=9, storage_plugin=StoragePlugin.MCAP)
    with partials[0].open("rb") as stream, writer:
        try:
            for record in StreamReader(stream, skip_magic=False).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                    store.register(get_types_from_msg(record.data.decode(), record.name))
                elif isinstance(record, Channel):
                    schema = schemas[record.schema_id]
                    channels[record.id] = writer.add_connection(
                        record.topic,
                        schema.name,
                        msgdef=schema.data.decode(),
                        rihs01=store.hash_rihs01(schema.name),
                        serialization_format=record.message_encoding,
                        offered_qos_profiles=parse_qos(record.metadata.get("offered_qos_profiles", "[]")),
                    )
                elif isinstance(record, Message) and record.channel_id in channels:
                    writer.write(channels[record.channel_id], record.log_time, record.data)
                    count += 1
        except Exception as err:  # the first torn record ends what was flushed
            log.info("%s: partial MCAP ends after %d messages (%s)", path, count, type(err).__name__)
    os.replace(partials[0], rebuilt / f"{partials[0].name}.partial")
    if closed:
        os.replace(path / "metadata.yaml", rebuilt / "metadata.yaml.cut")
    metadata = read_metadata(path)
    for leftover in path.iterdir():
        if leftover.name != METADATA_FILE:
            os.replace(leftover, rebuilt / leftover.name)
    if metadata is not None:
        write_metadata(rebuilt, metadata.with_updates(status="recovered"))
        (path / METADATA_FILE).unlink()
    path.rmdir()
    os.replace(rebuilt, path)
    staging.rmdir()
    return count


def _hold_roles(spec: TopicSpec, by_role: dict[str, list[tuple[int, Any]]], max_age_ns: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(log time, role messages) for each message of the spec's first role that has, for
    every other role, a message stamped at most `max_age_ns` before it (or HELD_LEAD_NS
    after): the newest one that can complete it (WireFormat.completes), as a live node's
    held roles (wire.pick_held), but knowing the whole recording."""
    roles = [r.name for r in spec.wire.input_roles()]
    others = {}
    for role in roles[1:]:
        usable = [(t, m) for t, m in by_role.get(role, []) if spec.wire.completes(role, m, spec.options)]
        history = sorted(usable, key=lambda item: _header_ns(item[1]))
        others[role] = ([_header_ns(m) for _, m in history], [m for _, m in history])
    for log_time, msg in by_role.get(roles[0], []):
        stamp = _header_ns(msg)
        group = {roles[0]: msg}
        for role, (stamps, msgs) in others.items():
            i = bisect.bisect_right(stamps, stamp + HELD_LEAD_NS) - 1
            if i < 0 or stamp - stamps[i] > max_age_ns:
                break
            group[role] = msgs[i]
        else:
            yield log_time, group


def _header_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _newest_before(history: list[tuple[int, Any]], log_time: int) -> Any:
    """The newest latched message received by `log_time`; the first one for messages before
    it (a recorder gets the latched message when it subscribes, possibly just after)."""
    chosen = history[0][1]
    for t, msg in history:
        if t > log_time:
            break
        chosen = msg
    return chosen


class EpisodeReader:
    """Reads an episode (written here or by ``ros2 bag record -s mcap``) with rosbags' AnyReader.

    An episode left incomplete by a killed writer is recovered first (unless `recover` is
    False, which makes that a `BagError`).
    """

    def __init__(self, path: str | Path, recover: bool = True) -> None:
        self.path = Path(path)
        problem = bag_problem(self.path)
        if problem is not None and "not closed" in problem and recover:
            count = recover_episode(self.path)
            log.warning("%s: recovered an unclosed recording (%d messages)", self.path, count)
        elif problem is not None:
            raise BagError(problem)
        self.metadata = read_metadata(self.path)
        self.typestore = ros2_typestore(self.metadata.distro if self.metadata else "jazzy")
        self.tf = TransformBuffer()  # filled by `messages`

    @contextmanager
    def _reader(self) -> Iterator[AnyReader]:
        """rosbags' reader; whatever it cannot read becomes a one-line BagError naming the bag."""
        try:
            with AnyReader([self.path], default_typestore=self.typestore) as reader:
                yield reader
        except (BagError, GeneratorExit):
            raise
        except Exception as err:  # noqa: BLE001 - rosbags' and mcap's many error types, for a damaged file
            raise BagError(f"{self.path}: cannot read the bag ({type(err).__name__}: {err})") from err

    def topics(self) -> dict[str, tuple[str, int]]:
        """ROS topic -> (message type, message count)."""
        with self._reader() as reader:
            return {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}

    def ros_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, Any]]:
        """(topic, type, log time ns, deserialised ROS message) in log-time order."""
        wanted = None if topics is None else set(topics)
        with self._reader() as reader:
            connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
            for connection, log_time, raw in reader.messages(connections=connections):
                yield connection.topic, connection.msgtype, log_time, reader.deserialize(raw, connection.msgtype)

    def messages(self, topics: Iterable[TopicSpec], hold: dict[str, float] | None = None) -> Iterator[tuple[str, int, Any]]:
        """(graph topic, log time ns, project message) for each complete message on `topics`,
        assembled from their ROS role topics exactly as a live subscriber would, in log-time
        order. `hold` maps graph topics whose roles come from independent publishers (a
        robot's EE pose and a joint_state_publisher's /joint_states, at their own rates) to a
        maximum age in seconds: each message of the first role is completed with the newest
        message of each other role stamped at or before it, at most that old; those topics
        come after all the others."""
        specs = list(topics)
        hold = hold or {}
        available = self.topics()
        self.tf = TransformBuffer()  # the bag's /tf_static and /tf, kept for the caller
        role_of: dict[str, tuple[TopicSpec, Any]] = {}
        for spec in specs:
            for role in spec.wire.input_roles():
                ros_topic = spec.ros_topics[role.name]
                if ros_topic not in available:
                    raise BagError(f"{self.path}: topic {ros_topic} ({spec.name} {role.name or 'message'}) is not in the bag")
                if available[ros_topic][0] != role.ros_type:
                    raise BagError(f"{self.path}: topic {ros_topic} has type {available[ros_topic][0]}, {spec.name} needs {role.ros_type}")
                role_of[ros_topic] = (spec, role)
        tf = self.tf
        tf_topics = {"/tf_static", "/tf"} & set(available)
        for name, _, _, msg in self.ros_messages(tf_topics) if tf_topics else ():  # (no topics would read them all)
            for transform in msg.transforms:
                stamp, parent, child, T = transform_from_ros(transform)
                tf.set_transform(parent, child, T, stamp, static=name == "/tf_static")
        latched = self._latched_messages(specs, available)
        assemblers = {spec.name: RoleAssembler(spec.wire) for spec in specs if spec.name not in hold}
        held: dict[str, dict[str, list]] = {spec.name: {} for spec in specs if spec.name in hold}

        def convert(spec: TopicSpec, ros_topic: str, group: dict[str, Any], log_time: int) -> Any:
            for name, history in latched.get(spec.name, {}).items():
                group[name] = _newest_before(history, log_time)
            try:
                return spec.wire.from_ros(group, spec.options, tf.lookup, log_time)
            except (MessageError, TransformError) as err:
                raise BagError(f"{self.path}: {ros_topic}: {err}") from err

        for ros_topic, _, log_time, msg in self.ros_messages(role_of):
            spec, role = role_of[ros_topic]
            if spec.name in held:
                held[spec.name].setdefault(role.name, []).append((log_time, msg))
                continue
            group = assemblers[spec.name].add(role.name, msg)
            if group is not None:
                yield spec.name, log_time, convert(spec, ros_topic, group, log_time)
        for spec in specs:
            if spec.name in held:
                for log_time, group in _hold_roles(spec, held[spec.name], int(hold[spec.name] * 1e9)):
                    yield spec.name, log_time, convert(spec, spec.ros_topics[spec.wire.input_roles()[0].name], group, log_time)

    def _latched_messages(self, specs: list[TopicSpec], available: dict[str, tuple[str, int]]) -> dict[str, dict[str, list]]:
        """graph topic -> latched role -> [(log time, message)] of those in the bag."""
        wanted = {spec.ros_topics[r.name]: (spec.name, r.name) for spec in specs for r in spec.wire.latched_roles()}
        wanted = {t: v for t, v in wanted.items() if t in available}
        found: dict[str, dict[str, list]] = {}
        for ros_topic, _, log_time, msg in self.ros_messages(wanted) if wanted else ():
            topic, role = wanted[ros_topic]
            found.setdefault(topic, {}).setdefault(role, []).append((log_time, msg))
        return found
