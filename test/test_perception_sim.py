"""Perception on simulated frames: exact matching on real renders, cross-instance
correspondences for descriptor training, oracle reference specs, the shipped descriptor net
and the sim task specs, and the keypoints node on the simulated rig."""

from __future__ import annotations

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
    assert np.abs(kps.uv - ref_uv).max() <= 0.5 + 1e-6  # the nearest pixel to each (sub-pixel) reference
    assert kps.visible.all()
    visible = [truth.names.index(n.replace("[0]", "")) for n in kps.names]
    assert np.linalg.norm(kps.xyz - truth.xyz[visible], axis=1).max() < 0.02  # lifted within 2 cm


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
nodes:
  rig:
    stage: sim_rig
    params: {task: pick_place, seed: 21, camera_rate_hz: 15}
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
