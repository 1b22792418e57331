"""Perception: exact fast image matching, 3D lifting, reference specs, feature backends
(tiny random transformers/diffusers models saved to a temp dir and loaded offline), and the
features + keypoints nodes in the local runtime."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from PIL import Image as PILImage

from kil.errors import ConfigError
from kil.graph import load_graph
from kil.perception.features.base import backend_names, describe, load_extractor
from kil.perception.features.descriptor_net import DescriptorNet, NetArchitecture, load_net, save_net
from kil.perception.lifting import lift, read_depth
from kil.perception.matching import Matcher, naive_similarity, sample_descriptors
from kil.perception.spec import Category, KeypointSpec, Reference, View, load_spec, save_spec
from kil.runtimes.local import LocalRuntime

# ---------------------------------------------------------------- matching


def smooth_image(rng: np.random.Generator, h: int = 120, w: int = 160) -> np.ndarray:
    """A textured RGB image: low-frequency noise upsampled, so SIFT finds structure."""
    small = torch.from_numpy(rng.random((1, 3, h // 8, w // 8)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)[0]
    return (big.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def assert_same_matches(refs, features, image_size):
    """The fast matcher's argmax equals the naive one's (or ties it within 1e-5) and its
    scores equal the naive maxima within 1e-4."""
    matches = Matcher(refs).match(features, image_size)
    naive = naive_similarity(refs, features, image_size)
    B, N = naive.shape[:2]
    flat = naive.flatten(2)
    best = flat.max(dim=2).values
    H, W = image_size
    for b in range(B):
        for n in range(N):
            u, v = matches.uv[b, n].astype(int)
            at_fast = float(naive[b, n, v, u])
            assert at_fast >= float(best[b, n]) - 1e-5, (b, n)
            assert abs(matches.score[b, n] - float(best[b, n])) < 1e-4
    assert matches.valid.all()
    return matches


@pytest.mark.parametrize("shape", [(1, 384, 30, 40, 480, 640), (2, 16, 17, 23, 120, 160), (3, 8, 5, 7, 41, 53), (1, 4, 1, 1, 9, 9)])
def test_fast_matcher_is_exact_on_random_feature_maps(shape):
    B, C, h, w, H, W = shape
    rng = np.random.default_rng(sum(shape))
    features = rng.standard_normal((B, C, h, w)).astype(np.float32)
    refs = rng.standard_normal((6, C)).astype(np.float32)
    fast = Matcher(refs).similarity(features, (H, W))
    np.testing.assert_allclose(fast, naive_similarity(refs, features, (H, W)).numpy(), atol=1e-5)
    assert_same_matches(refs, features, (H, W))


def test_a_keypoint_with_several_views_is_matched_by_its_best_view():
    """Several descriptors of one keypoint (its reference and views): the similarity is the
    best view's at each pixel, the match its argmax, candidates are distinct places of any
    view, best first; the similarity vectors and the score at a given pixel agree."""
    rng = np.random.default_rng(7)
    B, C, h, w, H, W = 2, 16, 9, 12, 72, 96
    features = rng.standard_normal((B, C, h, w)).astype(np.float32)
    refs = rng.standard_normal((5, C)).astype(np.float32)
    owner = np.array([0, 1, 2, 0, 1])
    matcher = Matcher(refs, owner)
    naive = naive_similarity(refs, features, (H, W)).numpy()
    best_view = np.stack([naive[:, owner == n].max(1) for n in range(3)], 1)  # (B, 3, H, W)
    np.testing.assert_allclose(matcher.similarity(features, (H, W)), best_view, atol=1e-5)
    matches = matcher.match(features, (H, W), similarity_vectors=True, candidates=4)
    assert matches.uv.shape == (B, 3, 2) and matches.candidate_uv.shape == (B, 3, 4, 2)
    for b in range(B):
        for n in range(3):
            u, v = matches.uv[b, n].astype(int)
            assert best_view[b, n, v, u] >= best_view[b, n].max() - 1e-5
            assert abs(matches.score[b, n] - best_view[b, n].max()) < 1e-4
            places, scores = matches.candidate_uv[b, n], matches.candidate_score[b, n]
            np.testing.assert_array_equal(places[0], matches.uv[b, n])
            assert (np.diff(scores) <= 0).all()
            for k, (cu, cv) in enumerate(places.astype(int)):
                assert abs(scores[k] - best_view[b, n, cv, cu]) < 1e-4
                assert all(np.abs(places[k] - places[j]).max() > 3 for j in range(k))
            for j in range(3):
                assert abs(matches.similarity[b, n, j] - best_view[b, j, v, u]) < 1e-4
        descriptors = sample_descriptors(features[b], matches.uv[b], (H, W))
        np.testing.assert_allclose(matcher.scores(descriptors), matches.score[b], atol=1e-4)
    with pytest.raises(ValueError, match="owner"):
        Matcher(refs, np.array([0, 2, 2, 0, 2]))  # keypoint 1 has no descriptor


def test_refine_moves_a_keypoint_to_its_best_view_within_the_radius():
    """`Matcher.refine`: each chosen keypoint goes to the pixel of highest similarity (the
    best of its descriptors, as the naive full-resolution computation has it) within the
    radius of where it was found; the others stay, with a NaN score."""
    rng = np.random.default_rng(11)
    C, h, w, H, W = 16, 9, 12, 72, 96
    features = rng.standard_normal((C, h, w)).astype(np.float32)
    refs = rng.standard_normal((5, C)).astype(np.float32)
    owner = np.array([0, 1, 2, 0, 1])
    best_view = np.stack([naive_similarity(refs, features[None], (H, W)).numpy()[0, owner == n].max(0) for n in range(3)])
    uv = np.array([[20.0, 30.0], [3.0, 2.0], [50.0, 40.0]])
    which = np.array([True, True, False])
    fine_uv, fine_score = Matcher(refs, owner).refine(features, (H, W), uv, which, radius=5)
    for n in (0, 1):
        u0, v0 = uv[n].astype(int)
        window = best_view[n, max(v0 - 5, 0): v0 + 6, max(u0 - 5, 0): u0 + 6]  # clipped at the image border
        assert abs(fine_score[n] - window.max()) < 1e-5
        u, v = fine_uv[n].astype(int)
        assert abs(u - u0) <= 5 and abs(v - v0) <= 5 and abs(best_view[n, v, u] - window.max()) < 1e-5
    np.testing.assert_array_equal(fine_uv[2], uv[2])
    assert np.isnan(fine_score[2])


@pytest.mark.parametrize("sizes", [(6, 8, 48, 64), (30, 40, 480, 640), (90, 120, 480, 640)])
def test_scores_stay_cosines_where_neighbouring_features_cancel(sizes):
    """Neighbouring patch features of opposite sign (a checkerboard, plus near-exact
    cancellation along one column): interpolated vectors shrink towards zero between them,
    where a Gram expansion with mismatched or rounded weights gives scores far outside
    [-1, 1]. Every score is a cosine, within 2e-6 of the float64 truth, and equal to the
    naive float32 computation within 1e-5 wherever that one is itself within 5e-6 of the
    truth (next to an exact zero crossing the naive path's own rounding dominates)."""
    h, w, H, W = sizes
    rng = np.random.default_rng(h)
    C = 32
    base = rng.standard_normal(C).astype(np.float32)
    sign = np.where((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    features = (base[:, None, None] * sign[None] * rng.uniform(0.5, 2.0, (1, h, w)) + 1e-3 * rng.standard_normal((C, h, w)))
    features[:, :, 2] = -features[:, :, 1] * (1 + 1e-6)  # a column of near-exact cancellation
    features = features[None].astype(np.float32)
    refs = np.concatenate([base[None], rng.standard_normal((5, C))]).astype(np.float32)
    fast = Matcher(refs).similarity(features, (H, W))
    naive = naive_similarity(refs, features, (H, W)).numpy()
    up = torch.nn.functional.interpolate(torch.from_numpy(features).double(), size=(H, W), mode="bilinear", align_corners=False)
    unit = torch.from_numpy(refs).double()
    truth = torch.einsum("nc,bchw->bnhw", unit / unit.norm(dim=1, keepdim=True), up / up.norm(dim=1, keepdim=True)).numpy()
    assert np.abs(fast).max() <= 1.0
    assert np.abs(fast - truth).max() <= 2e-6
    meaningful = np.abs(naive - truth) <= 5e-6
    assert meaningful.mean() > 0.999
    assert np.abs(fast - naive)[meaningful].max() <= 1e-5
    matches = Matcher(refs).match(features, (H, W))
    assert np.abs(matches.score).max() <= 1.0
    best = truth.reshape(1, len(refs), -1).max(2)
    np.testing.assert_allclose(matches.score, best, atol=2e-6)
    u, v = matches.uv[0].astype(int).T
    assert (truth[0, np.arange(len(refs)), v, u] >= best[0] - 2e-6).all()


@pytest.mark.parametrize("seed", range(4))
def test_pruned_search_is_exact_on_smooth_feature_maps(seed):
    """Spatially smooth features (as a ViT's) let the cell bounds skip most of the image; the
    result is still the full-resolution argmax."""
    from kil.bench.matching import synthetic_features
    from kil.perception.matching import _axis, _patch_terms, _search_frame

    features, refs = synthetic_features("smooth", 64, 24, 32, 6, seed=seed)
    matcher = Matcher(refs)
    terms = _patch_terms(matcher.references, features.numpy())
    assert _search_frame(terms, 0, _axis(240, 24), _axis(320, 32), 320) is not None  # pruned, not dense
    assert_same_matches(refs, features, (240, 320))


@pytest.mark.parametrize("h,w", [(5, 7), (1, 6), (6, 1), (1, 1)])
def test_patch_terms_equal_the_products_of_the_edge_padded_grid(h, w):
    """The terms assembled from the unpadded features' neighbour products are the inner
    products of the corners of every cell of the grid padded by repeating its last row and
    column (what torch's bilinear upsampling clamps to), single rows and columns included."""
    from kil.perception.matching import _patch_terms

    rng = np.random.default_rng(h * 10 + w)
    features = rng.standard_normal((2, 16, h, w)).astype(np.float32)
    refs = rng.standard_normal((3, 16)).astype(np.float32)
    p = np.pad(features.astype(np.float64), ((0, 0), (0, 0), (0, 1), (0, 1)), mode="edge")

    def inner(x, y):
        return (x * y).sum(1)

    a, b, c, d = p[:, :, :-1, :-1], p[:, :, :-1, 1:], p[:, :, 1:, :-1], p[:, :, 1:, 1:]
    expected = {"dots": np.einsum("nc,bchw->bnhw", refs.astype(np.float64), p), "sq": inner(p, p),
                "right": inner(p[..., :-1], p[..., 1:]), "ac": inner(a, c), "ad": inner(a, d), "bc": inner(b, c), "bd": inner(b, d)}
    terms = _patch_terms(refs, features)
    assert set(terms.exact) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(terms.exact[key], value, rtol=1e-12, atol=1e-10, err_msg=key)
    np.testing.assert_allclose(terms.ad, expected["ad"], rtol=1e-5, atol=1e-4)  # and its float32 copy for the pixel passes


@pytest.mark.parametrize("kind,shape", [("random", (384, 30, 40, 480, 640)), ("random", (8, 5, 7, 41, 53)), ("smooth", (64, 24, 32, 240, 320)),
                                        ("duplicated", (16, 6, 8, 60, 80)), ("low-rank", (64, 12, 16, 120, 160))])
def test_cell_bounds_hold_everywhere_and_prune_random_features(kind, shape):
    """No pixel's similarity exceeds its cell's bound: the last cell row and column (whose
    corners are replicated) included, cells whose corners repeat a feature (a flat
    surface) and features of rank 3 (no span bound, many nearly cancelling neighbours)
    included; matches stay exact. On random features, where corners point in unrelated directions,
    the span bound still rules out most cells, so the search is not the dense fallback."""
    from kil.bench.matching import synthetic_features
    from kil.perception.matching import _axis, _cell_bounds, _patch_terms, _search_frame, _span_bounds

    C, h, w, H, W = shape
    features, refs = synthetic_features(kind if kind in ("smooth", "low-rank") else "random", C, h, w, 5, seed=C)
    if kind == "duplicated":
        features[:, :, 2:5, 3:6] = features[:, :, 2:3, 3:4]  # one feature over a 3x3 patch block
    matcher = Matcher(refs)
    terms = _patch_terms(matcher.references, features.numpy())
    y, x = _axis(H, h), _axis(W, w)
    bound = np.minimum(_cell_bounds(terms, 0), _span_bounds(terms, 0))
    naive = naive_similarity(refs, features, (H, W))[0].numpy()
    rows_max = np.maximum.reduceat(naive, y.start[y.count > 0], axis=1)
    cell_max = np.maximum.reduceat(rows_max, x.start[x.count > 0], axis=2)  # (N, cells with pixels)
    for each in (_cell_bounds(terms, 0), _span_bounds(terms, 0)):
        assert (cell_max <= each[:, y.count > 0][:, :, x.count > 0] + 1e-6).all()
    if kind == "random" and C >= 64:  # in few dimensions four corners span much of the space
        assert _search_frame(terms, 0, y, x, W) is not None
        assert (bound >= naive.reshape(5, -1).max(1)[:, None, None] - 1e-5).mean() < 0.1  # cells left to evaluate
    assert_same_matches(refs, features, (H, W))


def test_fast_matcher_is_exact_on_real_image_features():
    rng = np.random.default_rng(3)
    images = np.stack([smooth_image(rng, 240, 320) for _ in range(2)])
    extractor = load_extractor("sift", {"input_size": [240, 320]})
    features = extractor.extract(images)
    uv = np.array([[40, 30], [200, 100], [300, 220], [10, 200], [160, 120], [77, 55]], float)
    refs = sample_descriptors(features[0], uv, (240, 320))
    matches = assert_same_matches(refs, features, (240, 320))
    # In its own image every reference keypoint is found where it was taken (score 1).
    np.testing.assert_array_equal(matches.uv[0], uv)
    np.testing.assert_allclose(matches.score[0], 1.0, atol=1e-5)


def test_sampled_descriptors_equal_upsampled_features_at_pixels():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 6, 8)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(features)[None], size=(48, 64), mode="bilinear", align_corners=False)[0]
    uv = np.array([[0, 0], [63, 47], [10, 31], [5, 2]])
    np.testing.assert_allclose(sample_descriptors(features, uv, (48, 64)), up[:, uv[:, 1], uv[:, 0]].T.numpy(), atol=1e-6)


def test_similarity_vectors_mask_and_non_finite_frames():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((3, 8, 6, 8)).astype(np.float32)
    features[1, 2, 3, 4] = np.nan
    refs = rng.standard_normal((4, 8)).astype(np.float32)
    matcher = Matcher(refs)
    mask = np.ones((3, 48, 64), bool)
    mask[2, :, 32:] = False
    m = matcher.match(features, (48, 64), similarity_vectors=True, mask=mask)
    assert m.valid[0].all() and not m.valid[1].any() and m.valid[2].all()
    assert (m.score[1] == 0).all()
    assert (m.uv[2, :, 0] < 32).all()  # found inside the mask only
    sim = naive_similarity(refs, features[[0]], (48, 64))[0]
    for i, (u, v) in enumerate(m.uv[0].astype(int)):
        np.testing.assert_allclose(m.similarity[0, i], sim[:, v, u].numpy(), atol=1e-5)
        assert m.similarity[0, i, i] == pytest.approx(m.score[0, i], abs=1e-6)
    with pytest.raises(ValueError, match="references"):
        Matcher(np.full((2, 3), np.nan))


# ---------------------------------------------------------------- lifting


def camera():
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = [0.4, 0.0, 1.2]
    return K, T


def test_lift_is_metric_and_reads_millimetres():
    K, T = camera()
    depth = np.full((480, 640), 1.0, np.float32)
    uv = np.array([[319.5, 239.5], [419.5, 239.5], [319.5, 139.5]])
    xyz, visible = lift(uv, depth, K, T)
    assert visible.all()
    np.testing.assert_allclose(xyz, [[0.4, 0.0, 0.2], [0.6, 0.0, 0.2], [0.4, 0.2, 0.2]], atol=1e-6)
    xyz_mm, _ = lift(uv, np.full((480, 640), 1000, np.uint16), K, T)
    np.testing.assert_allclose(xyz_mm, xyz, atol=1e-6)


def test_depth_read_ignores_invalid_values_and_reports_invisible():
    depth = np.full((20, 20), 0.8, np.float32)
    depth[10, 10] = np.nan
    depth[5, 5], depth[5, 6] = np.inf, -np.inf
    depth[15, 15] = 0.0
    depth[0:3, 0:3] = np.nan
    depth[1, 2] = 0.79  # the only valid reading next to (1, 1)
    got = read_depth(depth, np.array([[10, 10], [5, 5], [15, 15], [1, 1], [-3, 4], [np.nan, 2], [19.4, 19.4]]), radius=2)
    np.testing.assert_allclose(got[[0, 1, 2]], 0.8)
    assert got[3] == pytest.approx(0.79)
    assert np.isnan(got[4]) and np.isnan(got[5])
    assert got[6] == pytest.approx(0.8)
    K, T = camera()
    for bad in (np.full((480, 640), np.nan, np.float32), np.zeros((480, 640), np.uint16), np.full((480, 640), np.inf, np.float32)):
        xyz, visible = lift(np.array([[100.0, 100.0], [300, 200]]), bad, K, T)
        assert not visible.any() and np.isnan(xyz).all()


def test_depth_read_at_an_edge_takes_one_surface_or_none():
    """An invalid seam between an object (0.5 m) and the background (2.0 m), as real RGB-D
    cameras leave along edges: a keypoint on a one-pixel seam is at the object's edge and
    takes the object in front; on a wider seam it takes the surface of its nearest readings,
    or is invisible when they are on both; never the 1.25 m between them (a point in mid-air)."""
    depth = np.full((20, 20), 2.0, np.float32)
    depth[:, :10] = 0.5
    depth[:, 10] = np.nan  # a one-pixel seam
    depth[:, 11:15] = np.nan  # widening to five pixels in the lower half
    depth[:10, 11:15] = 2.0
    got = read_depth(depth, np.array([[10, 5], [10, 15], [12, 15], [14, 15], [0, 3], [19, 19], [9, 0]]), radius=3)
    assert got[0] == pytest.approx(0.5)  # one-pixel seam: the object in front
    assert np.isnan(got[2])  # middle of a five-pixel seam, object and background equally near: neither for sure
    assert got[1] == pytest.approx(0.5)  # nearer the object
    assert got[3] == pytest.approx(2.0)  # nearer the background
    assert got[4] == pytest.approx(0.5) and got[5] == pytest.approx(2.0) and got[6] == pytest.approx(0.5)  # valid pixels, partial windows
    corner = np.full((8, 8), np.nan, np.float32)
    corner[0, 3], corner[3, 0] = 0.6, 1.8  # a partial window at the image corner, both surfaces 3 px away
    assert np.isnan(read_depth(corner, np.array([[0, 0]]), radius=3)[0])
    corner[1, 1] = 0.62  # a reading one pixel away: its surface
    assert read_depth(corner, np.array([[0, 0]]), radius=3)[0] == pytest.approx(0.62)
    # A valid pixel just off an object's silhouette (a block's far edge, a tray's rim) takes
    # the object; from three pixels on (matches are good to about two), the background.
    edge = np.full((9, 9), 1.3, np.float32)
    edge[:, :4] = 1.0
    got = read_depth(edge, np.array([[4, 4], [3, 4], [5, 4], [6, 4], [7, 4]]), radius=3)
    np.testing.assert_allclose(got, [1.0, 1.0, 1.0, 1.3, 1.3])
    sloped = np.linspace(0.9, 1.1, 20, dtype=np.float32)[None].repeat(20, 0)  # one tilted surface: no edge inside
    sloped[10, 10] = np.nan
    assert read_depth(sloped, np.array([[10, 10]]), radius=3)[0] == pytest.approx(sloped[10, 9:12:2].mean(), abs=1e-6)


# ---------------------------------------------------------------- reference spec


def write_spec(tmp_path, image: np.ndarray, keypoints: dict, categories: int = 1):
    PILImage.fromarray(image).save(tmp_path / "ref.png")
    spec = KeypointSpec("toy", [Category(f"thing{c}", "a thing", [Reference("ref.png", dict(keypoints))]) for c in range(categories)])
    return save_spec(spec, tmp_path)


def test_spec_round_trip_and_names(tmp_path):
    rng = np.random.default_rng(0)
    PILImage.fromarray(smooth_image(rng)).save(tmp_path / "a.png")
    spec = KeypointSpec("two", [
        Category("block", "a block", [Reference("a.png", {"top": (10.0, 20.5), "corner": (159.0, 119.0)}),
                                      Reference("a.png", {"top": (30.0, 40.0), "corner": (0.0, 0.0)})]),
        Category("tray", "a tray", [Reference("a.png", {"center": (80.0, 60.0)})]),
    ])
    path = save_spec(spec, tmp_path)
    loaded = load_spec(path)
    assert loaded.spec == spec
    assert load_spec(tmp_path).spec == spec  # a directory works too
    layout = loaded.layout()
    assert layout.names == ("block[0]/top", "block[0]/corner", "block[1]/top", "block[1]/corner", "tray/center")
    assert layout.instance.tolist() == [0, 0, 1, 1, 0]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["categories"][0]["references"][0].update(image="missing.png"), r"categories\[0\]\.references\[0\]\.image: reference image .*missing\.png does not exist"),
    (lambda d: d["categories"][0]["references"][0]["keypoints"].update(off=[160, 5]), r"references\[0\]\.keypoints\.off: \(160\.0, 5\.0\) lies outside the 160x120 image ref\.png"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), "category names must be unique"),
    (lambda d: d["categories"][0]["references"][0].update(keypoints={}), "at least one keypoint"),
    (lambda d: d["categories"][0].update(references=[d["categories"][0]["references"][0], {"image": "ref.png", "keypoints": {"other": [1, 1]}}]), "must name the same points"),
    (lambda d: d.update(colour="red"), "colour: unknown key"),
    (lambda d: d["categories"][0]["references"][0].update(views=[{"image": "gone.png", "keypoints": {"top": [1, 1]}}]),
     r"references\[0\]\.views\[0\]\.image: reference image .*gone\.png does not exist"),
    (lambda d: d["categories"][0]["references"][0].update(views=[{"image": "ref.png", "keypoints": {"top": [1, 200]}}]),
     r"references\[0\]\.views\[0\]\.keypoints\.top: \(1\.0, 200\.0\) lies outside"),
    (lambda d: d["categories"][0]["references"][0].update(views=[{"image": "ref.png", "keypoints": {"side": [1, 1]}}]),
     r"views\[0\]\.keypoints: names points the reference does not have: \['side'\]"),
])
def test_bad_specs_are_one_line_errors(tmp_path, edit, message):
    path = write_spec(tmp_path, smooth_image(np.random.default_rng(0)), {"top": (10, 10)})
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_spec_views_round_trip_subset_and_fingerprint(tmp_path):
    """Views load as written, a reference without views is written without the key, a subset
    keeps a view's selected points (dropping a view left without any), and the fingerprint
    follows a view's image."""
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png"):
        PILImage.fromarray(smooth_image(rng)).save(tmp_path / name)
    spec = KeypointSpec("views", [
        Category("block", "a block", [Reference("a.png", {"top": (10.0, 20.0), "corner": (30.0, 40.0)},
                                                [View("b.png", {"top": (50.0, 60.0)})])]),
        Category("tray", "a tray", [Reference("a.png", {"center": (80.0, 60.0)})]),
    ])
    path = save_spec(spec, tmp_path)
    loaded = load_spec(path)
    assert loaded.spec == spec
    written = yaml.safe_load(path.read_text())
    assert "views" in written["categories"][0]["references"][0] and "views" not in written["categories"][1]["references"][0]
    (view, uv, index), = loaded.views()
    assert view.image == "b.png" and uv.tolist() == [[50.0, 60.0]] and index.tolist() == [0]  # block/top
    assert loaded.subset({"block/top"}).categories[0].references[0].views == [View("b.png", {"top": (50.0, 60.0)})]
    assert loaded.subset({"block/corner", "tray/center"}).categories[0].references[0].views == []
    before = loaded.fingerprint()
    PILImage.fromarray(smooth_image(rng)).save(tmp_path / "b.png")
    assert load_spec(path).fingerprint() != before


