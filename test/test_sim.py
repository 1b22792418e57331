"""The simulated rig: camera geometry, depth, tasks and their success checks, variations,
the scripted expert, recorded demonstrations, ground truth and bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from kil.errors import ConfigError
from kil.geometry import project, unproject

pytestmark = pytest.mark.sim
ROBOTS = ("panda", "ur5e")


@pytest.fixture(scope="module", params=ROBOTS)
def world(request):
    from kil.sim.episode import make_world

    w = make_world("pick_place", request.param, "in", seed=3)
    yield w
    w.close()


def test_known_point_projects_to_its_pixel_and_back(world):
    rgb, depth = world.render()
    bodies = world.render_segmentation()
    obj_body = world.sim.model.body_name2id(world.object_body(0))
    names, xyz, instance = world.keypoints()
    top = xyz[names.index("block/top_center")]
    uv, z = project(world.K, world.T_base_camera, top[None])
    u, v = np.round(uv[0]).astype(int)
    assert bodies[v, u] == obj_body  # the pixel shows the object
    # a pixel just below the top surface's centre: the top face is seen there
    assert depth[v, u] == pytest.approx(z[0], abs=0.01)
    back = unproject(world.K, world.T_base_camera, uv, depth[v, u])[0]
    size = min(world.scene.objects[0].instance.size)
    assert np.linalg.norm(back - top) < size / 4


def test_object_silhouette_centre_matches_projection(world):
    bodies = world.render_segmentation()
    obj_body = world.sim.model.body_name2id(world.object_body(0))
    vs, us = np.nonzero(bodies == obj_body)
    assert len(us) > 100
    centre = world.object_pose(0)[:3, 3]
    uv, _ = project(world.K, world.T_base_camera, centre[None])
    # the projected centre lies inside the silhouette's bounding box
    assert us.min() <= uv[0, 0] <= us.max() and vs.min() <= uv[0, 1] <= vs.max()


def test_depth_is_metric_on_the_table(world):
    _, depth = world.render()
    bodies = world.render_segmentation()
    table = world.sim.model.body_name2id("table")
    v, u = np.nonzero(bodies == table)
    pick = np.linspace(0, len(u) - 1, 500).astype(int)
    points = unproject(world.K, world.T_base_camera, np.stack([u[pick], v[pick]], 1), depth[v[pick], u[pick]])
    # the table top is a plane at table_z in the base frame (the table body also has its
    # sides and legs, seen below the edge: a few points)
    error = np.abs(points[:, 2] - world.table_z)
    assert np.median(error) < 0.0015 and np.mean(error < 0.003) > 0.9
    assert depth.dtype == np.float32 and np.nanmax(depth) < 10


def test_images_are_the_right_way_up(world):
    bodies = world.render_segmentation()
    table = world.sim.model.body_name2id("table")
    v, _ = np.nonzero(bodies == table)
    h = bodies.shape[0]
    # the camera looks down at the table: it fills the lower part of the image
    assert v.mean() > h / 2
    rgb, _ = world.render()
    assert rgb.shape == (480, 640, 3) and rgb.dtype == np.uint8


def test_ee_pose_follows_an_absolute_target(world):
    T = world.ee_pose()
    target = T[:3, 3] + [0.05, -0.04, 0.03]
    for _ in range(150):
        world.step(target, T[:3, :3], None)
    assert np.linalg.norm(world.ee_pose()[:3, 3] - target) < 0.01


def test_gripper_closes_and_opens(world):
    T = world.ee_pose()
    for _ in range(60):
        world.step(T[:3, 3], T[:3, :3], 0.0)
    assert world.gripper_opening() < 0.005
    for _ in range(80):
        world.step(T[:3, 3], T[:3, :3], 0.2)
    assert world.gripper_opening() > 0.06


def test_correspondences_between_two_views(world):
    from kil.geometry import look_at_pose
    from kil.sim.correspondence import correspondences

    a = world.capture_view()
    original = world.T_base_camera.copy()
    world.set_camera_pose(look_at_pose(np.array([0.95, 0.3, 0.6]), np.array([0.5, -0.05, -0.1])))
    b = world.capture_view()
    world.set_camera_pose(original)
    obj_body = world.sim.model.body_name2id(world.object_body(0))
    v, u = np.nonzero(a.bodies == obj_body)
    uv_b, valid = correspondences(a, b, np.stack([u, v], 1))
    assert valid.mean() > 0.3  # some of the object is hidden from the other camera
    px = np.round(uv_b[valid]).astype(int)
    assert np.all(b.bodies[px[:, 1], px[:, 0]] == obj_body)
    # same surface point: the same colour (flat-shaded block, lit alike from both sides)
    colour_a = a.rgb[v[valid], u[valid]].astype(float)
    colour_b = b.rgb[px[:, 1], px[:, 0]].astype(float)
    assert np.median(np.abs(colour_a - colour_b).sum(1)) < 60
    # the true keypoint lands where view B projects it
    names, xyz, _ = world.keypoints()
    k = xyz[names.index("block/top_center")]
    uv_ka, _ = project(a.K, a.T_base_camera, k[None])
    uv_kb, _ = project(b.K, b.T_base_camera, k[None])
    mapped, ok = correspondences(a, b, np.round(uv_ka).astype(int))
    assert ok[0] and np.linalg.norm(mapped[0] - uv_kb[0]) < 3.0
    # a pixel on empty space (nothing rendered) never corresponds
    assert not correspondences(a, b, np.array([[0, 0]]))[1][0] or a.bodies[0, 0] >= 0


def test_success_checks_say_yes_only_when_done():
    from kil.sim.episode import make_world

    w = make_world("pick_place", "panda", "in", seed=5)
    try:
        assert w.completion() == 0.0  # untouched
        half = w.object_half_heights()[0]
        inside = w.world_point(w.task.fixture_position + [0.0, 0.0, half + 0.02])
        w.sim.data.set_joint_qpos("obj0_joint0", np.array([*inside, 1, 0, 0, 0]))
        w.sim.forward()
        T = w.ee_pose()
        for _ in range(50):
            w.step(T[:3, 3], T[:3, :3], None)
        assert w.completion() == 1.0
        # on the rim is not in: raised above the walls
        above = w.world_point(w.task.fixture_position + [0.0, 0.0, 0.2])
        w.sim.data.set_joint_qpos("obj0_joint0", np.array([*above, 1, 0, 0, 0]))
        w.sim.forward()
        assert w.completion() == 0.0
    finally:
        w.close()


def test_upright_check_rejects_a_tipped_mug():
    from kil.sim.objects import load_catalogue
    from kil.sim.tasks import ObjectState, make_task, task_config

    task = make_task("place_upright", task_config("place_upright"), load_catalogue(), table_z=-0.1)
    target = np.array([*task.config.fixture.position, -0.1 + 0.006 + 0.045])
    yaw = math.radians(task.config.target_yaw_deg)
    c, s = math.cos(yaw), math.sin(yaw)
    upright = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    assert task.object_done(ObjectState(target, upright), 0.045)
    tipped = upright @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]])  # 90 deg about x
    assert not task.object_done(ObjectState(target, tipped), 0.045)
    turned = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])  # handle the wrong way
    assert not task.object_done(ObjectState(target, turned), 0.045)
    assert not task.object_done(ObjectState(target + [0.1, 0, 0], upright), 0.045)


@pytest.mark.parametrize("task", ["pick_place", "place_upright", "pick_place_two"])
@pytest.mark.parametrize("robot", ROBOTS)
def test_expert_succeeds_on_a_seeded_batch(task, robot):
    from kil.sim.demos import episode_seed, run_expert

    results = [run_expert(task, robot, "in", episode_seed(11, i)) for i in range(2)]
    assert [r.completion for r in results] == [1.0, 1.0], [r.stop_reason for r in results]
    assert all(r.stop_reason == "teleop: expert finished its plan" for r in results)


def test_truth_frames_show_the_object_in_the_fingers_or_put_down_by_the_expert():
    """Calibration and bench frames where the expert handles the object: "holding" has the
    block lifted with some of its points seen (the fingers hide others); "placed" has it in
    the tray (its points beside the tray's centre, which it covers)."""
    from kil.sim.truth import LIFTED_M, render_truth_frame

    away, holding, placed = (render_truth_frame("pick_place", "in", 777, "panda", arm) for arm in ("away", "holding", "placed"))
    block = [i for i, name in enumerate(away.names) if name.startswith("block/")]
    centre = away.names.index("tray/center")
    assert away.visible[block].all()
    assert (holding.xyz[block, 2] - away.xyz[block, 2] > LIFTED_M).all()
    assert 0 < holding.visible[block].sum()
    assert (np.linalg.norm(placed.xyz[block, :2] - away.xyz[centre, :2], axis=1) < 0.05).all()
    assert placed.visible[block].all() and not placed.visible[centre]


def test_ground_truth_of_several_objects_is_named_as_the_spec_names_them():
    """Two blocks: the sim's true keypoints travel as one Keypoints message (names unique,
    as the spec's layout writes them), and the oracle maps each spec keypoint to its block."""
    from pathlib import Path

    from kil.data.builder import oracle_index
    from kil.msgs import Keypoints
    from kil.perception.spec import load_spec
    from kil.sim.episode import make_world

    world = make_world("pick_place_two", "panda", "in", 3)
    try:
        rgb, depth = world.render()
        truth = world.projected_keypoints(depth)
        _, xyz, _ = world.keypoints()
    finally:
        world.close()
    n = len(truth.names)
    Keypoints(stamp_ns=0, frame_id="base", names=truth.names, uv=truth.uv.astype(np.float32), xyz=truth.xyz.astype(np.float32),
              score=np.ones(n, np.float32), visible=truth.visible, instance=truth.instance)
    layout = load_spec("pick_place_two").layout()
    index = oracle_index(layout.names, list(truth.names), truth.instance, Path("episode"))
    assert [truth.names[j] for j in index] == list(layout.names)
    expected = {"block[0]": 0, "block[1]": 1, "tray": 2}
    assert [int(truth.instance[j]) for j in index] == [expected[name.split("/")[0]] for name in layout.names]
    first, second = xyz[index[0]], xyz[index[4]]  # block[0]/top_center, block[1]/top_center
    assert np.linalg.norm(first - second) > 0.05


def test_a_sabotaged_episode_is_scored_a_failure():
    from dataclasses import replace
    from pathlib import Path

    from kil.runtimes.local import LocalRuntime
    from kil.sim.demos import demo_graph
    from kil.sim.expert import ExpertConfig

    graph = demo_graph("pick_place", "panda", "in", 4, Path("unused"))
    nodes = {k: v for k, v in graph.nodes.items() if k != "recorder"}
    nodes["rig"] = replace(nodes["rig"], config=replace(nodes["rig"].config, render=False))
    # the expert lets go before lifting: the block stays where it was
    sabotaged = ExpertConfig(grasp_dwell_s=0.0, lift_height=0.0, approach_height=0.02)
    nodes["teleop"] = replace(nodes["teleop"], config=replace(nodes["teleop"].config, motion=sabotaged))
    runtime = LocalRuntime(replace(graph, nodes=nodes))
    runtime.run(3.0)  # stopped long before the expert could finish
    assert runtime.stages["rig"].completion == 0.0


@pytest.mark.parametrize("seed", [4, 5])
def test_the_expert_picks_again_after_a_missed_grasp(seed):
    """Every first pick aimed 3 cm beside the block (miss_rate 1): the expert sees the block
    was not lifted, picks it again from where it lies and finishes the task."""
    from dataclasses import replace
    from pathlib import Path

    from kil.runtimes.local import LocalRuntime
    from kil.sim.demos import demo_graph
    from kil.sim.expert import ExpertConfig
    from kil.sim.tasks import task_config

    graph = demo_graph("pick_place", "panda", "in", seed, Path("unused"))
    nodes = {k: v for k, v in graph.nodes.items() if k != "recorder"}
    nodes["rig"] = replace(nodes["rig"], config=replace(nodes["rig"].config, render=False))
    nodes["teleop"] = replace(nodes["teleop"], config=replace(nodes["teleop"].config, motion=ExpertConfig(miss_rate=1.0)))
    runtime = LocalRuntime(replace(graph, nodes=nodes))
    runtime.run(task_config("pick_place").time_limit_s)
    expert = runtime.stages["teleop"]
    assert expert.planner.picks >= 2
    assert runtime.stages["rig"].completion == 1.0
    # the aimed-off pick is marked not to imitate, from its plan (the start) to the retry's plan
    (start, end), = expert.planner.deliberate_misses
    assert start < 0.5 and 3.0 < end < task_config("pick_place").time_limit_s
    (start_ns, end_ns), = expert.not_to_imitate_ns
    assert end_ns - start_ns == round((end - start) * 1e9)


def test_variations_change_the_scene():
    from kil.sim.objects import load_catalogue
    from kil.sim.scene import IN_YAW_RANGE_DEG, sample_scene
    from kil.sim.tasks import task_config

    catalogue, config = load_catalogue(), task_config("pick_place")
    scenes = {v: sample_scene("pick_place", config, catalogue, v, seed=7) for v in ("in", "obj", "scene", "rot")}
    demo_ids = {o.id for o in catalogue.category("block").demo}
    held_ids = {o.id for o in catalogue.category("block").held_out}
    assert not demo_ids & held_ids
    assert set(scenes["in"].object_ids) <= demo_ids
    assert set(scenes["obj"].object_ids) <= held_ids
    assert scenes["scene"].distractors and scenes["scene"].table_rgba != scenes["in"].table_rgba
    assert scenes["scene"].lighting != scenes["in"].lighting
    canonical = math.radians(config.canonical_yaw_deg)
    in_yaws = [sample_scene("pick_place", config, catalogue, "in", s).objects[0].yaw for s in range(40)]
    rot_yaws = [sample_scene("pick_place", config, catalogue, "rot", s).objects[0].yaw for s in range(40)]
    assert max(abs(y - canonical) for y in in_yaws) <= math.radians(IN_YAW_RANGE_DEG)
    assert max(abs(y - canonical) for y in rot_yaws) > math.radians(90)
    in_xy = np.array([sample_scene("pick_place", config, catalogue, "in", s).objects[0].xy for s in range(40)])
    assert np.ptp(in_xy[:, 0]) > 0.15 and np.ptp(in_xy[:, 1]) > 0.15  # spread across the workspace
    # same seed, same scene
    assert sample_scene("pick_place", config, catalogue, "scene", 7) == scenes["scene"]


def test_several_objects_are_numbered_nearest_the_camera_first():
    """pick_place_two's blocks are numbered (and picked by the expert) nearest the scene
    camera first, the order instance matching gives look-alikes when a stream starts."""
    from kil.sim.objects import load_catalogue
    from kil.sim.scene import sample_scene
    from kil.sim.tasks import task_config
    from kil.sim.world import CameraConfig

    catalogue, config = load_catalogue(), task_config("pick_place_two")
    assert config.first_nearest_xy == CameraConfig().eye[:2]
    swapped = 0
    for seed in range(20):
        scene = sample_scene("pick_place_two", config, catalogue, "in", seed)
        near, far = (math.dist(p.xy, config.first_nearest_xy) for p in scene.objects)
        assert near <= far
        unordered = sample_scene("pick_place_two", dataclasses.replace(config, first_nearest_xy=None), catalogue, "in", seed)
        assert sorted(unordered.objects, key=lambda p: p.xy) == sorted(scene.objects, key=lambda p: p.xy)  # the same draw
        swapped += unordered.objects != scene.objects
    assert 0 < swapped < 20


def test_every_variation_renders_a_different_image():
    from kil.sim.episode import make_world

    images = {}
    for variation in ("in", "obj", "scene", "rot"):
        w = make_world("place_upright", "panda", variation, seed=2)
        images[variation] = w.render()[0].astype(int)
        w.close()
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            changed = (np.abs(images[a] - images[b]).sum(-1) > 30).sum()
            assert changed > 500, (a, b, changed)  # pixels that clearly differ


def test_demos_command_writes_identical_bags_for_one_seed(tmp_path):
    from kil.cli import main
    from kil.data.bag import EpisodeReader
    from kil.data.episode import read_metadata

    for run in ("a", "b"):
        assert main(["sim", "demos", "--task", "pick_place", "--robot", "panda", "--episodes", "1",
                     "--seed", "4", "--camera-rate", "10", "--out", str(tmp_path / run)]) == 0
    a, b = tmp_path / "a" / "episode_0000", tmp_path / "b" / "episode_0000"
    topics = EpisodeReader(a).topics()
    for name in ("/camera/image", "/camera/depth", "/camera/camera_info", "/tf_static",
                 "/sim/ee_pose", "/joint_states", "/kil/pose_target", "/kil/gripper_command", "/kil/chunk", "/sim/keypoints"):
        assert name in topics and topics[name][1] > 0, name
    assert topics["/camera/image"][0] == "sensor_msgs/msg/Image"
    assert topics["/kil/gripper_command"][0] == "control_msgs/msg/GripperCommand"
    meta = read_metadata(a)
    assert meta.task == "pick_place" and meta.variation == "in" and meta.status == "complete"
    assert meta.success is True and meta.extra["robot"] == "panda" and meta.extra["object_ids"]
    assert meta == read_metadata(b)
    mcap_a, mcap_b = sorted(a.glob("*.mcap")), sorted(b.glob("*.mcap"))
    assert [p.read_bytes() for p in mcap_a] == [p.read_bytes() for p in mcap_b]
    # and a second batch into the same directory is refused, not overwritten
    assert main(["sim", "demos", "--episodes", "1", "--out", str(tmp_path / "a")]) == 1


def test_ground_truth_keypoints_in_the_recorded_stream(tmp_path):
    from kil.sim.demos import episode_seed, record_episode

    result = record_episode("place_upright", "ur5e", "in", episode_seed(0, 0), tmp_path, camera_rate_hz=10)
    assert result.success
    path = result.path
    from kil.data.bag import EpisodeReader
    from kil.data.episode import read_metadata
    from kil.graph import load_graph
    from kil.paths import graph_path

    topics = load_graph(graph_path("sim_demo")).topics
    frames = list(EpisodeReader(path).messages([topics["/sim/keypoints"]]))
    first = frames[0][2]
    names = read_metadata(path).extra["ground_truth_keypoints"]
    assert names[:4] == ["mug/rim_grasp", "mug/rim_handle", "mug/rim_side", "mug/handle"]
    assert first.names == tuple(names)  # the cloud carries indices, its latched companion the names
    assert first.visible[:3].all()  # the rim faces the camera at the start
    assert np.all(first.instance[:4] == 0) and np.all(first.instance[4:] == 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "stack_cups"], "unknown task 'stack_cups' (choose one of: pick_place, place_upright, pick_place_two)"),
        (["--robot", "kuka"], "unknown robot 'kuka' (choose one of: panda, ur5e)"),
        (["--variation", "dark"], "unknown variation 'dark' (choose one of: in, obj, scene, rot)"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, message, tmp_path, capsys):
    from kil.cli import main

    assert main(["sim", "demos", *args, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"kil sim: error: {message}"
    assert not (tmp_path / "x").exists()


def test_missing_asset_and_gl_backend_errors(tmp_path, monkeypatch):
    from kil.sim import gl
    from kil.sim.objects import load_catalogue

    with pytest.raises(ConfigError, match=r"objects.yaml: object catalogue not found"):
        load_catalogue(tmp_path / "objects.yaml")
    monkeypatch.setattr(gl, "_loadable", lambda library: False)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    with pytest.raises(ConfigError) as info:
        gl.select_gl_backend()
    assert "install libegl1 libgl1-mesa-dri (MUJOCO_GL=egl) or libosmesa6 (MUJOCO_GL=osmesa)" in str(info.value)
    with pytest.raises(ConfigError, match="unknown GL backend"):
        gl.select_gl_backend("vulkan")


def test_catalogue_rejects_a_shape_without_the_category_keypoints(tmp_path):
    from kil.sim.objects import load_catalogue

    bad = tmp_path / "objects.yaml"
    bad.write_text(
        "categories:\n  mug:\n    prompt: mug\n    keypoints: [handle]\n"
        "    demo:\n      - {id: m, shape: box, size: [0.05, 0.05, 0.05], rgba: [1, 0, 0, 1]}\n"
    )
    with pytest.raises(ConfigError, match=r"shape 'box' of m has no point \['handle'\]"):
        load_catalogue(bad)
