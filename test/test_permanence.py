"""Object permanence: a hidden object stays where it was instead of jumping to a look-alike,
and is found again where it went once the frames say it can have left."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest

from kil.msgs import RGBD
from kil.perception.keypoints import DetectorConfig, KeypointDetector, ReferenceSet
from kil.perception.permanence import GripperState, ObjectPermanence, PermanenceConfig
from kil.perception.verification import verify_object

STRIDE, CELLS = 4, 24  # 96x96 image, 24x24 patch grid
FX = 300.0  # px: at 1 m a pixel is 3.3 mm, the two places below lie 8 cm apart
LAYOUT = np.array([[0, 0], [0, 2], [2, 0], [2, 2]])  # the object's keypoints, in cells
PLACE_A, PLACE_B = np.array([6, 6]), np.array([6, 12])  # (row, col) of its first keypoint's cell
FRAME_CENTRE = CELLS * STRIDE / 2


def frame(t_s: float, covered: bool = False, raised: list[np.ndarray] = ()) -> RGBD:
    """A table 1 m from the camera (base frame = optical frame); `raised`: places where a
    5 cm tall object stands (its top face 0.95 m from the camera); `covered`: an arm 0.3 m
    in front of place A."""
    size = CELLS * STRIDE
    depth = np.ones((size, size), np.float32)
    for place in raised:
        r, c = place * STRIDE
        depth[r - 4: r + 12, c - 4: c + 12] = 0.95
    if covered:
        r, c = PLACE_A * STRIDE
        depth[r - 8: r + 20, c - 8: c + 20] = 0.7
    K = np.array([[FX, 0, size / 2], [0, FX, size / 2], [0, 0, 1]])
    return RGBD(int(t_s * 1e9), "camera", np.zeros((size, size, 3), np.uint8), depth, K, "camera", np.eye(4))


def features(descriptors: np.ndarray, places: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(1, C, h, w): weak noise, and the object's descriptors at each of `places`."""
    out = 0.05 * rng.standard_normal((descriptors.shape[1], CELLS, CELLS))
    for place in places:
        for (dr, dc), d in zip(LAYOUT, descriptors):
            out[:, place[0] + dr, place[1] + dc] = d
    return out[None].astype(np.float32)


def cell_centre(place: np.ndarray) -> np.ndarray:
    """(4, 2) px (u, v) of the object's keypoints at `place`."""
    rc = place + LAYOUT
    return (rc[:, ::-1] + 0.5) * STRIDE


@pytest.fixture
def scene():
    rng = np.random.default_rng(3)
    descriptors = np.linalg.qr(rng.standard_normal((32, 4)))[0].T.astype(np.float32)  # (4, 32) orthonormal
    references = ReferenceSet(("block/a", "block/b", "block/c", "block/d"), np.zeros(4, np.int32), descriptors, "test",
                              cell_centre(PLACE_A), np.zeros(4, int), 0.5)
    return descriptors, references, rng


def run(detector: KeypointDetector, steps: list[tuple[float, bool, list[np.ndarray]]], descriptors, rng, flat: bool = False):
    """Keypoints of each (time s, place A covered, places holding the object or a look-alike)
    in order; the objects are 5 cm tall, or `flat` (depth cannot tell them from the table)."""
    return [detector.detect([frame(t, covered, [] if flat else places)], features(descriptors, places, rng))[0]
            for t, covered, places in steps]


def test_a_covered_object_is_hidden_rather_than_moved_to_a_look_alike(scene):
    """Seen at A; then the arm covers A while a look-alike sits at B (8 cm away): without
    permanence the keypoints jump to B, with it they are hidden for as long as A stays
    covered (3 s here), with no jump."""
    descriptors, references, rng = scene
    steps = [(0.0, False, [PLACE_A])] + [(0.1 * i, True, [PLACE_B]) for i in range(1, 31)]
    tracked = run(KeypointDetector(references, DetectorConfig(min_score=0.5)), steps, descriptors, rng)
    assert tracked[0].visible.all()
    np.testing.assert_allclose(tracked[0].uv, cell_centre(PLACE_A), atol=1.5)
    assert not any(k.visible.any() for k in tracked[1:])

    stateless = run(KeypointDetector(references, DetectorConfig(min_score=0.5, permanence=PermanenceConfig(enabled=False))),
                    steps, descriptors, rng)
    assert stateless[1].visible.all()
    np.testing.assert_allclose(stateless[1].uv, cell_centre(PLACE_B), atol=1.5)


