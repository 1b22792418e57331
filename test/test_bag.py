"""rosbag2 episodes: written with rosbags, read back by AnyReader, crash-safe, and read the
same as bags in the layout `ros2 bag record -s mcap` produces."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import STAMP, assert_messages_equal, sample_of_every_type
from rosbags.highlevel import AnyReader

from kil.converters.factory import TypestoreFactory
from kil.converters.pose import tf_message
from kil.converters.typestore import ros2_typestore
from kil.data.bag import EpisodeReader, EpisodeWriter, is_complete, recover_episode
from kil.data.episode import EpisodeMetadata, read_metadata
from kil.errors import BagError
from kil.graph import load_graph

ALL_TYPES = Path(__file__).parent / "data" / "all_types_graph.yaml"
# Topics of all_types_graph.yaml, in the order they are written.
ALL_TYPES_TOPICS = ("/camera", "/kil/features", "/kil/keypoints", "/kil/annotated", "/robot", "/kil/chunk", "/kil/pose_target", "/kil/gripper_command",
                    "/sim/progress")
HEADERLESS = ("/kil/gripper_command", "/sim/progress")
MS = 1_000_000


def episode_messages(frames: int = 3):
    """[(graph topic, log time, message)] for a short episode of every type."""
    rng = np.random.default_rng(11)
    types = {name: topic.type.__name__ for name, topic in load_graph(ALL_TYPES).topics.items()}
    out = []
    for k in range(frames):
        shift = k * 100 * MS
        samples = sample_of_every_type(rng)
        for topic, msg in ((t, samples[types[t]]) for t in ALL_TYPES_TOPICS):
            log_time = STAMP + shift + 5 * MS
            # control_msgs/GripperCommand and Float32 have no header: their stamp is the time they are logged.
            stamp = log_time if topic in HEADERLESS else STAMP + shift
            out.append((topic, log_time, dataclasses.replace(msg, stamp_ns=stamp)))
    return out


def write_episode(path: Path, distro: str = "jazzy"):
    graph = load_graph(ALL_TYPES)
    messages = episode_messages()
    with EpisodeWriter(path, EpisodeMetadata(task="pick_place", rig="franka", seed=4, distro=distro)) as writer:
        for topic, log_time, msg in messages:
            writer.write(graph.topics[topic], msg, log_time)
        writer.close(success=True)
    return graph, messages


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_written_episode_reads_back_with_anyreader(tmp_path, distro):
    path = tmp_path / "episode_0000"
    graph, messages = write_episode(path, distro)
    metadata = read_metadata(path)
    assert (metadata.task, metadata.rig, metadata.seed, metadata.success, metadata.status) == ("pick_place", "franka", 4, True, "complete")
    with AnyReader([path]) as reader:  # a separate reader, with the types stored in the bag
        topics = {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
        assert topics == {
            "/zed/zed_node/rgb/color/rect/image": ("sensor_msgs/msg/Image", 3),
            "/zed/zed_node/depth/depth_registered": ("sensor_msgs/msg/Image", 3),
            "/zed/zed_node/rgb/color/rect/camera_info": ("sensor_msgs/msg/CameraInfo", 3),
            "/tf_static": ("tf2_msgs/msg/TFMessage", 1),
            "/kil/features": ("sensor_msgs/msg/Image", 3),
            "/kil/keypoints": ("sensor_msgs/msg/PointCloud2", 3),
            "/kil/keypoints/markers": ("visualization_msgs/msg/MarkerArray", 3),
            "/kil/keypoints/names": ("std_msgs/msg/String", 1),  # latched: written once per change
            "/kil/annotated": ("sensor_msgs/msg/Image", 3),
            "/franka_robot_state_broadcaster/current_pose": ("geometry_msgs/msg/PoseStamped", 3),
            "/joint_states": ("sensor_msgs/msg/JointState", 3),
            "/kil/chunk": ("trajectory_msgs/msg/MultiDOFJointTrajectory", 3),
            "/kil/chunk/path": ("nav_msgs/msg/Path", 3),
            "/kil/pose_target": ("geometry_msgs/msg/PoseStamped", 3),
            "/kil/gripper_command": ("control_msgs/msg/GripperCommand", 3),
            "/sim/progress": ("std_msgs/msg/Float32", 3),
        }
        images = [
            reader.deserialize(raw, c.msgtype)
            for c, _, raw in reader.messages([c for c in reader.connections if c.topic.endswith("rect/image")])
        ]
        qos = next(c for c in reader.connections if c.topic == "/kil/features").ext.offered_qos_profiles[0]
        assert qos.reliability.name == "BEST_EFFORT" and qos.depth == 2
    rgbd = [m for t, _, m in messages if t == "/camera"]
    assert [img.encoding for img in images] == ["bgra8"] * 3
    np.testing.assert_array_equal(np.asarray(images[1].data).reshape(12, 16, 4)[..., 2::-1], rgbd[1].rgb)
    read = list(EpisodeReader(path).messages(graph.topics.values()))
    assert [(t, log) for t, log, _ in read] == [(t, log) for t, log, _ in messages]
    for (_, _, expected), (_, _, got) in zip(messages, read):
        assert_messages_equal(got, expected)


def test_episode_is_never_overwritten_and_reader_checks_types(tmp_path):
    path = tmp_path / "episode"
    graph, _ = write_episode(path)
    with pytest.raises(BagError, match="exists already"):
        EpisodeWriter(path, EpisodeMetadata(task="t", rig="r"))
    wrong = dataclasses.replace(graph.topics["/kil/pose_target"], ros_topics={"": "/joint_states"})
    with pytest.raises(BagError, match="topic /joint_states has type sensor_msgs/msg/JointState, /kil/pose_target needs geometry_msgs/msg/PoseStamped"):
        list(EpisodeReader(path).messages([wrong]))
    absent = dataclasses.replace(graph.topics["/kil/pose_target"], ros_topics={"": "/nowhere"})
    with pytest.raises(BagError, match="topic /nowhere .* is not in the bag"):
        list(EpisodeReader(path).messages([absent]))


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from kil.data.bag import EpisodeWriter
    from kil.data.episode import EpisodeMetadata
    from kil.graph import QoSSpec
    from kil.converters.typestore import ros2_typestore

    store = ros2_typestore("jazzy")
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    String = store.types["std_msgs/msg/String"]
    writer = EpisodeWriter(sys.argv[1], EpisodeMetadata(task="t", rig="r"), flush_interval_s=3600).open()
    for i in range(1000000):
        writer.write_ros("/counter", "std_msgs/msg/String", String(data=f"message {i:06d} " + "x" * 500), 10**18 + i)
        if i + 1 in (150, 400):
            writer.flush()
            print(i + 1, flush=True)
        if i + 1 == 450:
            time.sleep(600)
    """
)


