"""Converters against the real ROS 2 message definitions (rosbags Humble and Jazzy typestores).

Every produced message is serialised to CDR and deserialised again before it is converted
back, so a passing round trip means the message is valid for that distro.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    BASE,
    OPTICAL,
    STAMP,
    assert_messages_equal,
    camera_pose,
    sample_chunk,
    sample_features,
    sample_gripper_command,
    sample_keypoints,
    sample_of_every_type,
    sample_pose_command,
    sample_rgbd,
    sample_state,
)

from kil.converters import image, keypoints, pose, trajectory
from kil.converters.factory import TypestoreFactory, header_msg
from kil.converters.typestore import DISTROS, ros2_typestore
from kil.converters.wire import WIRE_FORMATS, RoleAssembler, TransformRouter, pick_held
from kil.errors import MessageError
from kil.msgs import RGBD


@pytest.fixture(params=DISTROS)
def store(request):
    return ros2_typestore(request.param)


@pytest.fixture
def factory(store):
    return TypestoreFactory(store)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def cdr(store, msg):
    """Serialise to CDR with the distro's definition and read it back."""
    typename = msg.__msgtype__
    data = store.serialize_cdr(msg, typename)
    assert len(data) > 0
    return store.deserialize_cdr(data, typename)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "bgra8", "rgba8"])
def test_colour_image_round_trip(factory, store, rng, encoding):
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    msg = cdr(store, image.rgb_to_image(factory, rgb, STAMP, OPTICAL, encoding))
    assert msg.encoding == encoding and msg.height == 6 and msg.width == 9
    assert msg.step == 9 * (4 if encoding.endswith("a8") else 3)
    np.testing.assert_array_equal(image.image_to_rgb(msg), rgb)


def test_bgr_bytes_are_in_bgr_order(factory):
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    assert list(image.rgb_to_image(factory, rgb, STAMP, OPTICAL, "bgra8").data) == [30, 20, 10, 255]


def test_mono8_is_luma_replicated(factory, store):
    rgb = np.full((2, 3, 3), 100, np.uint8)
    msg = cdr(store, image.rgb_to_image(factory, rgb, STAMP, OPTICAL, "mono8"))
    assert msg.step == 3
    np.testing.assert_array_equal(image.image_to_rgb(msg), rgb)


def test_padded_rows_and_big_endian_depth(factory):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    padded = np.zeros((3, 4 * 4 + 8), np.uint8)
    padded[:, :16] = depth.astype(">f4").view(np.uint8).reshape(3, 16)
    msg = factory.new(
        "sensor_msgs/msg/Image", header=header_msg(factory, STAMP, OPTICAL), height=3, width=4,
        encoding="32FC1", is_bigendian=1, step=24, data=padded.reshape(-1),
    )
    np.testing.assert_array_equal(image.image_to_depth(msg), depth)


def test_depth_32fc1_round_trip_keeps_invalid_values(factory, store):
    depth = np.array([[0.5, np.nan], [np.inf, -np.inf]], np.float32)
    back = image.image_to_depth(cdr(store, image.depth_to_image(factory, depth, STAMP, OPTICAL)))
    np.testing.assert_array_equal(back, depth)