@pytest.mark.parametrize("flat", [False, True])
def test_an_object_gone_from_its_uncovered_place_is_found_where_it_went(scene, flat):
    """A is uncovered and empty (the camera sees the table through where the 5 cm tall
    object stood), the object is at B (8 cm away): it is taken there once its reach (3 cm +
    0.1 m/s while unseen) covers B, after about 0.5 s, not before. A flat object's place
    reads the same empty or not: its reach grows at 0.02 m/s, B is taken after about 2.5 s."""
    descriptors, references, rng = scene
    steps = [(0.0, False, [PLACE_A])] + [(0.1 * i, False, [PLACE_B]) for i in range(1, 31)]
    keypoints = run(KeypointDetector(references, DetectorConfig(min_score=0.5)), steps, descriptors, rng, flat)
    found = [i for i, k in enumerate(keypoints) if i > 0 and k.visible.any()]
    expected = (22, 27) if flat else (4, 7)
    assert found and expected[0] <= found[0] <= expected[1], [k.visible.sum() for k in keypoints]
    assert keypoints[found[0] + 2].visible.all()
    for k in keypoints[found[0]:]:
        np.testing.assert_allclose(k.uv[k.visible], cell_centre(PLACE_B)[k.visible], atol=1.5)


def test_an_object_its_place_still_reads_is_not_given_up_for_a_look_alike(scene):
    """Seen at A; then no longer recognised there (half hidden, turned) while depth still
    reads its top face at A, and a look-alike stands at B (8 cm away): its reach grows at
    0.02 m/s, so B is not taken for 2 s (at the 0.1 m/s of an emptied place: 0.5 s)."""
    descriptors, references, rng = scene
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5))
    first = detector.detect([frame(0.0, raised=[PLACE_A])], features(descriptors, [PLACE_A], rng))[0]
    assert first.visible.all()
    later = [detector.detect([frame(0.1 * i, raised=[PLACE_A, PLACE_B])], features(descriptors, [PLACE_B], rng))[0]
             for i in range(1, 21)]
    assert not any(k.visible.any() for k in later)


def test_an_object_moving_between_frames_is_followed(scene):
    """Seen in every frame, moving one cell (1.3 cm) per frame: followed throughout."""
    descriptors, references, rng = scene
    steps = [(0.1 * i, False, [PLACE_A + [0, i]]) for i in range(7)]
    keypoints = run(KeypointDetector(references, DetectorConfig(min_score=0.5)), steps, descriptors, rng)
    for i, k in enumerate(keypoints):
        assert k.visible.all(), i
        np.testing.assert_allclose(k.uv, cell_centre(PLACE_A + [0, i]), atol=1.5)


def place_xyz(place: np.ndarray) -> np.ndarray:
    """(3,) metres: the table point of `place`'s first keypoint (base frame = optical frame, table at 1 m)."""
    return np.array([*((place[::-1] + 0.5) * STRIDE - FRAME_CENTRE) / FX, 1.0])


