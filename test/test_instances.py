"""Instance matching (IN): each object's keypoints are searched only inside the instance
masks of its category; object slots of one category take distinct instances; a slot
without an instance is not visible (the policy's padding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kil.msgs import RGBD
from kil.perception.instances import InstanceConfig
from kil.perception.keypoints import DetectorConfig, KeypointDetector, ReferenceSet, extraction_config
from kil.perception.segmentation.base import Instances, Segmenter, SegmenterConfig

STRIDE, CELLS = 4, 24  # 96x96 image, 24x24 patch grid
LAYOUT = np.array([[0, 0], [0, 2], [2, 0], [2, 2]])  # one object's keypoints, in cells
SIZE = CELLS * STRIDE


class Masks(Segmenter):
    """A segmenter that returns fixed instances and remembers the prompts it was given."""

    needs_weights = False

    def __init__(self, boxes: list[tuple[tuple[int, int], int]]) -> None:
        super().__init__(SegmenterConfig("fixed", min_score=0.0, min_area_px=1))
        self.boxes = boxes  # ((row, col) of the object's first cell, prompt index or -1)
        self.prompts = None

    def _segment(self, frame, prompts):
        self.prompts = prompts
        masks = np.zeros((len(self.boxes), SIZE, SIZE), bool)
        for k, ((r, c), _) in enumerate(self.boxes):
            masks[k, (r - 1) * STRIDE:(r + 4) * STRIDE, (c - 1) * STRIDE:(c + 4) * STRIDE] = True
        return Instances(masks, np.ones(len(self.boxes), np.float32), np.array([p for _, p in self.boxes], np.int64))


def frame(t_s: float = 0.0) -> RGBD:
    K = np.array([[300.0, 0, SIZE / 2], [0, 300.0, SIZE / 2], [0, 0, 1]])
    return RGBD(int(t_s * 1e9), "camera", np.zeros((SIZE, SIZE, 3), np.uint8), np.ones((SIZE, SIZE), np.float32), K, "camera", np.eye(4))


def features(descriptors: np.ndarray, places: list[tuple[np.ndarray, float]], seed: int = 0) -> np.ndarray:
    """(1, C, h, w): weak noise, and the object's descriptors at each (place, weight): a
    weight below 1 mixes in another direction, so the place matches less well."""
    rng = np.random.default_rng(seed)
    out = 0.02 * rng.standard_normal((descriptors.shape[1], CELLS, CELLS))
    other = rng.standard_normal(descriptors.shape[1])
    for place, weight in places:
        for (dr, dc), d in zip(LAYOUT, descriptors):
            out[:, place[0] + dr, place[1] + dc] = weight * d + (1 - weight) * other / np.linalg.norm(other)
    return out[None].astype(np.float32)


def centres(place) -> np.ndarray:
    return ((np.asarray(place) + LAYOUT)[:, ::-1] + 0.5) * STRIDE


def references(slots: int = 1, categories: int = 1):
    """`slots` objects of category 0 (and one of category 1 if categories == 2), 4 keypoints each, same descriptors."""
    rng = np.random.default_rng(3)
    descriptors = np.linalg.qr(rng.standard_normal((32, 8)))[0].T.astype(np.float32)  # orthonormal
    block, tray = descriptors[:4], descriptors[4:]
    names, rows, group, category = [], [], [], []
    for s in range(slots):
        names += [f"block[{s}]/{p}" for p in "abcd"]
        rows.append(block)
        group += [s] * 4
        category += [0] * 4
    if categories == 2:
        names += [f"tray/{p}" for p in "abcd"]
        rows.append(tray)
        group += [slots] * 4
        category += [1] * 4
    n = len(names)
    uv = np.tile(centres((6, 6)), (n // 4, 1))
    return (ReferenceSet(tuple(names), np.array(group, np.int32), np.concatenate(rows), "test", uv, np.array(group), 0.5,
                         np.array(category), ("a small block", "a tray")[:categories]), block, tray)


def test_the_search_stays_inside_the_objects_instances():
    """A better look-alike outside every mask wins under image matching, not under instance
    matching; the segmenter is prompted with each category's text."""
    refs, block, _ = references()
    feats = features(block, [(np.array([4, 4]), 0.9), (np.array([16, 16]), 1.0)])
    segmenter = Masks([((4, 4), 0)])
    im = KeypointDetector(refs, DetectorConfig()).detect([frame()], feats)[0]
    inn = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig()), segmenter).detect([frame()], feats)[0]
    assert np.allclose(im.uv, centres((16, 16)), atol=3) and im.visible.all()
    assert np.allclose(inn.uv, centres((4, 4)), atol=3) and inn.visible.all()
    assert [p.text for p in segmenter.prompts] == ["a small block"]
    click = segmenter.prompts[0].points  # a point-prompted backend's click: image matching's best keypoint of the slot
    assert click.shape == (1, 2) and np.abs(centres((16, 16)) - click).max(1).min() <= 2