def test_a_keypoint_named_twice_is_refused(tmp_path):
    path = write_spec(tmp_path, smooth_image(np.random.default_rng(0)), {"top": (10, 10)})
    text = path.read_text()
    assert "      top: [10, 10]\n" in text
    path.write_text(text.replace("      top: [10, 10]\n", "      top: [10, 10]\n      top: [20, 20]\n"))
    with pytest.raises(ConfigError, match=r"keypoints\.yaml: line \d+ invalid YAML: duplicate key 'top'"):
        load_spec(path)


def test_a_bad_spec_never_overwrites_a_good_one(tmp_path):
    path = write_spec(tmp_path, smooth_image(np.random.default_rng(0)), {"top": (10, 10)})
    before = path.read_text()
    with pytest.raises(ConfigError, match="outside"):
        save_spec(KeypointSpec("toy", [Category("x", "", [Reference("ref.png", {"a": (500.0, 1.0)})])]), tmp_path)
    assert path.read_text() == before


# ---------------------------------------------------------------- feature backends


def tiny_transformers_checkpoints(root):
    """Tiny random DINOv2 / DINOv3 / RADIO / SAM checkpoints written with save_pretrained."""
    import transformers as T

    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    models = {
        "dinov2": T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(patch_size=14, image_size=56, num_register_tokens=2, **vit)),
        "dinov3": T.DINOv3ViTModel(T.DINOv3ViTConfig(patch_size=16, image_size=64, num_register_tokens=2, **vit)),
        "radio": T.RadioModel(T.RadioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=16, max_img_size=256, image_size=64)),
        "sam": T.SamVisionModel(T.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=128,
                                                  patch_size=16, global_attn_indexes=[1], window_size=4, mlp_dim=64)),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {"dinov2": ((56, 70), 32, (4, 5)), "dinov3": ((48, 64), 32, (3, 4)), "radio": ((48, 64), 32, (3, 4)), "sam": ((96, 128), 16, (6, 8))}