def test_killed_writer_leaves_every_flushed_message(tmp_path):
    path = tmp_path / "episode_killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "150"
        assert proc.stdout.readline().strip() == "400"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not is_complete(path) and read_metadata(path).status == "recording"
    with pytest.raises(Exception):
        AnyReader([path]).open()  # no metadata.yaml, no MCAP summary: unreadable as is
    with pytest.raises(BagError, match="recording was not closed"):
        EpisodeReader(path, recover=False)
    recovered = recover_episode(path)
    assert recovered >= 400
    with AnyReader([path]) as reader:
        texts = [reader.deserialize(raw, c.msgtype).data for c, _, raw in reader.messages()]
    assert len(texts) == recovered
    assert texts == [f"message {i:06d} " + "x" * 500 for i in range(recovered)]
    assert read_metadata(path).status == "recovered"
    assert len(list(path.glob("*.mcap.partial"))) == 1
    assert recover_episode(path) == 0  # already complete


def test_killed_recorder_in_a_running_graph(tmp_path):
    """`kil run` with the recorder on the real-time clock, killed mid-episode."""
    episode = tmp_path / "episode_0000"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kil", "run", "--graph", "synthetic_record", "--clock", "realtime",
         "--set", f"recorder.path={episode}", "--set", "recorder.flush_interval_s=0.2",
         "--set", "rig.width=64", "--set", "rig.height=48"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            mcap = list(episode.glob("*.mcap"))
            if mcap and mcap[0].stat().st_size > 200_000:  # a few flushed chunks
                break
            time.sleep(0.05)
        assert proc.poll() is None, "kil run ended before it could be killed"
    finally:
        proc.kill()
        proc.wait()
    graph = load_graph(Path(__file__).parents[1] / "config" / "graphs" / "synthetic_record.yaml")
    messages = list(EpisodeReader(episode).messages(graph.topics.values()))  # recovers first
    counts = {t: sum(1 for name, _, _ in messages if name == t) for t in graph.topics}
    assert counts["/camera"] > 0 and counts["/robot_state"] > counts["/camera"]
    assert read_metadata(episode).status == "recovered"