def test_slots_of_a_category_take_distinct_instances_and_missing_ones_are_not_visible():
    refs, block, tray = references(slots=2, categories=2)
    feats = features(block, [(np.array([4, 4]), 1.0), (np.array([16, 4]), 0.95)])
    two = Masks([((4, 4), -1), ((16, 4), 0), ((10, 16), 1)])  # the tray's instance is labelled for the tray only
    out = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig()), two).detect([frame()], feats)[0]
    first, second = out.uv[:4], out.uv[4:8]
    assert out.visible[:8].all()
    places = [centres((4, 4)), centres((16, 4))]
    near = [[np.abs(found - place).max() <= 2 for place in places] for found in (first, second)]
    assert near in ([[True, False], [False, True]], [[False, True], [True, False]])  # one instance each
    assert not out.visible[8:].any()  # the tray's descriptors are nowhere in its mask: below min_score

    one = Masks([((4, 4), 0)])
    out = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig()), one).detect([frame()], feats)[0]
    assert out.visible[:4].sum() + out.visible[4:8].sum() == 4 and (out.visible[:4].all() or out.visible[4:8].all())
    none = Masks([((16, 4), 1)])  # only an instance of the other category
    out = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig()), none).detect([frame()], feats)[0]
    assert not out.visible[:8].any()


def test_look_alikes_are_numbered_nearest_the_camera_first_and_then_kept_by_permanence():
    """Two blocks of one category: at a stream's start the first slot takes the block nearer
    the camera (horizontally; here the camera looks down at the image centre), not the one
    that matches best; a frame later, with the blocks moved 13 mm so that the order by
    place would flip, each slot stays on its block. A new stream numbers them afresh."""
    refs, block, _ = references(slots=2)
    config = DetectorConfig(instances=InstanceConfig())
    a, b = np.array([4, 9]), np.array([17, 11])  # object centres 6.7 and 6.5 cells from the image centre
    step = np.array([1, 0])  # then 5.7 and 7.5 cells

    def seen(detector, t, a, b):
        detector.instances.segmenter = Masks([(tuple(a), 0), (tuple(b), 0)])
        out = detector.detect([frame(t)], features(block, [(a, 1.0), (b, 0.95)]))[0]  # a matches better
        assert out.visible.all()
        return [min((0, 1), key=lambda k: np.abs(out.uv[4 * s:4 * s + 4] - centres((a, b)[k])).max()) for s in (0, 1)]

    detector = KeypointDetector(refs, config, Masks([]))
    assert seen(detector, 0.0, a, b) == [1, 0]  # b is nearer: block[0]
    assert seen(detector, 0.1, a + step, b + step) == [1, 0]  # a is nearer now; the slots keep their blocks
    assert seen(KeypointDetector(refs, config, Masks([])), 0.0, a + step, b + step) == [0, 1]


def test_an_instance_out_of_the_objects_reach_is_not_taken():
    """Object permanence holds under instance matching too: once seen at A, the block is not
    taken from an instance 48 px away a moment later (its place is uncovered, reach ~3 cm)."""
    refs, block, _ = references()
    detector = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig()), Masks([((4, 4), 0)]))
    first = detector.detect([frame(0.0)], features(block, [(np.array([4, 4]), 1.0)]))[0]
    assert first.visible.all()
    detector.instances.segmenter = Masks([((16, 16), 0)])
    later = detector.detect([frame(0.1)], features(block, [(np.array([16, 16]), 1.0)]))[0]
    assert not later.visible.any()


