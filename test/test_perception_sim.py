"""Perception on simulated frames: exact matching on real renders, cross-instance
correspondences for descriptor training, oracle reference specs, the shipped descriptor net
and the sim task specs, and the keypoints node on the simulated rig."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def frames():
    from kil.sim.episode import make_world

    out = []
    for variation, seed in (("in", 11), ("obj", 12)):
        world = make_world("pick_place", "panda", variation, seed)
        rgb, depth = world.render()
        out.append((world.capture_view(), world.projected_keypoints(depth), rgb, depth, world.K.copy(), world.T_base_camera.copy()))
        world.close()
    return out


@pytest.mark.parametrize("backend", ["sift", "descriptor_net"])
def test_fast_matcher_is_exact_on_rendered_frames(frames, backend):
    from kil.perception.features.base import load_extractor
    from kil.perception.matching import Matcher, naive_similarity, sample_descriptors

    extractor = load_extractor(backend)
    rgb = np.stack([f[2] for f in frames])
    features = extractor.extract(rgb)
    truth = frames[0][1]
    refs = sample_descriptors(features[0], truth.uv[truth.visible], rgb.shape[1:3])
    found = Matcher(refs).match(features, rgb.shape[1:3])
    naive = naive_similarity(refs, features, rgb.shape[1:3])
    best = naive.flatten(2).max(dim=2).values.numpy()
    for b in range(len(frames)):
        for n, (u, v) in enumerate(found.uv[b].astype(int)):
            assert naive[b, n, v, u] >= best[b, n] - 1e-5
    np.testing.assert_allclose(found.score, best, atol=1e-4)


def test_category_correspondences_carry_keypoints_between_instances():
    """The true top-centre of one block maps onto the true top-centre of another instance."""
    from kil.sim.correspondence import category_correspondences
    from kil.sim.episode import make_world

    views, truths = [], []
    for seed in (3, 4, 5, 6):
        world = make_world("pick_place", "panda", "in", seed)
        view = world.capture_view()
        views.append(view)
        truths.append(world.projected_keypoints(view.depth))
        world.close()
    extents = {tuple(np.round(v.objects[min(v.objects)][1], 4)) for v in views}
    assert len(extents) == 2  # both demonstration blocks appear among these seeds
    for a, b, ta, tb in ((views[i], views[j], truths[i], truths[j]) for i in range(4) for j in range(4) if i != j):
        k = ta.names.index("block/top_center")
        uv_b, ok = category_correspondences(a, b, np.round(ta.uv[[k]]).astype(int))
        assert ok[0] and np.linalg.norm(uv_b[0] - tb.uv[k]) < 2.5


def test_oracle_spec_matches_itself_exactly(tmp_path):
    """A reference spec from ground truth, matched with the shipped descriptor net in its own
    reference frame, finds every keypoint at its reference pixel."""
    from kil.msgs import RGBD
    from kil.perception.features.base import load_extractor
    from kil.perception.keypoints import KeypointDetector, reference_set
    from kil.perception.spec import load_spec
    from kil.sim.episode import make_world
    from kil.sim.reference import oracle_spec

    path, seed = oracle_spec("place_upright", tmp_path)
    spec = load_spec(path)
    assert spec.layout().names[:4] == ("mug/rim_grasp", "mug/rim_handle", "mug/rim_side", "mug/handle")
    extractor = load_extractor("descriptor_net")
    detector = KeypointDetector(reference_set(spec, extractor))
    world = make_world("place_upright", "panda", "in", seed)
    rgb, depth = world.render()
    truth = world.projected_keypoints(depth)
    frame = RGBD(1, "camera", rgb, depth, world.K, "base_link", world.T_base_camera)
    world.close()
    (kps,) = detector.detect([frame], extractor.extract(rgb))
    ref_uv = np.concatenate([uv for _, uv in spec.references()])
    assert np.abs(kps.uv - ref_uv).max() <= 1.0  # the (sub-pixel) reference points, to the pixel
    assert kps.visible.all()
    visible = [truth.names.index(n.replace("[0]", "")) for n in kps.names]
    assert np.linalg.norm(kps.xyz - truth.xyz[visible], axis=1).max() < 0.02  # lifted within 2 cm


def test_views_find_a_block_turned_away_from_the_reference(tmp_path):
    """`kil sim reference --views`: each view holds the true visible points of the block in
    another scene (the tray, which never moves, has none), the same instance as the
    reference's (seeds showing another instance are passed over); in those scenes the block
    lies turned, and the reference image alone puts its points 4+ px off, where with the
    views every keypoint is found to the pixel (each keypoint by its own view, not another's)."""
    from dataclasses import replace

    from kil.msgs import RGBD
    from kil.perception.features.base import load_extractor
    from kil.perception.keypoints import KeypointDetector, reference_set
    from kil.perception.spec import load_spec
    from kil.sim.objects import load_catalogue
    from kil.sim.reference import VIEW_SEED_BASE, oracle_spec, view_seeds
    from kil.sim.scene import sample_scene
    from kil.sim.tasks import task_config
    from kil.sim.truth import render_truth_frame

    def block_in(seed: int) -> str:
        return sample_scene("pick_place", task_config("pick_place"), load_catalogue(), "in", seed).objects[0].instance.id

    path, seed = oracle_spec("pick_place", tmp_path, views=2)
    spec = load_spec(path)
    seeds = [s for s, _ in view_seeds("pick_place", [block_in(seed)], 2)]
    shown = [block_in(s) for s in range(VIEW_SEED_BASE, seeds[-1] + 1)]
    assert len(set(shown)) == 2  # another instance came first, and was passed over
    assert [s - VIEW_SEED_BASE for s in seeds] == [i for i, block in enumerate(shown) if block == block_in(seed)]
    block, tray = (category.references[0] for category in spec.spec.categories)
    assert [v.image for v in block.views] == ["pick_place_view_00.png", "pick_place_view_01.png"] and tray.views == []
    extractor = load_extractor("descriptor_net")
    with_views = reference_set(spec, extractor)
    assert with_views.view_owner.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    alone = replace(with_views, view_descriptors=None, view_owner=None)
    for k, view in enumerate(block.views):
        truth = render_truth_frame("pick_place", "in", seeds[k], "panda", "away")
        index = [truth.names.index(n) for n in with_views.names]
        shown = [truth.names.index(f"block/{point}") for point in view.keypoints]
        np.testing.assert_allclose(list(view.keypoints.values()), truth.uv[shown], atol=0.05)
        frame = RGBD(1, "camera", truth.rgb, truth.depth, truth.K, "base_link", truth.T_base_camera)
        features = extractor.extract(truth.rgb)
        errors = {}
        for label, references in (("views", with_views), ("alone", alone)):
            (keypoints,) = KeypointDetector(references).detect([frame], features)
            assert keypoints.visible.all()
            errors[label] = np.linalg.norm(keypoints.uv - truth.uv[index], axis=1)
        assert errors["views"].max() <= 1.0, errors
        assert errors["alone"][:4].max() > 4.0, errors


def test_views_of_an_instance_no_scene_shows_are_a_one_line_error():
    from kil.errors import ConfigError
    from kil.sim.reference import view_seeds

    with pytest.raises(ConfigError, match=r"pick_place: seeds 900000\.\.900019 show object 0 \(block_green_tall\) only 0 times, not the 2 views asked"):
        view_seeds("pick_place", ["block_green_tall"], 2, tries=20)  # a held-out instance: never in an `in` scene


@pytest.mark.parametrize("task", ["pick_place", "place_upright", "pick_place_two"])
def test_shipped_task_specs_load(task):
    from kil.perception.spec import load_spec

    spec = load_spec(task)
    assert spec.task == task
    names = spec.layout().names
    assert len(names) >= 5 and len(set(names)) == len(names)


def test_keypoints_node_on_the_simulated_rig(tmp_path):
    """sim rig -> features (descriptor net) -> keypoints, in the local runtime: keypoints come
    at the features rate, stamped like their frames, mostly near the truth."""
    from kil.graph import load_graph
    from kil.runtimes.local import LocalRuntime

    path = tmp_path / "graph.yaml"
    path.write_text("""
name: sim_keypoints
topics:
  /camera: {type: RGBD}
  /robot_state: {type: RobotState}
  /features: {type: FeatureMap}
  /keypoints: {type: Keypoints}
  /annotated: {type: Image}
  /sim/keypoints: {type: Keypoints}
  /kil/pose_target: {type: PoseCommand}
  /kil/gripper_command: {type: GripperCommand}
nodes:
  rig:
    stage: sim_rig
    params: {task: pick_place, seed: 21, camera_rate_hz: 15}
    subscribe: {target: /kil/pose_target, gripper: /kil/gripper_command}
    publish: {rgbd: /camera, state: /robot_state, ground_truth: /sim/keypoints}
  features:
    stage: features
    params: {model: descriptor_net, rate_hz: 10}
    subscribe: {rgbd: /camera}
    publish: {features: /features}
  keypoints:
    stage: keypoints
    params: {spec: pick_place, model: descriptor_net}
    subscribe: {rgbd: /camera, features: /features}
    publish: {keypoints: /keypoints, annotated: /annotated}
  sink:
    stage: toy_stages.sink
    subscribe: {keypoints: /keypoints, truth: /sim/keypoints, annotated: /annotated}
""")
    runtime = LocalRuntime(load_graph(path))
    runtime.run(duration_s=0.5)
    sink = runtime.stages["sink"]
    found, truth = sink.of("keypoints"), {k.stamp_ns: k for k in sink.of("truth")}
    assert 4 <= len(found) <= 6 and all(k.stamp_ns in truth for k in found)
    last = found[-1]
    gt = truth[last.stamp_ns]
    errors = [np.linalg.norm(last.uv[i] - gt.uv[gt.names.index(n)]) for i, n in enumerate(last.names) if gt.visible[gt.names.index(n)]]
    assert np.median(errors) < 10, errors
    assert sink.of("annotated")[-1].rgb.shape == (480, 640, 3)


def test_descriptor_training_pairs_and_a_short_run(tmp_path):
    """Pairs hold true matches and non-matches (never near the match, never on another
    instance of the match's category); a short training run lowers the loss and saves a
    file the backend loads."""
    import dataclasses

    import torch

    from kil.perception.features.base import load_extractor
    from kil.perception.features.descriptor_net import NetArchitecture, save_net
    from kil.training.descriptor_net import DescriptorTrainConfig, make_pair, train
    from kil.training.descriptor_views import render_scenes, scene_requests

    config = DescriptorTrainConfig(scenes=2, views_per_scene=2, tasks=("pick_place_two",), robots=("panda",), variations=("in",),
                                   steps=40, pairs_per_step=2, matches_per_pair=64, non_matches=16, workers=1,
                                   architecture=NetArchitecture(channels=(8, 16, 16, 16), width=16, descriptor_dim=8))
    scenes = render_scenes(scene_requests(config.tasks, config.robots, config.variations, 2, 2, config.image_size, 0), workers=1)
    a, b = scenes[0].views
    pair = make_pair(a, b, False, config, np.random.default_rng(0))
    px_a, px_b = pair.uv_a.astype(int), np.round(pair.uv_b).astype(int)
    assert np.array_equal(a.bodies[px_a[:, 1], px_a[:, 0]], b.bodies[px_b[:, 1], px_b[:, 0]])
    assert (np.linalg.norm(pair.negatives - pair.uv_b[:, None], axis=-1) >= 6).all()
    blocks = [body for body, (category, _) in b.objects.items() if category == "block"]
    assert len(blocks) == 2
    neg = pair.negatives.astype(int)
    on_block = np.isin(b.bodies[neg[..., 1], neg[..., 0]], blocks)
    match_body = b.bodies[px_b[:, 1], px_b[:, 0]]
    neg_body = b.bodies[neg[..., 1], neg[..., 0]]
    other_block = np.isin(match_body, blocks)[:, None] & on_block & (neg_body != match_body[:, None])
    assert other_block.any() and (pair.negative_weight[other_block] == 0).all()
    assert (pair.negative_weight[~other_block] == 1).all()  # the same block's other points stay negatives

    net, history = train(scenes, dataclasses.replace(config, cross_instance_share=0.5))
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    save_net(net, tmp_path / "net.safetensors")
    # continuing from the saved net starts where it ended, not from scratch
    _, more = train(scenes, dataclasses.replace(config, init=str(tmp_path / "net.safetensors"), steps=10, lr=1e-4))
    assert np.mean([h["loss"] for h in more]) < np.mean(losses[:10])
    (tmp_path / "net.yaml").write_text("backend: descriptor_net\nweights: net.safetensors\ninput_size: [240, 320]\n")
    features = load_extractor(tmp_path / "net.yaml").extract(a.rgb)
    assert features.shape == (1, 8, 60, 80) and torch.isfinite(features).all()


def test_recoloured_training_scenes_change_only_the_colours_of_objects_and_clutter():
    """A recoloured scene is the same scene (same bodies at every pixel, same depth) whose
    task objects, fixture and distractors wear other colours, each one uniform; the table
    and the arm keep theirs; half of a batch of requests is recoloured."""
    from kil.training.descriptor_views import SceneRequest, render_scene, scene_requests

    plain, recoloured = (render_scene(SceneRequest("pick_place", "panda", "scene", 4242, 1, (120, 160), recolour)).views[0]
                         for recolour in (False, True))
    np.testing.assert_array_equal(plain.bodies, recoloured.bodies)
    np.testing.assert_allclose(plain.depth, recoloured.depth, atol=1e-6)
    targets = set(plain.objects) | set(plain.distractors)
    assert plain.distractors  # the scene variation has clutter
    changed = np.abs(plain.rgb.astype(int) - recoloured.rgb.astype(int)).sum(-1) > 30
    on_targets = np.isin(plain.bodies, list(targets))
    for body in targets:
        pixels = plain.bodies == body
        if pixels.sum() > 20:
            assert changed[pixels].mean() > 0.5, body
    assert changed[~on_targets].mean() < 0.05  # shadows and reflections aside, the rest is as it was
    requests = scene_requests(("pick_place",), ("panda",), ("in",), 8, 2, (120, 160), 0, recolour_share=0.5)
    assert [r.recolour for r in requests] == [False, True] * 4


def test_manipulated_training_scenes_show_objects_in_the_fingers_or_put_down_with_exact_correspondences():
    """A scene seen along a scripted demonstration: some of its views have the task object
    lifted or put down (away from where it lay), each view from another camera pose; pixels
    on the object correspond across views where it moved in between (the loss relates them
    through its pose at each view); about half of a batch of requests is manipulated."""
    from kil.sim.correspondence import correspondences
    from kil.sim.episode import make_world
    from kil.training.descriptor_views import MOVED_M, SceneRequest, render_scene, scene_requests

    request = SceneRequest("pick_place", "panda", "in", 4242, 4, (120, 160), False, True)
    world = make_world(request.task, request.robot, request.variation, request.seed)
    try:
        rest = world.object_pose(0)[:3, 3]
    finally:
        world.close()
    views = render_scene(request).views
    assert len(views) == 4
    block = next(body for body, (category, _) in views[0].objects.items() if category == "block")
    where = [v.body_poses[block][:3, 3] for v in views]
    moved = [np.linalg.norm(p - rest) > MOVED_M for p in where]
    assert sum(moved) >= 2
    assert len({tuple(np.round(v.T_base_camera[:3, 3], 3)) for v in views}) == 4
    seen = [(v.bodies == block).sum() for v in views]
    a = max((v for v, m in zip(views, moved) if m), key=lambda v: (v.bodies == block).sum())
    b = max((v for v in views if v is not a), key=lambda v: (v.bodies == block).sum())
    assert np.linalg.norm(a.body_poses[block][:3, 3] - b.body_poses[block][:3, 3]) > MOVED_M, seen
    on_block = np.argwhere(a.bodies == block)[:, ::-1]
    assert len(on_block) > 20
    uv, valid = correspondences(a, b, on_block)
    assert valid.sum() > 0.3 * len(on_block)
    px = np.round(uv[valid]).astype(int)
    assert (b.bodies[px[:, 1], px[:, 0]] == block).mean() > 0.95
    requests = scene_requests(("pick_place",), ("panda",), ("in",), 40, 2, (120, 160), 0, recolour_share=0.5, manipulated_share=0.5)
    flags = np.array([(r.manipulated, r.recolour) for r in requests])
    assert 10 <= flags[:, 0].sum() <= 30 and flags[flags[:, 0], 1].any() and not flags[flags[:, 0], 1].all()


def test_episode_streams_align_a_recorded_demo_at_10_hz(tmp_path):
    from kil.data.episode_streams import read_streams
    from kil.errors import BagError
    from kil.graph import load_graph
    from kil.paths import graph_path
    from kil.sim.demos import episode_seed, record_episode

    result = record_episode("pick_place", "panda", "in", episode_seed(7, 0), tmp_path)
    assert result.success
    streams = read_streams(result.path, load_graph(graph_path("sim_demo")))
    T = len(streams.obs_ns)
    assert abs(T - result.duration_s * 10) <= 2
    steps = np.diff(streams.obs_ns) / 1e9
    assert steps.min() >= 0.06 and steps.max() <= 0.14 and abs(steps.mean() - 0.1) < 0.01  # a 15 Hz camera on a 10 Hz grid
    assert streams.action_position.shape == (T, 16, 3) and streams.action_orientation.shape == (T, 16, 4)
    assert streams.truth is not None and all(k.stamp_ns == t for k, t in zip(streams.truth, streams.obs_ns))
    # The first action of each chunk is the target commanded when the frame was taken: the EE
    # is never far from it, and the gripper closes once in the episode.
    assert np.linalg.norm(streams.action_position[:, 0] - streams.ee_position, axis=1).max() < 0.1
    assert streams.action_gripper[:, 0].max() > 0.03 and streams.action_gripper[:, 0].min() < 0.01
    with pytest.raises(BagError, match=r"topic /zed/zed_node/rgb/color/rect/image .* is not in the bag"):
        read_streams(tmp_path / "episode_0000", load_graph(Path(__file__).parent / "data" / "all_types_graph.yaml"))