def test_depth_16uc1_is_millimetres_with_zero_invalid(factory, store):
    depth = np.array([[0.5, np.nan], [1.2344, 0.0]], np.float32)
    msg = cdr(store, image.depth_to_image(factory, depth, STAMP, OPTICAL, "16UC1"))
    assert msg.encoding == "16UC1" and msg.step == 4
    assert image._pixels(msg, np.uint16, 1)[..., 0].tolist() == [[500, 0], [1234, 0]]
    np.testing.assert_allclose(image.image_to_depth(msg), [[0.5, np.nan], [1.234, np.nan]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoding", ["yuv422", "16UC1", "8UC3", "bayer_rggb8"])
def test_wrong_colour_encoding_is_a_one_line_error(factory, encoding):
    msg = factory.new("sensor_msgs/msg/Image", height=1, width=1, encoding=encoding, step=3, data=np.zeros(3, np.uint8))
    with pytest.raises(MessageError, match=r"^Image\.encoding: unsupported colour encoding") as info:
        image.image_to_rgb(msg)
    assert "\n" not in str(info.value) and repr(encoding) in str(info.value)


def test_wrong_depth_and_feature_encodings(factory):
    msg = factory.new("sensor_msgs/msg/Image", height=1, width=1, encoding="rgb8", step=3, data=np.zeros(3, np.uint8))
    with pytest.raises(MessageError, match=r"^Image\.encoding: unsupported depth encoding 'rgb8'"):
        image.image_to_depth(msg)
    with pytest.raises(MessageError, match=r"^Image\.encoding: expected 32FC<C>"):
        image.image_to_features(msg)


def test_truncated_image_data_is_an_error(factory):
    msg = factory.new("sensor_msgs/msg/Image", height=2, width=2, encoding="rgb8", step=6, data=np.zeros(7, np.uint8))
    with pytest.raises(MessageError, match=r"^Image\.data: 7 bytes, expected step \* height = 12"):
        image.image_to_rgb(msg)


def test_feature_image_round_trip(factory, store, rng):
    features = sample_features(rng, channels=384)
    msg = cdr(store, image.features_to_image(factory, features))
    assert msg.encoding == "32FC384" and (msg.height, msg.width) == (3, 5) and msg.step == 5 * 384 * 4
    assert_messages_equal(image.image_to_features(msg), features)


def test_camera_info_round_trip(factory, store, rng):
    rgbd = sample_rgbd(rng)
    msg = cdr(store, image.camera_info_to_ros(factory, STAMP, OPTICAL, rgbd.K, rgbd.size, rgbd.distortion, "plumb_bob"))
    K, size, distortion, model = image.camera_info_from_ros(msg)
    np.testing.assert_array_equal(K, rgbd.K)
    np.testing.assert_array_equal(np.asarray(msg.p).reshape(3, 4)[:, :3], rgbd.K)
    assert size == rgbd.size and model == "plumb_bob"
    np.testing.assert_array_equal(distortion, rgbd.distortion)


def test_uncalibrated_camera_info_is_an_error(factory):
    with pytest.raises(MessageError, match=r"^CameraInfo\.k: all zeros"):
        image.camera_info_from_ros(factory.new("sensor_msgs/msg/CameraInfo"))


@pytest.mark.parametrize("rgb_encoding", ["rgb8", "bgra8"])
@pytest.mark.parametrize("depth_encoding", ["32FC1", "16UC1"])
def test_rgbd_round_trip(factory, store, rng, rgb_encoding, depth_encoding):
    rgbd = sample_rgbd(rng)
    msgs = [cdr(store, m) for m in image.rgbd_to_ros(factory, rgbd, rgb_encoding, depth_encoding)]
    back = image.rgbd_from_ros(*msgs, BASE, camera_pose())
    assert (back.stamp_ns, back.frame_id, back.base_frame_id) == (STAMP, OPTICAL, BASE)
    np.testing.assert_array_equal(back.rgb, rgbd.rgb)
    if depth_encoding == "32FC1":
        np.testing.assert_array_equal(back.depth, rgbd.depth)
    else:
        valid = np.isfinite(rgbd.depth)
        np.testing.assert_allclose(back.depth[valid], rgbd.depth[valid], atol=5e-4)
        assert np.all(np.isnan(back.depth[~valid]))
    np.testing.assert_array_equal(back.K, rgbd.K)


def test_unregistered_depth_is_rejected(factory, rng):
    rgbd = sample_rgbd(rng)
    rgb_msg, depth_msg, info = image.rgbd_to_ros(factory, rgbd)
    small = image.depth_to_image(factory, rgbd.depth[:6, :8], STAMP, OPTICAL)
    with pytest.raises(MessageError, match="depth must be registered"):
        image.rgbd_from_ros(rgb_msg, small, info, BASE, camera_pose())
    other_frame = image.depth_to_image(factory, rgbd.depth, STAMP, "zed_right_camera_frame_optical")
    with pytest.raises(MessageError, match=r"^depth Image\.header\.frame_id"):
        image.rgbd_from_ros(rgb_msg, other_frame, info, BASE, camera_pose())


def test_keypoints_point_cloud_round_trip(factory, store, rng):
    kps = sample_keypoints(rng)
    msg = cdr(store, keypoints.keypoints_to_ros(factory, kps))
    assert [f.name for f in msg.fields] == ["x", "y", "z", "u", "v", "score", "instance", "index", "visible", "layout"]
    assert (msg.height, msg.width, msg.point_step, msg.is_dense) == (1, 5, 40, False)
    assert_messages_equal(keypoints.keypoints_from_ros(msg, kps.names), kps)


def test_keypoint_names_travel_latched_beside_the_cloud(factory, store, rng):
    """The wire format's `names` role carries the names; the cloud's layout field ties each
    cloud to them, so a cloud is never read without names or with another layout's."""
    from kil.converters.wire import wire_format
    from kil.msgs import Keypoints

    kps = sample_keypoints(rng)
    wire = wire_format(Keypoints)
    assert [r.name for r in wire.latched_roles()] == ["names"] and "names" not in [r.name for r in wire.input_roles()]
    packet = wire.to_ros(kps, factory, wire.options_class())
    names = cdr(store, packet.messages["names"])
    assert keypoints.names_from_text(names.data) == kps.names
    cloud = cdr(store, packet.messages[""])
    assert_messages_equal(wire.from_ros({"": cloud, "names": names}, wire.options_class(), None, STAMP), kps)
    with pytest.raises(MessageError, match="keypoint names not received yet"):
        wire.from_ros({"": cloud}, wire.options_class(), None, STAMP)
    other = factory.new("std_msgs/msg/String", data=keypoints.names_text([n + "_x" for n in kps.names]))
    with pytest.raises(MessageError, match="published with other keypoint names"):
        wire.from_ros({"": cloud, "names": other}, wire.options_class(), None, STAMP)
    with pytest.raises(MessageError, match="expected a JSON list of strings"):
        keypoints.names_from_text("block/top")
    # names named by the graph (a publisher that sends none) serve as well
    assert wire.from_ros({"": cloud}, wire.options_class(names=kps.names), None, STAMP).names == kps.names


def test_keypoint_similarity_vectors_travel_as_extra_fields(factory, store, rng):
    kps = sample_keypoints(rng, similarity=True)
    msg = cdr(store, keypoints.keypoints_to_ros(factory, kps))
    assert [f.name for f in msg.fields][10:] == ["s0", "s1", "s2", "s3", "s4"]
    assert msg.point_step == 40 + 4 * 5
    back = keypoints.keypoints_from_ros(msg, kps.names)
    assert_messages_equal(back, kps)
    assert back.similarity[1, 3] == kps.similarity[1, 3]


def test_keypoints_cloud_with_other_layout_reads_by_field_name(factory):
    fields = [("visible", 0, 2), ("index", 1, 6), ("x", 8, 8), ("y", 16, 8), ("z", 24, 8), ("u", 32, 7), ("v", 36, 7), ("score", 40, 7)]
    dtype = keypoints._cloud_dtype(fields, 44)
    points = np.zeros(2, dtype)
    points["visible"], points["index"] = [1, 0], [1, 0]
    points["x"], points["y"], points["z"] = [0.1, np.nan], [0.2, np.nan], [0.3, np.nan]
    points["u"], points["v"], points["score"] = [10, 20], [11, 21], [0.9, 0.1]
    msg = factory.new(
        "sensor_msgs/msg/PointCloud2",
        header=header_msg(factory, STAMP, BASE), height=1, width=2, point_step=44, row_step=88,
        fields=[factory.new("sensor_msgs/msg/PointField", name=n, offset=o, datatype=d, count=1) for n, o, d in fields],
        data=points.view(np.uint8),
    )
    kps = keypoints.keypoints_from_ros(msg, ("handle", "rim"))
    assert kps.names == ("rim", "handle")
    np.testing.assert_allclose(kps.xyz[0], [0.1, 0.2, 0.3], rtol=1e-6)
    assert kps.visible.tolist() == [True, False] and kps.instance.tolist() == [0, 0]


def test_keypoint_cloud_missing_fields_and_bad_index(factory, rng):
    msg = keypoints.keypoints_to_ros(factory, sample_keypoints(rng))
    msg.fields = [f for f in msg.fields if f.name != "layout"]  # another publisher's cloud
    with pytest.raises(MessageError, match="outside the 2 keypoint names"):
        keypoints.keypoints_from_ros(msg, ("a", "b"))
    assert keypoints.keypoints_from_ros(msg).names == ("kp0", "kp1", "kp2", "kp3", "kp4")  # no names: by index
    msg.fields = [f for f in msg.fields if f.name != "score"]
    with pytest.raises(MessageError, match=r"^PointCloud2\.fields: keypoint cloud lacks \['score'\]"):
        keypoints.keypoints_from_ros(msg)


def test_keypoint_markers(factory, store, rng):
    kps = sample_keypoints(rng)
    msg = cdr(store, keypoints.keypoints_to_markers(factory, kps))
    markers = list(msg.markers)
    assert markers[0].action == store.types["visualization_msgs/msg/Marker"].DELETEALL
    spheres = markers[1]
    assert spheres.type == store.types["visualization_msgs/msg/Marker"].SPHERE_LIST
    assert len(spheres.points) == len(spheres.colors) == int(kps.visible.sum()) == 3
    np.testing.assert_allclose([[p.x, p.y, p.z] for p in spheres.points], kps.xyz[kps.visible], rtol=1e-6)
    labels = markers[2:]
    assert all(m.type == store.types["visualization_msgs/msg/Marker"].TEXT_VIEW_FACING for m in labels)
    assert [m.text for m in labels] == [n for n, v in zip(kps.names, kps.visible) if v]
    assert len({m.id for m in markers[1:]}) == len(markers) - 1
    assert all(m.header.frame_id == BASE for m in markers)


def test_pose_command_round_trip(factory, store, rng):
    command = sample_pose_command(rng)
    msg = cdr(store, pose.pose_command_to_ros(factory, command))
    assert msg.header.frame_id == BASE
    assert_messages_equal(pose.pose_command_from_ros(msg), command)


def test_robot_state_round_trip(factory, store, rng):
    state = sample_state(rng)
    ee, joints = (cdr(store, m) for m in pose.robot_state_to_ros(factory, state))
    assert list(joints.name)[-1] == "gripper" and len(joints.position) == 8
    assert_messages_equal(pose.robot_state_from_ros(ee, joints), state)


def test_franka_and_robotiq_gripper_joints(factory, rng):
    state = sample_state(rng)
    ee, _ = pose.robot_state_to_ros(factory, state)
    franka = factory.new("sensor_msgs/msg/JointState", name=["panda_joint1", "panda_finger_joint1", "panda_finger_joint2"], position=[0.3, 0.02, 0.02])
    parsed = pose.robot_state_from_ros(ee, franka, pose.GripperJoints(("panda_finger_joint1", "panda_finger_joint2")))
    assert parsed.gripper == pytest.approx(0.04) and parsed.joint_names == ("panda_joint1",)
    robotiq = factory.new("sensor_msgs/msg/JointState", name=["robotiq_85_left_knuckle_joint"], position=[0.4])
    half_closed = pose.robot_state_from_ros(ee, robotiq, pose.GripperJoints(("robotiq_85_left_knuckle_joint",), -0.085 / 0.8, 0.085))
    assert half_closed.gripper == pytest.approx(0.0425)
    with pytest.raises(MessageError, match=r"^JointState\.name: gripper joint\(s\) \['gripper'\] missing"):
        pose.robot_state_from_ros(ee, robotiq)


def test_transform_round_trip(factory, store):
    msg = cdr(store, pose.transform_to_ros(factory, STAMP, BASE, OPTICAL, camera_pose()))
    stamp, parent, child, T = pose.transform_from_ros(msg)
    assert (stamp, parent, child) == (STAMP, BASE, OPTICAL)
    np.testing.assert_allclose(T, camera_pose(), atol=1e-12)
    tf = cdr(store, pose.tf_message(factory, [msg]))
    assert tf.transforms[0].child_frame_id == OPTICAL


def test_gripper_command_uses_registered_control_msgs(factory, store):
    command = sample_gripper_command()
    msg = cdr(store, pose.gripper_command_to_ros(factory, command))
    assert msg.__msgtype__ == "control_msgs/msg/GripperCommand"
    assert_messages_equal(pose.gripper_command_from_ros(msg, STAMP), command)


def test_action_chunk_round_trip(factory, store, rng):
    chunk = sample_chunk(rng, horizon=16)
    msg = cdr(store, trajectory.chunk_to_ros(factory, chunk))
    assert list(msg.joint_names) == ["ee", "gripper"] and len(msg.points) == 16
    assert msg.points[3].time_from_start.nanosec == 300_000_000
    back = trajectory.chunk_from_ros(msg)
    assert back.dt == pytest.approx(chunk.dt, rel=1e-12)
    np.testing.assert_array_equal(back.waypoint_stamps_ns(), chunk.waypoint_stamps_ns())
    for name in ("positions", "orientations", "gripper"):
        np.testing.assert_array_equal(getattr(back, name), getattr(chunk, name))


def test_action_chunk_path(factory, store, rng):
    chunk = sample_chunk(rng, dt=1 / 30)
    stamps, positions, orientations = trajectory.path_from_ros(cdr(store, trajectory.chunk_to_path(factory, chunk)))
    np.testing.assert_array_equal(stamps, chunk.waypoint_stamps_ns())
    np.testing.assert_array_equal(positions, chunk.positions)
    np.testing.assert_array_equal(orientations, chunk.orientations)


def test_trajectory_without_uniform_times_is_rejected(factory, rng):
    msg = trajectory.chunk_to_ros(factory, sample_chunk(rng))
    msg.points[2].time_from_start.nanosec += 5_000_000
    with pytest.raises(MessageError, match="time_from_start"):
        trajectory.chunk_from_ros(msg)


@pytest.mark.parametrize("message_type", list(WIRE_FORMATS), ids=lambda t: t.__name__)
def test_every_wire_format_round_trips_through_cdr(factory, store, rng, message_type):
    """Each project message type goes out through its wire format and comes back equal."""
    wire = WIRE_FORMATS[message_type]
    sample = sample_of_every_type(rng)[message_type.__name__]
    options = wire.options_class()
    if message_type is RGBD:
        options = wire.options_class(base_frame=BASE)
    if message_type.__name__ == "Keypoints":
        options = wire.options_class(names=sample.names)
    packet = wire.to_ros(sample, factory, options)
    types = {r.name: r.ros_type for r in wire.roles}
    assert set(packet.messages) == set(types)
    received = {role: cdr(store, msg) for role, msg in packet.messages.items()}
    assert all(received[r].__msgtype__ == t for r, t in types.items())
    transforms = {}
    for t in packet.transforms:
        stamp, parent, child, T = pose.transform_from_ros(cdr(store, t))
        transforms[(parent, child)] = T
    back = wire.from_ros(received, options, lambda parent, child, stamp: transforms[(parent, child)], STAMP)
    assert_messages_equal(back, sample)


def test_rgbd_wire_needs_a_base_frame(factory, rng):
    wire = WIRE_FORMATS[RGBD]
    packet = wire.to_ros(sample_rgbd(rng), factory, wire.options_class())
    with pytest.raises(MessageError, match=r"^options\.base_frame"):
        wire.from_ros(packet.messages, wire.options_class(), None, STAMP)


def test_role_assembler_matches_header_stamps(factory, rng):
    rgbd_wire = WIRE_FORMATS[RGBD]
    packet = rgbd_wire.to_ros(sample_rgbd(rng), factory, rgbd_wire.options_class())
    assembler = RoleAssembler(rgbd_wire)
    assert assembler.add("image", packet.messages["image"]) is None
    assert assembler.add("depth", packet.messages["depth"]) is None
    assert set(assembler.add("camera_info", packet.messages["camera_info"])) == {"image", "depth", "camera_info"}
    state_wire = WIRE_FORMATS[type(sample_state(rng))]
    ee, joints = state_wire.to_ros(sample_state(rng), factory, state_wire.options_class()).messages.values()
    approximate = RoleAssembler(state_wire)
    late_joints = factory.new("sensor_msgs/msg/JointState", header=header_msg(factory, STAMP + 3_000_000, ""), name=["gripper"], position=[0.0])
    assert approximate.add("joints", late_joints) is None
    assert approximate.add("pose", ee)["joints"] is late_joints  # 3 ms apart: within the slop
    far_joints = factory.new("sensor_msgs/msg/JointState", header=header_msg(factory, STAMP + 50_000_000, ""), name=["gripper"], position=[0.0])
    assert approximate.add("joints", far_joints) is None


def test_held_joint_states_the_newest_usable_one_around_the_pose(factory, rng):
    """A robot state's /joint_states from publishers of their own (WireFormat.held): the
    newest message with the gripper joints, at most held_max_age_s old, up to 5 ms ahead."""
    wire = WIRE_FORMATS[type(sample_state(rng))]
    options = wire.options_class(gripper_joints=("finger1", "finger2"))
    assert wire.held == ("joints",)

    def joints(offset_ms: float, names=("finger1", "finger2")):
        return factory.new("sensor_msgs/msg/JointState", header=header_msg(factory, STAMP + int(offset_ms * 1e6), ""),
                           name=list(names), position=[0.0] * len(names))

    max_age = int(wire.held_max_age_s * 1e9)
    old, recent, arm_only, ahead, far_ahead = joints(-90), joints(-30), joints(-1, ("joint1",)), joints(3), joints(60)
    usable = [m for m in (old, recent, arm_only, far_ahead) if wire.completes("joints", m, options)]
    assert arm_only not in usable and wire.completes("pose", arm_only, options)
    assert pick_held(usable, STAMP, max_age) is recent
    assert pick_held([*usable, ahead], STAMP, max_age) is ahead  # 3 ms after the pose: the same control loop
    assert pick_held([joints(-150), far_ahead], STAMP, max_age) is None


def test_transform_router_static_then_dynamic(factory):
    router = TransformRouter()
    first = pose.transform_to_ros(factory, STAMP, BASE, OPTICAL, camera_pose())
    moved = camera_pose()
    moved[0, 3] += 0.01
    assert router.route(first) == "static"
    assert router.route(first) is None
    assert router.route(pose.transform_to_ros(factory, STAMP, BASE, OPTICAL, moved)) == "dynamic"
    assert router.route(first) == "dynamic"


def test_typestore_factory_fills_defaults_and_rejects_unknown(factory, store):
    marker = factory.new("visualization_msgs/msg/Marker")
    assert marker.ns == "" and marker.points == [] and marker.pose.orientation.w == 1.0  # ROS 2 default
    cdr(store, marker)
    with pytest.raises(MessageError, match="no field"):
        factory.new("std_msgs/msg/Header", frame="x")
    with pytest.raises(MessageError, match="unknown to the typestore"):
        factory.new("franka_msgs/msg/Nope")