def test_extraction_settings_are_checked():
    from kil.perception.keypoints import TrackingConfig

    assert extraction_config("im", "depth_colour") == (None, None)
    assert extraction_config("in", "sam3") == (InstanceConfig("sam3"), None)
    assert extraction_config("t", "sam3", "cotracker", "in") == (InstanceConfig("sam3"), TrackingConfig("cotracker"))
    assert extraction_config("t") == (None, TrackingConfig("lucas_kanade"))
    with pytest.raises(ValueError, match="extraction: expected one of im, in, t, got 'x'"):
        extraction_config("x", "depth_colour")
    with pytest.raises(ValueError, match="track_init: tracking starts from im or in, got 't'"):
        extraction_config("t", track_init="t")
    with pytest.raises(ValueError, match="similarity_vectors: not available with instance matching or tracking"):
        DetectorConfig(similarity_vectors=True, instances=InstanceConfig())


def test_two_objects_never_take_the_same_object_twice():
    """Point prompts on one block give two near-identical masks: one object takes it, the
    other is not visible."""
    refs, block, _ = references(slots=2)
    feats = features(block, [(np.array([4, 4]), 1.0)])
    twice = Masks([((4, 4), 0), ((4, 4), 0)])
    out = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig()), twice).detect([frame()], feats)[0]
    assert out.visible[:4].all() != out.visible[4:].all() and out.visible.sum() == 4


def test_the_detector_loads_its_segmenter_and_tracker_on_the_device_it_is_given():
    """The keypoints node's and the builder's `device` reaches the models the detector loads
    (not their YAML's "auto"); a config value outside the backends' choices is a one-line error."""
    import torch

    from kil.errors import ConfigError
    from kil.perception.keypoints import TrackingConfig

    refs, _, _ = references()
    config = DetectorConfig(instances=InstanceConfig(), tracking=TrackingConfig())
    detector = KeypointDetector(refs, config, device="cuda")  # nothing is put on it until a frame comes
    assert detector.instances.segmenter.device.type == "cuda" and detector.tracker.device.type == "cuda"
    assert KeypointDetector(refs, config).instances.segmenter.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        KeypointDetector(refs, config, device="tpu")


@pytest.mark.parametrize("views", ["initial", "refine"])
def test_an_object_not_tracked_yet_is_searched_with_its_views_inside_its_instances(views):
    """Instance matching with a spec's views. First frame: only the tray is in view, found by
    its reference (every object untracked). A frame later the block appears turned (its
    views' descriptors there, unlike its reference's) while the tray is tracked: the block,
    not tracked yet, is searched with its views too and found ("initial"); with the views
    only refining ("refine") it is not. The tray is found by its reference either way."""
    refs, block, tray = references(categories=2)
    rng = np.random.default_rng(7)
    turned = rng.standard_normal((4, 32))
    turned -= turned @ np.concatenate([block, tray]).T @ np.concatenate([block, tray])  # unlike every reference descriptor
    turned = (turned / np.linalg.norm(turned, axis=1, keepdims=True)).astype(np.float32)
    refs = dataclasses.replace(refs, view_descriptors=turned, view_owner=np.arange(4))
    detector = KeypointDetector(refs, DetectorConfig(instances=InstanceConfig(), views=views), Masks([((16, 16), 1)]))
    first = detector.detect([frame(0.0)], features(tray, [(np.array([16, 16]), 1.0)]))[0]
    assert not first.visible[:4].any() and first.visible[4:].all()
    np.testing.assert_allclose(first.uv[4:], centres((16, 16)), atol=2)
    detector.instances.segmenter = Masks([((4, 4), 0), ((16, 16), 1)])
    later = detector.detect([frame(0.1)], features(turned, [(np.array([4, 4]), 1.0)], seed=1)
                            + features(tray, [(np.array([16, 16]), 1.0)], seed=2))[0]
    assert later.visible[4:].all()
    np.testing.assert_allclose(later.uv[4:], centres((16, 16)), atol=2)
    assert later.visible[:4].all() == (views == "initial") and later.visible[:4].any() == (views == "initial")
    if views == "initial":
        np.testing.assert_allclose(later.uv[:4], centres((4, 4)), atol=2)