def tiny_stable_diffusion(root):
    """A tiny random Stable Diffusion pipeline in the diffusers layout."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100,
                                        max_position_embeddings=77))
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (root / "vocab" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab" / "vocab.json"), str(root / "vocab" / "merges.txt"))
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDPMScheduler(clip_sample=False), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(root / "dift")


def backend_yaml(tmp_path, name, **fields):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"backend": fields.pop("backend", name), **fields}))
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    expected = tiny_transformers_checkpoints(root)
    tiny_stable_diffusion(root)
    return root, expected


def test_transformers_backends_load_tiny_checkpoints_offline(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, expected = tiny_models
    images = np.stack([smooth_image(np.random.default_rng(i), 48, 64) for i in range(3)])
    for name, (input_size, channels, grid) in expected.items():
        extractor = load_extractor(backend_yaml(tmp_path, name, weights=str(root / name), input_size=list(input_size), batch_size=2))
        assert extractor.dtype == torch.float32 and extractor.device.type == "cpu"
        features = extractor.extract(images)
        assert features.shape == (3, channels, *grid) and features.dtype == torch.float32, name
        assert torch.isfinite(features).all()
        torch.testing.assert_close(extractor.extract(images[1]), features[1:2])  # batching changes nothing


def test_dift_backend_runs_the_unet_once_with_an_ensemble(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, _ = tiny_models
    path = backend_yaml(tmp_path, "dift", weights=str(root / "dift"), input_size=[64, 96], ensemble_size=3, timestep=261, up_ft_index=1)
    extractor = load_extractor(path)
    calls = []
    extractor.unet.up_blocks[-1].register_forward_hook(lambda *a: calls.append("after"))
    image = smooth_image(np.random.default_rng(0), 48, 64)
    features = extractor.extract(image)
    assert features.shape == (1, 32, 32, 48) and torch.isfinite(features).all()
    assert calls == []  # stopped at up-block 1 (the last block never ran)
    torch.testing.assert_close(extractor.extract(image), features)  # seeded noise: deterministic
    with pytest.raises(ConfigError, match=r"up_ft_index: 5 but the UNet has 2 up-blocks"):
        load_extractor(backend_yaml(tmp_path, "dift", weights=str(root / "dift"), input_size=[64, 96], up_ft_index=5))


def test_missing_weights_name_the_config_key_and_path(tmp_path):
    for name in ("dinov2", "dinov3", "radio", "sam", "dift", "descriptor_net"):
        path = backend_yaml(tmp_path, name, weights="no/such/dir" if name != "descriptor_net" else "missing.safetensors")
        with pytest.raises(ConfigError, match=rf"^{tmp_path}/{name}\.yaml: weights: no .* checkpoint at .*") as info:
            load_extractor(path)
        assert "\n" not in str(info.value)
    backend, status = describe(backend_yaml(tmp_path, "dinov2", weights=str(tmp_path)))
    assert (backend, status.present, status.detail) == ("dinov2", False, "config.json missing")


def test_backend_registry_and_config_errors(tmp_path):
    assert set(backend_names()) == {"descriptor_net", "dift", "dinov2", "dinov3", "radio", "sam", "sift"}
    with pytest.raises(ConfigError, match="backend: unknown feature backend 'clip'"):
        load_extractor(backend_yaml(tmp_path, "x", backend="clip"))
    with pytest.raises(ConfigError, match=r"input_size: \[100, 64\] must be a multiple of the dense SIFT patch size 8"):
        load_extractor(backend_yaml(tmp_path, "sift", input_size=[100, 64]))
    with pytest.raises(ConfigError, match=r"sift\.yaml: strde: unknown key"):
        load_extractor(backend_yaml(tmp_path, "sift", strde=4))


def test_descriptor_net_file_round_trip(tmp_path):
    torch.manual_seed(0)
    net = DescriptorNet(NetArchitecture(channels=(8, 8, 16, 16), width=16, descriptor_dim=6)).eval()
    save_net(net, tmp_path / "net.safetensors", {"steps": 3})
    loaded = load_net(tmp_path / "net.safetensors")
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net(x))
        assert net(x).shape == (1, 6, 16, 24)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ConfigError, match="cannot read descriptor net"):
        load_net(tmp_path / "junk.safetensors", "x.yaml: ")
    extractor = load_extractor(backend_yaml(tmp_path, "descriptor_net", weights="net.safetensors", input_size=[64, 96]))
    assert extractor.extract(smooth_image(np.random.default_rng(0), 48, 64)).shape == (1, 6, 16, 24)


# ---------------------------------------------------------------- nodes


def keypoint_graph(tmp_path, image_path, spec_dir, model, invalid_depth=False):
    text = f"""