def test_an_object_the_gripper_holds_is_not_looked_for_elsewhere(scene):
    """Seen at A (a flat object: depth cannot tell whether it is still there); the gripper
    comes down on it open, closes, lifts it away while a look-alike lies at B, 8 cm away:
    held, the object is not taken to be at B for the 3 s the gripper stays closed; without
    the gripper's state the keypoints jump to B once the reach (0.02 m/s where depth cannot
    tell) covers it, after about 2.5 s. Once the gripper opens (put down) the reach grows
    again from where it was when the gripper closed. (Scores of 0.7: over 25 frames of a
    slowly growing reach, the weak noise features at 0.5 make an agreeing trio somewhere.)"""
    descriptors, references, rng = scene
    at_a, lifted = place_xyz(PLACE_A), place_xyz(PLACE_A) + [0.15, 0.0, -0.3]
    grippers = [GripperState(at_a + [0, 0, -0.2], 0.08), GripperState(at_a, 0.08)]  # seen, then covered by the fingers
    steps = [(0.0, False, [PLACE_A]), (0.1, True, [PLACE_B])]
    for i in range(2, 32):  # closed on it and carried away
        grippers.append(GripperState(lifted, 0.04))
        steps.append((0.1 * i, False, [PLACE_B]))
    for i in range(32, 64):  # opened: put down
        grippers.append(GripperState(lifted, 0.08))
        steps.append((0.1 * i, False, [PLACE_B]))

    detector = KeypointDetector(references, DetectorConfig(min_score=0.7))
    held = [detector.detect([frame(t, covered)], features(descriptors, places, rng), [g])[0]
            for (t, covered, places), g in zip(steps, grippers)]
    assert held[0].visible.all()
    assert not any(k.visible.any() for k in held[1:32])
    found = [i for i, k in enumerate(held) if k.visible.any()][1:]
    assert found and 53 <= found[0] <= 59, found  # the reach grows again from the release
    for k in held[found[0]:]:
        np.testing.assert_allclose(k.uv[k.visible], cell_centre(PLACE_B)[k.visible], atol=1.5)

    blind = run(KeypointDetector(references, DetectorConfig(min_score=0.7)), steps, descriptors, rng, flat=True)
    jumped = [i for i, k in enumerate(blind) if i > 0 and k.visible.all()]
    assert jumped and jumped[0] <= 28, jumped


def test_an_object_that_slips_out_of_the_fingers_is_not_carried_on():
    """Seen at A (5 cm tall); the gripper closes on it (4 cm) and lifts it (A empty: carried),
    then the fingers close fully (0 cm: it slipped out, back onto A, where it is no longer
    recognised) and the closed gripper moves on to B, where a look-alike stands: the object
    is not taken to ride in the empty fingers, so the look-alike is not taken for it."""
    rng = np.random.default_rng(3)
    descriptors = np.linalg.qr(rng.standard_normal((32, 4)))[0].T.astype(np.float32)
    references = ReferenceSet(("block/a", "block/b", "block/c", "block/d"), np.zeros(4, np.int32), descriptors, "test",
                              cell_centre(PLACE_A), np.zeros(4, int), 0.5)
    at_a, at_b = place_xyz(PLACE_A), place_xyz(PLACE_B)
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5))

    def detect(t, raised, places, gripper):
        return detector.detect([frame(t, raised=raised)], features(descriptors, places, rng), [gripper])[0]

    assert detect(0.0, [PLACE_A], [PLACE_A], GripperState(at_a + [0, 0, -0.2], 0.08)).visible.all()
    assert not detect(0.1, [PLACE_A], [], GripperState(at_a, 0.04)).visible.any()  # closed on it
    assert not detect(0.2, [], [], GripperState(at_a + [0, 0, -0.05], 0.04)).visible.any()  # lifted: A empty
    assert not detect(0.3, [PLACE_A], [], GripperState(at_a + [0, 0, -0.05], 0.0)).visible.any()  # slipped back
    moved = [detect(0.1 * i, [PLACE_A, PLACE_B], [PLACE_B], GripperState(at_b, 0.0)) for i in range(4, 14)]
    assert not any(k.visible.any() for k in moved)


