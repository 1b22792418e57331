"""Keypoint extraction: reference descriptors from the annotated reference images, matched in
each frame's features, verified against each other, lifted to the base frame with depth.

A keypoint is visible only when (1) its best match scores at least `min_score` (by default
the threshold calibrated for the feature model, `kil keypoints calibrate`), (2) it sits
where the reference has it relative to the other keypoints of its object
(`kil.perception.verification`; a keypoint whose best match breaks that takes its best
candidate that agrees, or none), (3) its object can have got there since it was last seen
(`kil.perception.permanence`: a hidden block does not jump to a look-alike beside it; as
an option, its point moved with the rest of its object, a rigid body), and (4) depth has a
surface there. Otherwise it is reported `visible=false` at its best match,
never placed elsewhere.

That is image matching (IM). Instance matching (IN, `kil.perception.instances`) replaces
(2) by the object's instance mask: its keypoints are searched only inside it. Tracking (T)
follows keypoints found by IM or IN with a point tracker, and replaces (2) by the check
that a tracked point, found when tracking started, still looks like its reference.

A spec's views (images of the object turned) join the search for an object's first sighting
in a stream, where a look-alike scoring as high as the object would otherwise take its
points for the whole stream; after that they only refine: a found keypoint moves to the
best of its reference and views nearby (`DetectorConfig.views`).

Shared by the keypoints node (one frame at a time) and the dataset builder (an episode's
frames in order, in batches). The detector remembers the objects of the stream it is fed:
`reset()` between unrelated frames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from kil.config import require
from kil.geometry import project
from kil.msgs import RGBD, Keypoints
from kil.perception.features.base import FeatureExtractor
from kil.perception.instances import InstanceConfig, InstanceMatcher, Slot
from kil.perception.lifting import EDGE_GAP_M, lift
from kil.perception.matching import Matcher, sample_descriptors
from kil.perception.permanence import GripperState, ObjectPermanence, PermanenceConfig, Reach
from kil.perception.segmentation.base import Segmenter, load_segmenter
from kil.perception.trackers.base import PointTracker, load_tracker
from kil.perception.spec import LoadedSpec
from kil.perception.verification import GeometryConfig, reachable, verify_object


# A spec's views: "initial" search with them for an object not tracked yet (its first sighting,
# where a look-alike scoring as high as the object takes its points for the whole stream) and
# refine found keypoints with them; "refine" only refine; "search" search with them in every frame
VIEW_USES = ("initial", "refine", "search")
EXTRACTIONS = ("im", "in", "t")  # image matching over the frame; instance matching inside instance masks; tracking
DETECTION_VERSION = 9  # bump when the same inputs give other keypoints (dataset caches depend on it)


@dataclass(frozen=True)
class ReferenceSet:
    """The keypoints a spec defines and their descriptors under one feature backend.

    names: N keypoint names; instance: (N,) int32; descriptors: (N, C) float32; uv: (N, 2)
    px in their reference image; group: (N,) int, the reference image (one object) each
    keypoint was annotated on; min_score: the feature model's calibrated visibility
    threshold; category: (N,) int, the spec category of each keypoint, whose text prompt
    is prompts[category] (instance matching); view_descriptors: (V, C) float32 further
    descriptors from the spec's views, view_owner: (V,) the keypoint each describes.
    """

    names: tuple[str, ...]
    instance: np.ndarray
    descriptors: np.ndarray
    backend: str
    uv: np.ndarray | None = None
    group: np.ndarray | None = None
    min_score: float = -1.0
    category: np.ndarray | None = None
    prompts: tuple[str, ...] = ()
    view_descriptors: np.ndarray | None = None
    view_owner: np.ndarray | None = None

    def has_views(self) -> bool:
        return self.view_descriptors is not None and len(self.view_descriptors) > 0

    def without_views(self) -> ReferenceSet:
        """These keypoints described by their reference images alone."""
        return replace(self, view_descriptors=None, view_owner=None)

    def matcher(self) -> Matcher:
        """The matcher of these keypoints: each by the best of its descriptors (reference and views)."""
        if self.view_descriptors is None or len(self.view_descriptors) == 0:
            return Matcher(self.descriptors)
        return Matcher(np.concatenate([self.descriptors, self.view_descriptors]),
                       np.concatenate([np.arange(len(self.descriptors)), self.view_owner]))


def reference_set(spec: LoadedSpec, extractor: FeatureExtractor) -> ReferenceSet:
    """Descriptors of every reference keypoint, and of its views: each image's features,
    upsampled (bilinearly, as in matching) and sampled at the annotated pixels."""
    layout = spec.layout()
    rows, uvs, groups = [], [], []
    for g, (ref, uv) in enumerate(spec.references()):
        image = spec.image(ref)
        features = extractor.extract(image)[0]
        rows.append(sample_descriptors(features, uv, image.shape[:2]))
        uvs.append(uv)
        groups.append(np.full(len(uv), g))
    view_rows, view_owner = [np.zeros((0, rows[0].shape[1]), np.float32)], [np.zeros(0, np.int64)]
    for view, uv, index in spec.views():
        image = spec.image(view)
        view_rows.append(sample_descriptors(extractor.extract(image)[0], uv, image.shape[:2]))
        view_owner.append(index)
    categories = spec.spec.categories
    category = [c for c, cat in enumerate(categories) for ref in cat.references for _ in ref.keypoints]
    return ReferenceSet(layout.names, layout.instance, np.concatenate(rows).astype(np.float32), extractor.name,
                        np.concatenate(uvs), np.concatenate(groups), extractor.config.min_score, np.array(category, np.int64),
                        tuple(cat.prompt or cat.name for cat in categories),
                        np.concatenate(view_rows).astype(np.float32), np.concatenate(view_owner))


@dataclass(frozen=True)
class Reasons:
    """Per keypoint (N,) bool: scored at least min_score; kept by the geometric verification
    and within its object's reach (permanence); depth has a surface at its pixel. Visible =
    all three (and finite features)."""

    scored: np.ndarray
    verified: np.ndarray
    has_depth: np.ndarray


@dataclass(frozen=True)
class DetectorConfig:
    """depth_radius: pixels searched for a valid depth reading around a match; min_score:
    matches scoring lower are not visible (None: the feature model's calibrated threshold);
    candidates: places per keypoint the geometric verification may choose from (1: none);
    permanence: objects tracked across the frames of a stream; instances: instance
    matching (IN: the search restricted to instance masks, `kil.perception.instances`)
    instead of image matching over the whole frame (None, IM); tracking: keypoints
    followed by a point tracker between detections (T); views: how a spec's views are used
    (VIEW_USES; without views all three are the same); refine_px: how far a view may
    move a found keypoint."""

    depth_radius: int = 3
    min_score: float | None = None
    similarity_vectors: bool = False
    candidates: int = 5
    geometry: GeometryConfig = GeometryConfig()
    permanence: PermanenceConfig = PermanenceConfig()
    instances: InstanceConfig | None = None
    tracking: TrackingConfig | None = None
    views: str = "initial"
    refine_px: int = 12

    def __post_init__(self) -> None:
        require(self.views in VIEW_USES, "views", f"expected one of {', '.join(VIEW_USES)}, got {self.views!r}")
        require(self.refine_px >= 1, "refine_px", f"must be >= 1 pixel, got {self.refine_px}")
        require((self.instances is None and self.tracking is None) or not self.similarity_vectors, "similarity_vectors",
                "not available with instance matching or tracking (extraction: in, t) yet")


@dataclass(frozen=True)
class TrackingConfig:
    """tracker: the point tracker's config (config/trackers/); a tracked keypoint whose
    descriptor similarity at its tracked pixel falls below the detector's min_score, or
    that the tracker loses, is found again by matching (the detector's `instances`
    setting: IM or IN, which also finds every keypoint on a stream's first frame) and the
    tracker starts again from there."""

    tracker: str = "lucas_kanade"

    def __post_init__(self) -> None:
        require(bool(self.tracker), "tracker", "name a point tracker config (e.g. lucas_kanade)")


def extraction_config(extraction: str, segmenter: str = "depth_colour", tracker: str = "lucas_kanade",
                      track_init: str = "im") -> tuple[InstanceConfig | None, TrackingConfig | None]:
    """(DetectorConfig.instances, DetectorConfig.tracking) for an `extraction` setting: "im"
    image matching; "in" instance matching with the segmentation backend `segmenter`; "t"
    the point tracker `tracker`, started and re-detected by `track_init` (im or in)."""
    require(extraction in EXTRACTIONS, "extraction", f"expected one of {', '.join(EXTRACTIONS)}, got {extraction!r}")
    require(track_init in ("im", "in"), "track_init", f"tracking starts from im or in, got {track_init!r}")
    if extraction == "t":
        return (InstanceConfig(segmenter) if track_init == "in" else None), TrackingConfig(tracker)
    return (InstanceConfig(segmenter) if extraction == "in" else None), None


class KeypointDetector:
    """Finds the reference keypoints in frames, given their patch features."""

    def __init__(self, references: ReferenceSet, config: DetectorConfig = DetectorConfig(), segmenter: Segmenter | None = None,
                 tracker: PointTracker | None = None, device: str | None = None) -> None:
        """`segmenter` / `tracker`: the instance segmenter and point tracker (default: the
        ones `config.instances` and `config.tracking` name, loaded here on `device`, or on
        their configs' device when None)."""
        models = {} if device is None else {"device": device}
        self.references = references
        self.config = config
        self.matcher = references.matcher() if config.views == "search" else references.without_views().matcher()
        self.refiner = references.matcher() if config.views != "search" and references.has_views() else None
        self.min_score = references.min_score if config.min_score is None else config.min_score
        groups = references.group if references.group is not None else np.arange(len(references.names))
        self._groups = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        self.permanence = ObjectPermanence(self._groups, config.permanence)
        self.instances: InstanceMatcher | None = None
        if config.instances is not None:
            if references.category is None:
                raise ValueError("references: instance matching needs each keypoint's category (reference_set gives it)")
            segmenter = segmenter or load_segmenter(config.instances.segmenter, models)
            slots = [Slot(members, int(references.category[members[0]])) for members in self._groups]
            self.instances = InstanceMatcher(segmenter, list(references.prompts), slots, config.instances)
        self.tracker: PointTracker | None = None
        if config.tracking is not None:
            self.tracker = tracker or load_tracker(config.tracking.tracker, models)
        self._tracking_since: int | None = None  # stamp of the frame the tracker last started on
        self._last_stamp_ns: int | None = None

    def reset(self) -> None:
        """Forget where objects were (the next frame starts a new stream)."""
        self.permanence.reset()
        self._tracking_since = None
        self._last_stamp_ns: int | None = None

    @property
    def channels(self) -> int:
        return self.matcher.channels

    def _choose(self, candidate_uv: np.ndarray, candidate_score: np.ndarray,
                reaches: list[Reach | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uv (N, 2), score (N,), verified (N,)) of one frame from its candidates (N, K, ...)."""
        usable = candidate_score >= self.min_score
        N = len(candidate_score)
        choice = np.zeros(N, int)
        verified = np.ones(N, bool)
        checked = self.references.uv is not None and candidate_score.shape[1] > 1
        for members, reach in zip(self._groups, reaches):
            anchor, radius = (None, np.inf) if reach is None else (reach.anchor, reach.radius_px)
            if checked:
                picked = verify_object(self.references.uv[members], candidate_uv[members], candidate_score[members],
                                       usable[members], self.config.geometry, anchor, radius)
            elif reach is not None:  # without verification: the best candidate, if within reach
                near = reachable(candidate_uv[members], np.ones_like(usable[members]), anchor, radius)
                picked = np.where(near.any(1), near.argmax(1), -1)
            else:
                continue
            choice[members] = np.maximum(picked, 0)
            verified[members] = picked >= 0
        rows = np.arange(N)
        return candidate_uv[rows, choice], candidate_score[rows, choice], verified

    def _untracked(self, reaches: list[Reach | None]) -> np.ndarray:
        """(N,) bool: keypoints whose object is not tracked yet, searched with the spec's views
        too (views "initial"; none otherwise, or without views)."""
        untracked = np.zeros(len(self.references.names), bool)
        if self.config.views == "initial" and self.refiner is not None:
            for members, reach in zip(self._groups, reaches):
                untracked[members] = reach is None
        return untracked

    def _first_sightings(self, features: np.ndarray | torch.Tensor, size: tuple[int, int], reaches: list[Reach | None],
                         candidate_uv: np.ndarray, candidate_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame's candidates (N, K, 2) and scores (N, K) by the reference images, those of
        objects not tracked yet replaced by the search with their views too (features (1, C, h, w))."""
        untracked = self._untracked(reaches)
        if not untracked.any():
            return candidate_uv, candidate_score
        found = self.refiner.match(features, size, candidates=max(self.config.candidates, 1))
        return (np.where(untracked[:, None, None], found.candidate_uv[0], candidate_uv),
                np.where(untracked[:, None], found.candidate_score[0], candidate_score))

    def _find(self, frame: RGBD, features: np.ndarray | torch.Tensor, size: tuple[int, int],
              reaches: list[Reach | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(uv (N, 2), score (N,), verified (N,), valid (N,)) of one frame (features (1, C, h,
        w)) by image or instance matching."""
        one = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, np.float32)
        finite = bool(np.isfinite(one).all())  # a frame with broken features is matched on zeros, not visible
        one = one if finite else np.zeros_like(one)
        if self.instances is None:
            matches = self.matcher.match(one, size, candidates=max(self.config.candidates, 1))
            uv, score, verified = self._choose(*self._first_sightings(one, size, reaches, matches.candidate_uv[0],
                                                                      matches.candidate_score[0]), reaches)
        else:
            untracked = self._untracked(reaches)
            if untracked.all():  # every object searched with its views (each stream's first frame): one matcher
                similarity = self.refiner.similarity(one, size)[0]
            else:
                similarity = self.matcher.similarity(one, size)[0]
                if untracked.any():
                    similarity = np.where(untracked[:, None, None], self.refiner.similarity(one, size)[0], similarity)
            uv, score, verified, _ = self.instances.choose(frame, similarity, reaches, self.min_score)
        return uv, score, verified & finite, np.full(len(score), finite)

    def _track(self, frame: RGBD, features: np.ndarray | torch.Tensor, size: tuple[int, int],
               reaches: list[Reach | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Like `_find`, with the keypoints followed by the tracker. Only keypoints found
        (verified, scoring min_score) when the tracker started are trusted; each frame a
        trusted point must still look like its reference (descriptor similarity at the
        tracked pixel). Points lost, untrusted or no longer alike are found again by
        matching, and the tracker starts again from the frame where any was found again
        (a lagging tracker, like CoTracker online, only once it keeps none: restarting it
        would throw its window away)."""
        last, self._last_stamp_ns = self._last_stamp_ns, frame.stamp_ns
        if last is not None and not 0 <= frame.stamp_ns - last <= self.config.permanence.max_gap_s * 1e9:
            self._tracking_since = None  # a new stream
        if self._tracking_since is None:
            uv, score, verified, valid = self._find(frame, features, size, reaches)
            self._start_tracking(frame, uv, verified & valid & (score >= self.min_score))
            return uv, score, verified, valid
        points = self.tracker.step(frame.rgb)
        one = features[0].cpu() if isinstance(features, torch.Tensor) else features[0]
        score = self.matcher.scores(sample_descriptors(one, points.uv, size)).astype(np.float32)
        kept = points.tracked & self._trusted & np.isfinite(score) & (score >= self.min_score)
        if kept.all():
            return points.uv, score, kept, np.ones(len(score), bool)
        uv_found, score_found, verified_found, valid = self._find(frame, features, size, reaches)
        again = ~kept & verified_found & valid & (score_found >= self.min_score)
        uv = np.where(kept[:, None], points.uv, uv_found)
        score = np.where(kept, score, score_found)
        if again.any() and (self.tracker.lag_frames == 0 or not kept.any()):
            self._start_tracking(frame, uv, kept | again)
        return uv, score, kept | again, valid

    def _start_tracking(self, frame: RGBD, uv: np.ndarray, trusted: np.ndarray) -> None:
        self.tracker.start(frame.rgb, uv)
        self._trusted = trusted.copy()
        self._tracking_since = frame.stamp_ns

    def _within_reach(self, xyz: np.ndarray, visible: np.ndarray, reaches: list[Reach | None]) -> np.ndarray:
        """(N,) bool: False for a keypoint whose lifted point lies farther from where it was
        last seen than its object can have moved (at the right pixel, but its depth reading
        on the fingers in front of it), judged per keypoint: one point read off the gripper
        neither hides its object's other points nor passes because they lie right. A
        keypoint without a place last time goes with its object's median displacement.
        With `permanence.rigid_m`, where three or more points were placed then and are
        seen now, each must also have moved like their median, within rigid_m: an object
        is rigid, so a point that moved alone, even within the reach, was read off
        something in front of it (a tray's centre under a block put down on it)."""
        out = np.ones(len(xyz), bool)
        for members, reach in zip(self._groups, reaches):
            if reach is None:
                continue
            members = np.asarray(members)
            then = np.isfinite(reach.last_xyz[:, 0])
            both = visible[members] & then  # placed then (seen, or kept with its object), seen now
            if not both.any():
                continue
            displacement = xyz[members] - reach.last_xyz  # (M, 3), NaN where not placed then
            moved = np.linalg.norm(displacement, axis=1)
            out[members[both]] = moved[both] <= reach.radius_m
            out[members[~then]] = float(np.median(moved[both])) <= reach.radius_m
            if self.config.permanence.rigid_m is not None and both.sum() >= 3:  # rigid: each point moves with the others' median
                alone = np.linalg.norm(displacement - np.median(displacement[both], axis=0), axis=1)
                out[members[both]] &= alone[both] <= self.config.permanence.rigid_m
        return out

    def _refine(self, features: np.ndarray | torch.Tensor, size: tuple[int, int], frame: RGBD, uv: np.ndarray,
                score: np.ndarray, xyz: np.ndarray, visible: np.ndarray):
        """Visible keypoints moved to the best of their reference and views within refine_px
        (a block turned away from its reference: the reference descriptor peaks 5-10 px
        off, toward where the point faced in the reference image), lifted again there;
        a keypoint without depth at its refined pixel, or with depth of another surface
        (EDGE_GAP_M nearer or farther: the fingers beside it), stays where it was found. Views
        only refine: where a keypoint is searched for (and whether it is found) stays the
        reference's, so views add no look-alikes. Returns (uv (N, 2), score (N,), xyz (N, 3))."""
        one = features.cpu() if isinstance(features, torch.Tensor) else features
        fine_uv, fine_score = self.refiner.refine(one, size, uv, visible, self.config.refine_px)
        fine_xyz, lifted = lift(fine_uv, frame.depth, frame.K, frame.T_base_camera, self.config.depth_radius)
        moved = visible & lifted
        if moved.any():  # on the surface it was found on (a pixel nearer the fingers beside it reads them)
            _, z_found = project(frame.K, frame.T_base_camera, np.where(moved[:, None], xyz, 0.0))
            _, z_fine = project(frame.K, frame.T_base_camera, np.where(moved[:, None], fine_xyz, 0.0))
            moved &= np.abs(z_fine - z_found) <= EDGE_GAP_M
        return (np.where(moved[:, None], fine_uv, uv), np.where(moved, fine_score, score).astype(np.float32),
                np.where(moved[:, None], fine_xyz, xyz))

    def detect(self, frames: list[RGBD], features: np.ndarray | torch.Tensor,
               grippers: list[GripperState | None] | None = None) -> list[Keypoints]:
        """Keypoints of B frames from their (B, C, h, w) patch features (one image size);
        `grippers`: the gripper's state at each frame where known (an object it holds is
        not looked for elsewhere, `kil.perception.permanence`)."""
        return [keypoints for keypoints, _ in self.detect_with_reasons(frames, features, grippers)]

    def detect_with_reasons(self, frames: list[RGBD], features: np.ndarray | torch.Tensor,
                            grippers: list[GripperState | None] | None = None) -> list[tuple[Keypoints, Reasons]]:
        """Like `detect`, with why each keypoint is visible or not."""
        if grippers is not None and len(grippers) != len(frames):
            raise ValueError(f"grippers: one per frame, got {len(grippers)} for {len(frames)} frames")
        sizes = {f.size for f in frames}
        if len(sizes) != 1:
            raise ValueError(f"frames: one image size per batch, got {sorted(sizes)}")
        size = sizes.pop()
        matches = None
        if self.instances is None and self.tracker is None:  # image matching: every frame of the batch at once
            matches = self.matcher.match(features, size, similarity_vectors=self.config.similarity_vectors,
                                         candidates=max(self.config.candidates, 1))
        out = []
        for b, frame in enumerate(frames):
            reaches = self.permanence.reaches(frame, None if grippers is None else grippers[b])
            if matches is not None:
                candidate_uv, candidate_score = self._first_sightings(features[b:b + 1], size, reaches, matches.candidate_uv[b],
                                                                     matches.candidate_score[b])
                uv, score, verified = self._choose(candidate_uv, candidate_score, reaches)
                valid = matches.valid[b]
            elif self.tracker is not None:
                uv, score, verified, valid = self._track(frame, features[b:b + 1], size, reaches)
            else:
                uv, score, verified, valid = self._find(frame, features[b:b + 1], size, reaches)
            xyz, has_depth = lift(uv, frame.depth, frame.K, frame.T_base_camera, self.config.depth_radius)
            visible = has_depth & valid & (score >= self.min_score) & verified
            verified &= self._within_reach(xyz, visible, reaches)
            visible &= verified
            if self.refiner is not None and visible.any():
                uv, score, xyz = self._refine(features[b], size, frame, uv, score, xyz, visible)
            xyz[~visible] = np.nan
            self.permanence.update(xyz, visible)
            reasons = Reasons(score >= self.min_score, verified, has_depth)
            out.append((Keypoints(
                stamp_ns=frame.stamp_ns,
                frame_id=frame.base_frame_id,
                names=self.references.names,
                uv=uv,
                xyz=xyz,
                score=np.where(np.isfinite(score), score, 0).astype(np.float32),
                visible=visible,
                instance=self.references.instance,
                similarity=None if matches is None or matches.similarity is None else matches.similarity[b],
            ), reasons))
        return out