name: keypoints_test
topics:
  /camera: {{type: RGBD}}
  /features: {{type: FeatureMap}}
  /keypoints: {{type: Keypoints}}
  /annotated: {{type: Image}}
nodes:
  camera:
    stage: toy_stages.still_camera
    params: {{image: {image_path}, rate_hz: 15, invalid_depth: {str(invalid_depth).lower()}}}
    publish: {{rgbd: /camera}}
  features:
    stage: features
    params: {{model: {model}, rate_hz: 10}}
    subscribe: {{rgbd: /camera}}
    publish: {{features: /features}}
  keypoints:
    stage: keypoints
    params: {{spec: {spec_dir}, model: {model}, similarity_vectors: true}}
    subscribe: {{rgbd: /camera, features: /features}}
    publish: {{keypoints: /keypoints, annotated: /annotated}}
  sink:
    stage: toy_stages.sink
    subscribe: {{keypoints: /keypoints, annotated: /annotated, features: /features}}
"""
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    return load_graph(path)


def test_features_and_keypoints_nodes_find_the_reference_points(tmp_path):
    image = smooth_image(np.random.default_rng(5), 240, 320)
    points = {"a": (60.0, 50.0), "b": (250.0, 190.0), "c": (160.0, 120.0)}
    write_spec(tmp_path, image, points, categories=2)
    model = backend_yaml(tmp_path, "sift", input_size=[240, 320])
    runtime = LocalRuntime(keypoint_graph(tmp_path, tmp_path / "ref.png", tmp_path, model))
    runtime.run(duration_s=0.5)
    sink = runtime.stages["sink"]
    features = sink.of("features")
    assert 4 <= len(features) <= 6  # 15 Hz camera, features throttled to 10 Hz
    found = sink.of("keypoints")
    assert [k.stamp_ns for k in found] == [f.stamp_ns for f in features]
    kps = found[-1]
    assert kps.names == ("thing0/a", "thing0/b", "thing0/c", "thing1/a", "thing1/b", "thing1/c")
    np.testing.assert_array_equal(kps.uv, np.array(list(points.values()) * 2, np.float32))
    assert kps.visible.all() and kps.frame_id == "base"
    np.testing.assert_allclose(kps.xyz[:, 2], 0.2, atol=1e-5)  # the table 1 m below the camera
    np.testing.assert_allclose(kps.xyz[0, :2], [0.4 + (60 - 159.5) / 500, -(50 - 119.5) / 500], atol=1e-5)
    assert kps.similarity.shape == (6, 6)
    annotated = sink.of("annotated")[-1]
    assert annotated.rgb.shape == image.shape and not np.array_equal(annotated.rgb, image)


def test_keypoints_node_survives_invalid_depth_and_a_wrong_feature_size(tmp_path, caplog):
    image = smooth_image(np.random.default_rng(6), 240, 320)
    write_spec(tmp_path, image, {"a": (60.0, 50.0)})
    model = backend_yaml(tmp_path, "sift", input_size=[240, 320])
    runtime = LocalRuntime(keypoint_graph(tmp_path, tmp_path / "ref.png", tmp_path, model, invalid_depth=True))
    runtime.run(duration_s=0.3)
    kps = runtime.stages["sink"].of("keypoints")
    assert kps and not any(k.visible.any() for k in kps) and all(np.isnan(k.xyz).all() for k in kps)

    runtime = LocalRuntime(keypoint_graph(tmp_path, tmp_path / "ref.png", tmp_path, model))
    node = runtime.stages["keypoints"]
    from kil.msgs import RGBD, FeatureMap

    cam = runtime.stages["camera"]
    frame = RGBD(1, "camera", cam.rgb, cam.depth, cam.K, "base", np.eye(4))
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            node.on_frame(frame, FeatureMap(1, "camera", np.ones((7, 3, 4), np.float32)))
    errors = [r for r in caplog.records if "channels" in r.getMessage()]
    assert len(errors) == 1  # logged once, not per frame


def test_keypoints_node_with_a_missing_spec_image_is_a_one_line_error(tmp_path):
    image = smooth_image(np.random.default_rng(6), 240, 320)
    write_spec(tmp_path, image, {"a": (60.0, 50.0)})
    (tmp_path / "ref.png").rename(tmp_path / "moved.png")
    model = backend_yaml(tmp_path, "sift", input_size=[240, 320])
    with pytest.raises(ConfigError, match=r"references\[0\]\.image: reference image .*ref\.png does not exist"):
        LocalRuntime(keypoint_graph(tmp_path, tmp_path / "moved.png", tmp_path, model))


def test_the_simulated_rig_defaults_to_the_shipped_descriptor_net():
    from kil.rigs import load_rig

    rig = load_rig("sim")
    assert rig.feature_model == "descriptor_net"
    backend, status = describe(rig.feature_model)
    assert backend == "descriptor_net" and status.present
    assert load_rig("franka").feature_model == "radio"


def test_features_node_logs_and_skips_a_feature_map_with_nans(tmp_path, caplog):
    """A backend that produces NaN (here: a net with a NaN weight) never crashes the node or
    publishes the bad map; the error is logged once, then every 100th time."""
    torch.manual_seed(0)
    net = DescriptorNet(NetArchitecture(channels=(8, 8, 16, 16), width=16, descriptor_dim=6))
    with torch.no_grad():
        net.head[1].bias[0] = float("nan")
    save_net(net, tmp_path / "nan.safetensors")
    model = backend_yaml(tmp_path, "descriptor_net", weights="nan.safetensors", input_size=[64, 96])
    image = smooth_image(np.random.default_rng(7), 48, 64)
    PILImage.fromarray(image).save(tmp_path / "frame.png")
    graph = tmp_path / "graph.yaml"
    graph.write_text(f"""