@pytest.mark.parametrize("grasp", ["taken", "missed"])
def test_an_object_carried_by_the_gripper_is_looked_for_where_the_gripper_takes_it(scene, grasp):
    """Seen at A (5 cm tall), the gripper closes on it, lifts and moves 8 cm to B. Taken:
    A is then empty (the camera sees the table behind its points), so the object moves with
    the gripper and is found in its fingers at B at once. Missed: the object is still at A
    (unseen there), and the look-alike at B is not taken for it while the gripper is closed."""
    descriptors, references, rng = scene
    at_a, at_b = place_xyz(PLACE_A), place_xyz(PLACE_B)
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5))
    first = detector.detect([frame(0.0, raised=[PLACE_A])], features(descriptors, [PLACE_A], rng),
                            [GripperState(at_a + [0, 0, -0.2], 0.08)])[0]
    assert first.visible.all()
    closing = detector.detect([frame(0.1, raised=[PLACE_A])], features(descriptors, [], rng), [GripperState(at_a, 0.04)])[0]
    assert not closing.visible.any()  # the fingers hide it
    occupied = [PLACE_B] if grasp == "taken" else [PLACE_A, PLACE_B]
    moved = [detector.detect([frame(0.1 * i, raised=occupied)], features(descriptors, [PLACE_B], rng), [GripperState(at_b, 0.04)])[0]
             for i in range(2, 6)]
    # a frame without the gripper's state (a robot state missing at that stamp): held and carried as before
    moved += detector.detect([frame(0.55, raised=occupied)], features(descriptors, [PLACE_B], rng), [None])
    if grasp == "taken":
        assert all(k.visible.all() for k in moved)
        for k in moved:
            np.testing.assert_allclose(k.uv, cell_centre(PLACE_B), atol=1.5)
        released = detector.detect([frame(0.6, raised=[PLACE_B])], features(descriptors, [PLACE_B], rng), [GripperState(at_b, 0.08)])[0]
        assert released.visible.all()
    else:
        assert not any(k.visible.any() for k in moved)


@pytest.mark.parametrize("finger_depth, rigid_m", [(0.9, None), (0.7, None), (0.98, 0.015)])
def test_a_keypoint_read_off_the_fingers_is_hidden_alone(scene, finger_depth, rigid_m):
    """Seen at A on the table (1 m); a frame later a finger stands 10 or 30 cm in front of
    its first keypoint: that point lifts onto the finger and is hidden, while the other three,
    where they were, stay visible (the object's mean displacement neither hides them all nor
    lets the finger's point through). With rigid objects, a finger 2 cm in front, within the
    object's reach (3 cm), hides that point too: it moved alone (a tray's centre under a
    block put down on it)."""
    descriptors, references, rng = scene
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5, permanence=PermanenceConfig(rigid_m=rigid_m)))
    first = detector.detect([frame(0.0)], features(descriptors, [PLACE_A], rng))[0]
    assert first.visible.all()
    fingered = frame(0.1)
    u, v = cell_centre(PLACE_A)[0].astype(int)
    depth = fingered.depth.copy()
    depth[v - 3: v + 4, u - 3: u + 4] = finger_depth
    keypoints = detector.detect([dataclasses.replace(fingered, depth=depth)], features(descriptors, [PLACE_A], rng))[0]
    assert keypoints.visible.tolist() == [False, True, True, True]
    np.testing.assert_allclose(keypoints.xyz[1:], first.xyz[1:], atol=0.005)  # a pixel of match noise


def test_keypoints_not_seen_keep_their_place_moved_with_their_rigid_object():
    """Rigid objects: all four keypoints seen, then three seen 2 cm farther in x and the
    fourth hidden: the object is looked for whole, the fourth where it was moved by the same
    2 cm (not forgotten: a block lifted with one point under the fingers keeps that point's
    place), and one keypoint seen keeps the other three where they were."""
    permanence = ObjectPermanence([np.arange(4)], PermanenceConfig(rigid_m=0.015))
    seen = np.array([place_xyz(PLACE_A + d) for d in LAYOUT]) - [0, 0, 0.05]  # a 5 cm tall object
    permanence.reaches(frame(0.0, raised=[PLACE_A]))
    permanence.update(seen, np.ones(4, bool))
    permanence.reaches(frame(0.1, raised=[PLACE_A]))
    moved = seen + [0.02, 0, 0]
    permanence.update(np.where([[1], [1], [1], [0]], moved, np.nan), np.array([True, True, True, False]))
    reach = permanence.reaches(frame(0.2, raised=[PLACE_A]))[0]
    np.testing.assert_allclose(reach.last_xyz, moved, atol=1e-9)
    assert np.isfinite(reach.anchor).all()
    permanence.update(np.where([[1], [0], [0], [0]], moved, np.nan), np.array([True, False, False, False]))
    reach = permanence.reaches(frame(0.3, raised=[PLACE_A]))[0]
    np.testing.assert_allclose(reach.last_xyz, moved, atol=1e-9)