def _ros2_record_style_bag(path: Path, messages, distro: str) -> None:
    """A bag laid out as rosbag2_storage_mcap writes it during `ros2 bag record -s mcap`:
    `<name>_0.mcap` with profile ros2, ros2msg schemas, per-channel offered_qos_profiles
    and topic_type_hash, a `rosbag2` metadata record, and the distro's metadata.yaml
    (Humble: version 5, QoS as a YAML string; Jazzy: version 9). The docker ROS tests
    compare against a bag that `ros2 bag record` itself writes."""
    from mcap.writer import CompressionType
    from mcap.writer import Writer as McapWriter

    store = ros2_typestore(distro)
    factory = TypestoreFactory(store)
    graph = load_graph(ALL_TYPES)
    path.mkdir()
    records = []  # (topic, type, log time, cdr)
    sent = set()
    for topic, log_time, msg in messages:
        spec = graph.topics[topic]
        packet = spec.wire.to_ros(msg, factory, spec.options)
        if packet.transforms and "/tf_static" not in sent:
            sent.add("/tf_static")
            records.append(("/tf_static", "tf2_msgs/msg/TFMessage", log_time, store.serialize_cdr(tf_message(factory, list(packet.transforms)), "tf2_msgs/msg/TFMessage")))
        types = {r.name: r.ros_type for r in spec.wire.roles}
        for role, ros_msg in packet.messages.items():
            records.append((spec.ros_topics[role], types[role], log_time, store.serialize_cdr(ros_msg, types[role])))
    qos_v8 = "- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: 2147483647\n    nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n  avoid_ros_namespace_conventions: false"
    file_name = f"{path.name}_0.mcap"
    with open(path / file_name, "wb") as stream:
        writer = McapWriter(stream, compression=CompressionType.NONE)
        writer.start(profile="ros2", library="libmcap 1.4.0")
        schemas, channels, counts = {}, {}, {}
        for topic, typename, log_time, data in records:
            if typename not in schemas:
                msgdef, _ = store.generate_msgdef(typename, ros_version=2)
                schemas[typename] = writer.register_schema(typename, "ros2msg", msgdef.encode())
            if topic not in channels:
                meta = {"offered_qos_profiles": qos_v8}
                if distro == "jazzy":
                    meta["topic_type_hash"] = store.hash_rihs01(typename)
                channels[topic] = writer.register_channel(topic, "cdr", schemas[typename], meta)
            counts[topic] = counts.get(topic, 0) + 1
            writer.add_message(channels[topic], log_time=log_time, data=data, publish_time=log_time, sequence=counts[topic])
        start, end = records[0][2], records[-1][2]
        topics = [
            {
                "topic_metadata": {
                    "name": topic, "type": next(r[1] for r in records if r[0] == topic), "serialization_format": "cdr",
                    **({"offered_qos_profiles": qos_v8} if distro == "humble" else {
                        "offered_qos_profiles": yaml.safe_load(qos_v8),
                        "type_description_hash": store.hash_rihs01(next(r[1] for r in records if r[0] == topic)),
                    }),
                },
                "message_count": counts[topic],
            }
            for topic in channels
        ]
        info = {
            "version": 5 if distro == "humble" else 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": len(records),
            "topics_with_message_count": topics,
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [file_name],
            "files": [{"path": file_name, "starting_time": {"nanoseconds_since_epoch": start}, "duration": {"nanoseconds": end - start}, "message_count": len(records)}],
            **({} if distro == "humble" else {"custom_data": None, "ros_distro": "jazzy"}),
        }
        writer.add_metadata("rosbag2", {"serialized_metadata": yaml.safe_dump(info)})
        writer.finish()
    (path / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}))


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_ros2_recorded_bag_reads_the_same_as_ours(tmp_path, distro):
    ours = tmp_path / "ours"
    graph, messages = write_episode(ours, distro)
    theirs = tmp_path / "recorded"
    _ros2_record_style_bag(theirs, messages, distro)
    ours_read = list(EpisodeReader(ours).messages(graph.topics.values()))
    theirs_read = list(EpisodeReader(theirs).messages(graph.topics.values()))
    assert EpisodeReader(theirs).metadata is None  # no kil metadata: a plain ROS recording
    assert len(ours_read) == len(theirs_read) == len(messages)
    for (t1, log1, m1), (t2, log2, m2) in zip(ours_read, theirs_read):
        assert (t1, log1) == (t2, log2)
        assert_messages_equal(m1, m2)