name: nan_features
topics: {{/camera: {{type: RGBD}}, /features: {{type: FeatureMap}}}}
nodes:
  camera: {{stage: toy_stages.still_camera, params: {{image: {tmp_path / 'frame.png'}, rate_hz: 10}}, publish: {{rgbd: /camera}}}}
  features: {{stage: features, params: {{model: {model}, rate_hz: 10}}, subscribe: {{rgbd: /camera}}, publish: {{features: /features}}}}
  sink: {{stage: toy_stages.sink, subscribe: {{features: /features}}}}
""")
    runtime = LocalRuntime(load_graph(graph))
    with caplog.at_level(logging.ERROR):
        runtime.run(duration_s=1.0)
    assert runtime.stages["sink"].received == []
    errors = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    assert len(errors) == 1 and "descriptor_net" in errors[0]


def test_matcher_handles_images_smaller_than_the_grid_and_checks_mask_shapes():
    rng = np.random.default_rng(2)
    features = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    refs = rng.standard_normal((3, 8)).astype(np.float32)
    for size in ((5, 5), (7, 9), (10, 3)):
        assert_same_matches(refs, features, size)
    with pytest.raises(ValueError, match=r"mask: expected shape \(1, 5, 5\)"):
        Matcher(refs).match(features, (5, 5), mask=np.ones((5, 5), bool))
    tiny = features * 1e-7  # tiny but non-zero features keep their direction
    np.testing.assert_allclose(Matcher(refs).match(tiny, (20, 20)).score, Matcher(refs).match(features, (20, 20)).score, atol=1e-4)


class _RecordingIO:
    """The bits of StageIO the features node uses."""

    def __init__(self):
        self.log = logging.getLogger("test.features")
        self.published = []

    def publish(self, port, msg):
        self.published.append(msg)


def test_features_node_rate_limits_by_stamp_and_survives_stamps_going_back(tmp_path, caplog):
    from kil.msgs import RGBD
    from kil.stages.features import Features, FeaturesConfig

    model = backend_yaml(tmp_path, "sift", input_size=[48, 64])
    io = _RecordingIO()
    node = Features(FeaturesConfig(model=str(model), rate_hz=10), io)
    image = smooth_image(np.random.default_rng(3), 48, 64)
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])

    def frame(t_s):
        return RGBD(int(t_s * 1e9), "camera", image, np.ones((48, 64), np.float32), K, "base", np.eye(4))

    with caplog.at_level(logging.WARNING):
        for t in (100.0, 100.033, 100.066, 100.1, 100.133, 0.0, 0.033, 0.1):  # a 30 Hz camera, then a clock reset
            node.on_frame(frame(t))
    assert [m.stamp_ns for m in io.published] == [int(t * 1e9) for t in (100.0, 100.1, 0.0, 0.1)]
    assert any("stamps went back" in r.getMessage() for r in caplog.records)
    # A 15 Hz camera gives 10 frames a second on average, not every other frame's 7.5 Hz.
    io.published.clear()
    node.reconfigure(FeaturesConfig(model=str(model), rate_hz=10))
    for k in range(30):
        node.on_frame(frame(200.0 + k / 15))
    assert len(io.published) == 20
    # rate_hz may change while the node runs (a live parameter): 5 Hz from now on
    node.reconfigure(FeaturesConfig(model=str(model), rate_hz=5))
    io.published.clear()
    for k in range(30):
        node.on_frame(frame(210.0 + k / 15))
    assert len(io.published) == 10


# ---------------------------------------------------------------- verification and visibility


def test_geometric_verification_takes_the_candidate_that_keeps_the_object_together():
    """Four keypoints of one object, moved by a similarity transform (scaled 1.3, turned 40
    deg, shifted). One keypoint's best match jumped to clutter 120 px away; its true place
    is its third candidate: verification takes that one. A keypoint with no agreeing
    candidate is rejected; with fewer than three agreeing keypoints everything is."""
    from kil.perception.verification import verify_object

    reference = np.array([[100.0, 100.0], [110.0, 100.0], [100.0, 112.0], [111.0, 113.0]])
    angle, scale, shift = np.radians(40), 1.3, np.array([250.0, 80.0])
    R = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    true = reference @ R.T + shift
    rng = np.random.default_rng(0)
    candidates = true[:, None, :] + rng.uniform(40, 200, (4, 3, 2))  # other places: far off
    candidates[:, 0] = true + rng.uniform(-1, 1, (4, 2))
    candidates[2, 0] = true[2] + [120.0, -15.0]  # its best match is on clutter...
    candidates[2, 2] = true[2] + [0.5, -0.5]  # ...its true place is the third candidate
    scores = np.array([[0.95, 0.6, 0.5], [0.93, 0.55, 0.5], [0.97, 0.7, 0.8], [0.9, 0.5, 0.4]])
    usable = np.ones_like(scores, bool)
    np.testing.assert_array_equal(verify_object(reference, candidates, scores, usable), [0, 0, 2, 0])

    lost = candidates.copy()
    lost[3] = true[3] + [90.0, 90.0]  # nothing near its place: rejected, the others kept
    np.testing.assert_array_equal(verify_object(reference, lost, scores, usable), [0, 0, 2, -1])

    scattered = true[:, None, :] + rng.uniform(60, 300, (4, 3, 2))  # hidden object: clutter only
    scattered[0, 0] = true[0]
    scattered[1, 0] = true[1]
    assert (verify_object(reference, scattered, scores, usable) == -1).all()
    assert (verify_object(reference, candidates, scores, np.zeros_like(usable)) == -1).all()


def test_visibility_threshold_calibration_reaches_the_asked_precision():
    from kil.perception.calibration import calibrate_min_score

    rng = np.random.default_rng(0)
    seen = rng.uniform(0.7, 1.0, 400)
    hidden = rng.uniform(0.2, 0.8, 100)  # overlaps the seen ones between 0.7 and 0.8
    score = np.concatenate([seen, hidden])
    is_hidden = np.r_[np.zeros(400, bool), np.ones(100, bool)]
    other = np.zeros(500, bool)
    result = calibrate_min_score(score, is_hidden, other, 0.9)
    flagged = score < result.threshold
    assert (flagged & is_hidden).sum() / flagged.sum() >= 0.9
    assert result.recall == pytest.approx((flagged & is_hidden).sum() / 100)
    assert 0.7 < result.threshold <= 0.8 and result.recall > 0.8
    # flags raised by verification count: here they are all wrong, so no threshold is needed to reach 0.9
    strict = calibrate_min_score(score, is_hidden, np.r_[np.zeros(400, bool), np.ones(100, bool)], 0.9)
    assert strict.recall == 1.0 and strict.threshold <= result.threshold
    assert result.reached and strict.reached
    # hidden keypoints scoring like seen ones: no threshold reaches 0.9, and none is chosen
    mixed = calibrate_min_score(np.r_[seen, rng.uniform(0.7, 1.0, 100)], is_hidden, other, 0.9)
    assert not mixed.reached and mixed.threshold == -1.0 and mixed.recall == 0.0
    with pytest.raises(ValueError, match="no hidden keypoint"):
        calibrate_min_score(seen, np.zeros(400, bool), np.zeros(400, bool))


def test_calibrated_threshold_is_written_into_the_model_config(tmp_path):
    from kil.perception.calibration import write_min_score

    config = tmp_path / "net.yaml"
    config.write_text("# my model\nbackend: descriptor_net\nweights: net.safetensors  # keep\n")
    write_min_score(config, 0.61234, "calibrated")
    write_min_score(config, 0.7, "calibrated again")
    text = config.read_text()
    assert text.count("min_score") == 1 and "min_score: 0.7000  # calibrated again" in text and "# keep" in text
    assert yaml.safe_load(text)["min_score"] == 0.7