def test_the_gripper_closing_away_from_an_object_does_not_hold_it():
    """The reach of an object the gripper never came near grows while the gripper is closed."""
    permanence = ObjectPermanence([np.arange(4)], PermanenceConfig(slack_m=0.03, speed_mps=0.1))
    at_a = place_xyz(PLACE_A)
    permanence.reaches(frame(0.0), GripperState(at_a + [0.2, 0, -0.2], 0.08))
    permanence.update(np.array([at_a - [0, 0, 0.05]] * 4), np.ones(4, bool))  # a 5 cm tall object, gone from A
    r = permanence.reaches(frame(1.0), GripperState(at_a + [0.2, 0, -0.2], 0.01))[0]
    assert r.radius_m == pytest.approx(0.13)


@pytest.mark.parametrize("restart", ["reset", "stamp_back", "gap"])
def test_a_new_stream_forgets_where_objects_were(scene, restart):
    """reset(), a stamp going backwards or a long gap: the next frame is taken on its own."""
    descriptors, references, rng = scene
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5))
    run(detector, [(5.0, False, [PLACE_A])], descriptors, rng)
    t = {"reset": 5.1, "stamp_back": 1.0, "gap": 8.0}[restart]
    if restart == "reset":
        detector.reset()
    (keypoints,) = run(detector, [(t, True, [PLACE_B])], descriptors, rng)
    assert keypoints.visible.all()
    np.testing.assert_allclose(keypoints.uv, cell_centre(PLACE_B), atol=1.5)


def test_reach_grows_only_while_the_last_place_is_uncovered():
    """0.1 m/s while depth sees through where the object's top was, none while the arm
    covers it, 0.02 m/s while depth still reads its top there."""
    permanence = ObjectPermanence([np.arange(4)], PermanenceConfig(slack_m=0.03, speed_mps=0.1, occupied_speed_mps=0.02))
    assert permanence.reaches(frame(0.0)) == [None]
    corner = (PLACE_A[::-1] * STRIDE + 2 - FRAME_CENTRE) / FX  # metres at 1 m: where the arm covers
    top = np.array([[*corner * 0.95, 0.95]] * 4) + [[0, 0, 0], [0.01, 0, 0], [0, 0.01, 0], [0.01, 0.01, 0]]  # a 5 cm tall object
    permanence.update(top, np.ones(4, bool))
    r = permanence.reaches(frame(0.5, covered=False))[0]
    assert r.radius_m == pytest.approx(0.08)
    assert r.radius_px == pytest.approx(FX * 0.08 / 0.95, rel=1e-6)
    np.testing.assert_allclose(r.anchor[0], PLACE_A[::-1] * STRIDE + 2, atol=1e-6)
    permanence.update(top, np.ones(4, bool))  # seen again: back to the slack
    for t in (0.6, 1.0, 2.0):  # the arm stands in front of where it was
        assert permanence.reaches(frame(t, covered=True))[0].radius_m == pytest.approx(0.03)
    assert permanence.reaches(frame(2.2))[0].radius_m == pytest.approx(0.05)
    assert permanence.reaches(frame(3.2, raised=[PLACE_A]))[0].radius_m == pytest.approx(0.07)  # its top read again
    permanence.update(top, np.array([True, False, False, False]))  # only some keypoints seen
    r = permanence.reaches(frame(3.3))[0]
    assert np.isfinite(r.anchor[0]).all() and np.isnan(r.anchor[1:]).all()


def test_verification_keeps_an_object_within_reach_of_its_anchor():
    """Two equally laid out places, the far one scoring higher: with an anchor at the near
    one it is taken; with the near one gone, nothing is (never the far one)."""
    reference = np.array([[100.0, 100.0], [110.0, 100.0], [100.0, 112.0], [111.0, 113.0]])
    near, far = reference + [5.0, 0.0], reference + [80.0, 0.0]
    candidates = np.stack([far, near], axis=1)  # (4, 2, 2): the far place first
    scores = np.array([[0.99, 0.95]] * 4)
    usable = np.ones_like(scores, bool)
    np.testing.assert_array_equal(verify_object(reference, candidates, scores, usable), [0, 0, 0, 0])
    np.testing.assert_array_equal(verify_object(reference, candidates, scores, usable, anchor=reference, radius_px=20.0), [1, 1, 1, 1])
    gone = usable.copy()
    gone[:, 1] = False
    assert (verify_object(reference, candidates, scores, gone, anchor=reference, radius_px=20.0) == -1).all()
    partly_known = reference.copy()
    partly_known[1:] = np.nan  # only one keypoint was seen last time
    np.testing.assert_array_equal(verify_object(reference, candidates, scores, usable, anchor=partly_known, radius_px=20.0), [1, 1, 1, 1])


