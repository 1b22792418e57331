"""Instance matching (paper 001's IN): each object's reference keypoints are searched only
inside the instance masks of its category.

A segmentation backend (`kil.perception.segmentation`) gives the frame's instances for the
spec's category prompts; a class-agnostic backend gives unlabelled ones that any category
may take. Every object slot (one reference image: `block`, or `block[0]` and `block[1]`)
scores every instance by the mean similarity of its keypoints at their best pixels inside
the mask. The slots of a category take the best-scoring instances, one each and greedily,
among those within reach of where the slot's object was last seen (object permanence) and
scoring at least `min_instance_score`. Look-alikes have no order of their own, so slots of
one category that know nothing of their object yet (a stream's start) are numbered by
place: the instance nearest the camera (horizontally, in the base frame) goes to the first
slot, as demonstrators handle the object closest to the camera first (paper 001); from then
on permanence keeps each slot on its object. A slot left without an instance is not visible,
which the policy sees as padding. A keypoint takes its best pixel inside its slot's mask;
the similarity threshold and depth still decide whether it is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kil.config import require
from kil.msgs import RGBD
from kil.perception.lifting import lift
from kil.perception.permanence import Reach
from kil.perception.segmentation.base import Instances, Prompt, Segmenter


INSTANCE_MATCHING_VERSION = 2  # bump when the same inputs give other slots (dataset caches depend on it)


@dataclass(frozen=True)
class InstanceConfig:
    """segmenter: the segmentation backend's config (name under config/segmentation/ or a
    YAML path); min_instance_score: the mean keypoint similarity an instance needs to be
    taken for an object (None: the detector's min_score)."""

    segmenter: str = "depth_colour"
    min_instance_score: float | None = None

    def __post_init__(self) -> None:
        require(bool(self.segmenter), "segmenter", "name a segmentation backend config (e.g. depth_colour)")
        require(self.min_instance_score is None or -1.0 <= self.min_instance_score <= 1.0, "min_instance_score",
                f"a cosine similarity in [-1, 1], got {self.min_instance_score}")


@dataclass(frozen=True)
class Slot:
    """One object to find: its keypoints (indices into the reference set) and the index of
    its category's prompt."""

    members: np.ndarray
    category: int


class InstanceMatcher:
    """Chooses each slot's instance in a frame and its keypoints' pixels inside it."""

    def __init__(self, segmenter: Segmenter, prompts: list[str], slots: list[Slot], config: InstanceConfig = InstanceConfig()) -> None:
        self.segmenter = segmenter
        self.prompts = prompts
        self.slots = slots
        self.config = config

    def _prompts(self, flat: np.ndarray, width: int) -> list[Prompt]:
        """A text prompt per category; for point-prompted backends also each slot's single
        best image match (so they segment what image matching would take)."""
        points: dict[int, list[np.ndarray]] = {}
        for slot in self.slots:
            best = flat[slot.members].max(1)
            index = flat[slot.members[int(best.argmax())]].argmax()
            points.setdefault(slot.category, []).append(np.array([index % width, index // width], float))
        return [Prompt(text=text, points=np.array(points[c]) if c in points else None) for c, text in enumerate(self.prompts)]

    def choose(self, frame: RGBD, similarity: np.ndarray, reaches: list[Reach | None],
               min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, Instances]:
        """(uv (N, 2) px, score (N,), taken (N,) bool: the keypoint's slot took an instance,
        and the instances) for one frame, from the similarity (N, H, W) of every reference
        keypoint at every pixel; `reaches`: per slot, where its object can be (None: anywhere)."""
        N, H, W = similarity.shape
        flat = similarity.reshape(N, -1)
        instances = distinct(self.segmenter.segment(frame, self._prompts(flat, W)))
        best = flat.argmax(1)  # a slot without an instance reports its best pixel anywhere, not visible
        uv = np.stack([best % W, best // W], 1).astype(np.float64)
        score = flat[np.arange(N), best].astype(np.float32)
        taken = np.zeros(N, bool)
        threshold = min_score if self.config.min_instance_score is None else self.config.min_instance_score
        offers = []  # (instance score, slot, instance, pixel indices (M,), scores (M,))
        pixels = [np.flatnonzero(m) for m in instances.masks]
        for s, (slot, reach) in enumerate(zip(self.slots, reaches)):
            for k in np.flatnonzero((instances.prompt == slot.category) | (instances.prompt < 0)):
                inside = flat[slot.members][:, pixels[k]]  # (M, |mask|)
                at = inside.argmax(1)
                values = inside[np.arange(len(at)), at]
                where = pixels[k][at]
                if values.mean() >= threshold and _within(reach, where, W):
                    offers.append((float(values.mean()), s, int(k), where, values))
        chosen: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slot -> (pixel indices (M,), scores (M,))
        used_instances = set()
        for _, s, k, where, values in sorted(offers, key=lambda o: -o[0]):
            if s in chosen or k in used_instances:
                continue
            chosen[s] = (where, values)
            used_instances.add(k)
        chosen = self._numbered_by_place(chosen, reaches, frame, W)
        for s, (where, values) in chosen.items():
            members = self.slots[s].members
            uv[members] = np.stack([where % W, where // W], 1)
            score[members] = values
            taken[members] = True
        return uv, score, taken, instances

    def _numbered_by_place(self, chosen: dict[int, tuple[np.ndarray, np.ndarray]], reaches: list[Reach | None],
                           frame: RGBD, width: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """`chosen` with the instances of each category's slots that know nothing of their
        object yet (no reach) handed out again, nearest the camera to the first such slot."""
        fresh: dict[int, list[int]] = {}
        for s in sorted(chosen):
            if _unknown(reaches[s]):
                fresh.setdefault(self.slots[s].category, []).append(s)
        camera_xy = frame.T_base_camera[:2, 3]
        out = dict(chosen)
        for slots in fresh.values():
            if len(slots) < 2:
                continue
            distance = []
            for s in slots:
                where = chosen[s][0]
                xyz, visible = lift(np.stack([where % width, where // width], 1).astype(np.float64), frame.depth, frame.K, frame.T_base_camera)
                # an instance without depth sorts last, by its pixels' mean row (lower in the image is nearer)
                distance.append((0, float(np.linalg.norm(xyz[visible, :2].mean(0) - camera_xy))) if visible.any()
                                else (1, -float((where // width).mean())))
            for s, nearest in zip(slots, sorted(slots, key=lambda s: distance[slots.index(s)])):
                out[s] = chosen[nearest]
        return out


DUPLICATE_IOU = 0.8  # instances overlapping this much are one object (two point prompts on the same block)


def distinct(instances: Instances, iou: float = DUPLICATE_IOU) -> Instances:
    """`instances` without those overlapping a better one by more than `iou` (intersection
    over union), so that two objects of a category never take the same object twice."""
    if len(instances) < 2:
        return instances
    flat = instances.masks.reshape(len(instances), -1)
    area = flat.sum(1)
    keep: list[int] = []
    for k in range(len(instances)):  # best first
        overlap = [(flat[k] & flat[j]).sum() / max(area[k] + area[j] - (flat[k] & flat[j]).sum(), 1) for j in keep]
        if all(o <= iou for o in overlap):
            keep.append(k)
    return Instances(instances.masks[keep], instances.score[keep], instances.prompt[keep])


def _unknown(reach: Reach | None) -> bool:
    """Whether a slot knows nothing of where its object was."""
    return reach is None or not np.isfinite(reach.anchor[:, 0]).any()


def _within(reach: Reach | None, where: np.ndarray, width: int) -> bool:
    """Whether an object whose keypoints lie at flat pixel indices `where` is within its
    reach (the mean distance of the keypoints seen last time to where they were)."""
    if reach is None:
        return True
    known = np.isfinite(reach.anchor[:, 0])
    if not known.any():
        return True
    uv = np.stack([where % width, where // width], 1)[known]
    return float(np.linalg.norm(uv - reach.anchor[known], axis=1).mean()) <= reach.radius_px