def test_the_keypoints_node_takes_the_gripper_at_each_frames_stamp():
    """The node keeps recent robot states and uses the one nearest a frame's stamp (frames
    arrive after their features, when newer states are in); a state in another frame is
    ignored, with one error logged."""
    import logging

    from kil.msgs import RobotState
    from kil.stages.keypoints import KeypointsConfig, KeypointsNode

    class IO:
        log = logging.getLogger("test.keypoints")

    node = KeypointsNode(KeypointsConfig(spec="pick_place", model="sift", annotate=False), IO())
    assert node._gripper_at(frame(1.0)) is None  # no robot state connected
    for t, opening in ((0.8, 0.08), (0.99, 0.05), (1.2, 0.02)):
        node.on_state(RobotState(int(t * 1e9), "camera", np.array([t, 0, 0]), np.array([0, 0, 0, 1.0]), opening))
    gripper = node._gripper_at(frame(1.0))
    assert gripper.opening == 0.05 and gripper.position[0] == 0.99
    node.on_state(RobotState(int(1.0 * 1e9), "world", np.zeros(3), np.array([0, 0, 0, 1.0]), 0.08))
    assert node._gripper_at(frame(1.0)) is None
    assert node._reported == {"state frame"}


def test_a_carried_object_turns_with_the_gripper():
    """An object (5 cm tall, its points spread unevenly about the gripper point) is seen,
    grasped, lifted (its place seen empty: carried), carried 10 cm and turned 90 degrees
    about the camera axis by the wrist, then put down: its reach follows the turned points
    (a point 3 cm off the gripper axis lands 4 cm from where a translation alone puts it,
    beyond the 3 cm slack), and stays there once the fingers open."""
    offsets = np.array([[0.03, 0.0, 0.0], [0.0, 0.01, 0.0], [-0.01, 0.0, 0.0], [0.0, 0.0, 0.0]])
    at_a = np.array([-0.05, -0.05, 0.95])
    at_b = at_a + [0.1, 0.0, -0.1]
    level, turned = np.array([0.0, 0.0, 0.0, 1.0]), np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    Rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    permanence = ObjectPermanence([np.arange(4)])
    permanence.reaches(frame(0.0), GripperState(at_a + [0.2, 0, -0.2], 0.08, level))
    permanence.update(at_a + offsets, np.ones(4, bool))
    permanence.reaches(frame(0.1, raised=[PLACE_A]), GripperState(at_a, 0.04, level))  # closed on it
    permanence.reaches(frame(0.2), GripperState(at_a + [0, 0, -0.1], 0.04, level))  # lifted: its place is empty
    carried = permanence.reaches(frame(0.3), GripperState(at_b, 0.04, turned))[0]
    np.testing.assert_allclose(carried.last_xyz, at_b + offsets @ Rz.T, atol=1e-9)
    assert np.linalg.norm(carried.last_xyz[0] - (at_b + offsets[0])) > carried.radius_m  # a translation alone misses it
    permanence.reaches(frame(0.4), GripperState(at_b, 0.08, turned))  # put down
    down = permanence.reaches(frame(0.5), GripperState(at_b + [0, 0, -0.2], 0.08, turned))[0]
    np.testing.assert_allclose(down.last_xyz, at_b + offsets @ Rz.T, atol=1e-9)


def views_scene():
    """Reference descriptors (4, 32), view descriptors of the same keypoints (the object
    turned: unlike the reference's), and a unit vector unlike both (4, 32 orthonormal sets)."""
    basis = np.linalg.qr(np.random.default_rng(5).standard_normal((32, 9)))[0].T.astype(np.float32)
    reference, view, other = basis[:4], basis[4:8], basis[8]
    references = ReferenceSet(("block/a", "block/b", "block/c", "block/d"), np.zeros(4, np.int32), reference, "test",
                              cell_centre(PLACE_A), np.zeros(4, int), 0.5, view_descriptors=view, view_owner=np.arange(4))
    return reference, view, other, references


def painted(rng, *layers: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(1, C, h, w) weak noise with (place (row, col), (4, C) descriptors, offset (row, col)) painted at the layout."""
    out = 0.05 * rng.standard_normal((32, CELLS, CELLS))
    for place, descriptors, offset in layers:
        for (dr, dc), d in zip(LAYOUT, descriptors):
            out[:, place[0] + dr + offset[0], place[1] + dc + offset[1]] = d
    return out[None].astype(np.float32)


@pytest.mark.parametrize("views", ["initial", "refine", "search"])
def test_views_find_an_object_on_its_first_sighting_and_then_only_refine(views):
    """The object stands at A turned (its view descriptors there), a look-alike at B (8 cm
    away) resembles the reference image (0.8). Its first sighting: searched with the views
    ("initial", "search") the object is found at A; with the reference alone ("refine")
    its points go to the look-alike, for the rest of the stream. Later frames: "initial"
    searches by the reference alone, so the turned object is not found again there (and
    the look-alike lies out of reach); "search" keeps finding it by its views."""
    reference, view, other, references = views_scene()
    rng = np.random.default_rng(2)
    look_alike = 0.8 * reference + 0.6 * other
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5, views=views))
    seen = [detector.detect([frame(0.1 * t, raised=[PLACE_A, PLACE_B])],
                            painted(rng, (PLACE_A, view, (0, 0)), (PLACE_B, look_alike, (0, 0))))[0] for t in range(3)]
    assert seen[0].visible.all()
    np.testing.assert_allclose(seen[0].uv, cell_centre(PLACE_B if views == "refine" else PLACE_A), atol=2.5)  # A, B: 24 px apart
    if views == "initial":
        assert not any(k.visible.any() for k in seen[1:])
    else:
        for k in seen[1:]:
            assert k.visible.all()
            np.testing.assert_allclose(k.uv, cell_centre(PLACE_B if views == "refine" else PLACE_A), atol=2.5)


@pytest.mark.parametrize("finger", [False, True])
def test_a_found_keypoint_moves_to_its_view_nearby_on_the_same_surface(finger):
    """Found at A by the reference (0.9 there), the object's view matches best one cell up and
    left (4 px each way): each keypoint is refined there and lifted again; where depth at the view's
    pixel reads a finger 25 cm in front, it stays where the reference found it."""
    reference, view, other, references = views_scene()
    rng = np.random.default_rng(4)
    detector = KeypointDetector(references, DetectorConfig(min_score=0.5))
    first = detector.detect([frame(0.0, raised=[PLACE_A])], painted(rng, (PLACE_A, reference, (0, 0))))[0]
    assert first.visible.all()
    later = frame(0.1, raised=[PLACE_A])
    if finger:
        depth = later.depth.copy()
        for u, v in (cell_centre(PLACE_A) - STRIDE).astype(int):
            depth[v - 1: v + 1, u - 1: u + 1] = 0.7  # the view's peak, more than 2 px from where the reference's lies
        later = dataclasses.replace(later, depth=depth)
    keypoints = detector.detect([later], painted(rng, (PLACE_A, 0.9 * reference + 0.44 * other, (0, 0)), (PLACE_A, view, (-1, -1))))[0]
    assert keypoints.visible.all()
    expected = cell_centre(PLACE_A) - (0 if finger else STRIDE)
    np.testing.assert_allclose(keypoints.uv, expected, atol=2.5 if finger else 1.5)  # the reference's peak at 0.9 is broad
    np.testing.assert_allclose(keypoints.xyz[:, 2], 0.95, atol=0.005)
    assert (keypoints.score > 0.95).all() != finger  # the view's similarity there, or the reference's (0.9)
