"""Self-supervised training of the dense descriptor net (paper 004) on simulated views.

Each step takes pairs of views with exact pixel correspondences: two camera poses of one
scene (object masks, several objects, the arm and the table in view), or, for a share of
pairs, two scenes with different instances of one category related by their scaled object
frames (so descriptors carry the category's semantics, not one instance's colour or size).
Images are colour-augmented independently (channel permutation, brightness, contrast,
saturation, noise). The pixelwise contrastive loss pulls matching descriptors together and
pushes non-matches at least `margin` apart, averaging the non-match term over the violating
pairs only, as dense object nets do. Non-matches are random pixels anywhere plus mined hard
negatives: of a pool of pixels on the task objects, the arm and gripper, and the scene's
distractors, the ones the current net finds most similar to the match (what a keypoint
jumps to in clutter or when the gripper covers it). Descriptors are unit-normalised, so a
margin m caps a non-match's cosine similarity at 1 - m^2/2 (0.5 for the default m = 1),
which leaves room for a calibrated visibility threshold at run time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from kil.config import require
from kil.errors import ConfigError
from kil.perception.features.base import IMAGENET_MEAN, IMAGENET_STD, normalise
from kil.perception.features.descriptor_net import DescriptorNet, NetArchitecture
from kil.sim.correspondence import View, category_correspondences, correspondences
from kil.training.descriptor_views import SceneViews


@dataclass(frozen=True)
class DescriptorTrainConfig:
    scenes: int = 96
    views_per_scene: int = 4
    image_size: tuple[int, int] = (240, 320)  # (height, width) of the training renders
    tasks: tuple[str, ...] = ("pick_place", "place_upright", "pick_place_two")
    robots: tuple[str, ...] = ("panda", "ur5e")
    variations: tuple[str, ...] = ("in", "scene", "rot", "scene")  # clutter, table colours, light: half the scenes
    steps: int = 2000
    pairs_per_step: int = 6
    matches_per_pair: int = 256
    non_matches: int = 96  # per match: half random pixels, half mined hard negatives
    hard_pool: int = 3  # hard negatives are the most similar of hard_pool times as many candidates
    distractor_share: float = 0.5  # of the hard candidates drawn on distractors, where a view has any
    object_share: float = 0.75  # of match pixels sampled on task objects / fixture
    cross_instance_share: float = 0.4  # of pairs across scenes with other instances of a category
    # of scenes with every object and distractor in a random colour: a block must be found by
    # its shape, not because the reference's block was red and the ball beside it is orange
    recolour_share: float = 0.5
    # of scenes seen along a scripted demonstration (objects in the fingers, lifted, put in the
    # fixture) instead of resting where they were placed, with the arm moved at random. Off by
    # default, as for the shipped net: half of them, fine-tuning it for 1500 steps, raised the
    # scores of held blocks but let keypoints jump to clutter in recorded scene episodes
    manipulated_share: float = 0.0
    margin: float = 1.0  # minimum distance of unit descriptors that do not correspond (cosine <= 0.5)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    workers: int = 2
    init: str = ""  # a net (save_net file) to continue training from; its architecture replaces `architecture`
    architecture: NetArchitecture = field(default_factory=NetArchitecture)

    def __post_init__(self) -> None:
        require(self.scenes >= 2 and self.views_per_scene >= 2, "scenes", "need at least 2 scenes of at least 2 views")
        require(self.steps >= 1 and self.pairs_per_step >= 1, "steps", "must be >= 1")
        require(0 <= self.cross_instance_share <= 1 and 0 <= self.object_share <= 1, "cross_instance_share", "shares lie in [0, 1]")
        require(self.hard_pool >= 1, "hard_pool", f"must be >= 1, got {self.hard_pool}")
        require(0 <= self.distractor_share <= 1, "distractor_share", f"a share in [0, 1], got {self.distractor_share}")
        require(0 <= self.recolour_share <= 1, "recolour_share", f"a share in [0, 1], got {self.recolour_share}")
        require(0 <= self.manipulated_share <= 1, "manipulated_share", f"a share in [0, 1], got {self.manipulated_share}")
        require(0 < self.margin <= 2, "margin", f"unit descriptors are at most 2 apart, got {self.margin}")


@dataclass
class Pair:
    rgb_a: np.ndarray
    rgb_b: np.ndarray
    uv_a: np.ndarray  # (M, 2) pixels
    uv_b: np.ndarray  # (M, 2) pixels
    negatives: np.ndarray  # (M, K + P, 2) pixels in B that do not correspond: K random, then a pool of P hard candidates
    negative_weight: np.ndarray  # (M, K + P) 1, or 0 on another instance of the match's category
    random_negatives: int  # K
    hard_negatives: int  # how many of the pool count per match (the most similar)


def _pixels(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((0, 2), int)
    pick = rng.integers(len(xs), size=n)
    return np.stack([xs[pick], ys[pick]], axis=1)


def make_pair(a: View, b: View, cross: bool, config: DescriptorTrainConfig, rng: np.random.Generator) -> Pair | None:
    """Matches and non-matches between two views; None when too few pixels correspond."""
    on_objects = np.isin(a.bodies, list(a.objects))
    n = 3 * config.matches_per_pair  # oversample: many fall outside B or are occluded
    if cross:
        candidates = _pixels(on_objects, n, rng)
        uv_b, valid = category_correspondences(a, b, candidates)
        n_on_objects = len(candidates)
    else:
        on = _pixels(on_objects, int(n * config.object_share), rng)
        candidates = np.concatenate([on, _pixels(a.bodies >= 0, n - len(on), rng)])
        uv_b, valid = correspondences(a, b, candidates)
        n_on_objects = len(on)
    if valid.sum() < 16:
        return None
    keep = _keep_shares(valid, n_on_objects, config.matches_per_pair, config.object_share, rng)
    uv_a, uv_b = candidates[keep].astype(np.float64), uv_b[keep]
    h, w = b.depth.shape
    m, k = len(keep), config.non_matches
    objects_and_arm = np.isin(b.bodies, list(b.objects) + list(b.robot))
    clutter = np.isin(b.bodies, list(b.distractors))
    k_hard = k - k // 2 if (objects_and_arm.any() or clutter.any()) else 0
    anywhere = np.stack([rng.integers(w, size=(m, k - k_hard)), rng.integers(h, size=(m, k - k_hard))], axis=-1)
    pool = k_hard * config.hard_pool
    on_clutter = int(round(pool * config.distractor_share)) if clutter.any() else 0
    if not objects_and_arm.any():
        on_clutter = pool
    hard = np.concatenate([_pixels(clutter, m * on_clutter, rng).reshape(m, on_clutter, 2),
                           _pixels(objects_and_arm, m * (pool - on_clutter), rng).reshape(m, pool - on_clutter, 2)], axis=1)
    negatives = np.concatenate([anywhere, hard], axis=1).astype(np.float64)
    # A "non-match" within a few pixels of the true match is a match: push it away.
    close = np.linalg.norm(negatives - uv_b[:, None], axis=-1) < 6
    negatives[close] = (negatives[close] + [w / 2, h / 2]) % [w, h]
    # Descriptors are meant to be the same on every instance of a category (the keypoints are
    # semantic), so another block is no negative for a point on a block; other points of the
    # same block are.
    category_b = _category_map(b)
    px_b = np.round(uv_b).astype(int)
    rows, cols = px_b[:, 1].clip(0, h - 1), px_b[:, 0].clip(0, w - 1)
    match_category, match_body = category_b[rows, cols], b.bodies[rows, cols]
    neg = negatives.astype(int)
    neg_category, neg_body = category_b[neg[..., 1], neg[..., 0]], b.bodies[neg[..., 1], neg[..., 0]]
    other_instance = (neg_category == match_category[:, None]) & (match_category[:, None] >= 0) & (neg_body != match_body[:, None])
    return Pair(a.rgb, b.rgb, uv_a, uv_b, negatives, (~other_instance).astype(np.float32), k - k_hard, k_hard)


def _keep_shares(valid: np.ndarray, n_first: int, m: int, first_share: float, rng: np.random.Generator) -> np.ndarray:
    """Up to `m` indices of valid candidates, about `first_share` of them from the first
    `n_first` candidates (the object pixels) and the rest from the others, in random order."""
    first = rng.permutation(np.flatnonzero(valid[:n_first]))
    rest = rng.permutation(np.flatnonzero(valid[n_first:]) + n_first)
    take_first = min(len(first), max(int(round(m * first_share)), m - len(rest)))
    return np.concatenate([first[:take_first], rest[: m - take_first]])


def _category_map(view: View) -> np.ndarray:
    """(H, W) int: an index per category of the view's task objects and fixture, -1 elsewhere."""
    names = sorted({category for category, _ in view.objects.values()})
    out = np.full(view.bodies.shape, -1, np.int64)
    for body, (category, _) in view.objects.items():
        out[view.bodies == body] = names.index(category)
    return out


def augment(rgb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> colour-jittered copy (per image): channel permutation,
    brightness, contrast, saturation, Gaussian noise."""
    out = []
    for img in rgb:
        if torch.rand((), generator=generator) < 0.5:
            img = img[torch.randperm(3, generator=generator)]
        u = torch.rand(4, generator=generator)
        img = img * (0.6 + 0.8 * u[0])
        mean = img.mean()
        img = (img - mean) * (0.6 + 0.8 * u[1]) + mean
        gray = img.mean(dim=0, keepdim=True)
        img = gray + (img - gray) * (0.3 + 1.2 * u[2])
        img = img + 0.02 * u[3] * torch.randn(img.shape, generator=generator)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def sample(descriptors: torch.Tensor, uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Unit descriptors at pixels: descriptors (D, h, w) covering `image_size`; uv (..., 2)."""
    H, W = image_size
    shape = uv.shape[:-1]
    grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], dim=-1).reshape(1, 1, -1, 2)
    out = F.grid_sample(descriptors[None], grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(out[0, :, 0].T, dim=-1).reshape(*shape, -1)


def contrastive_loss(desc_a, desc_b, pair: Pair, margin: float, image_size) -> tuple[torch.Tensor, dict[str, float]]:
    da = sample(desc_a, torch.from_numpy(pair.uv_a), image_size)
    db = sample(desc_b, torch.from_numpy(pair.uv_b), image_size)
    dn = sample(desc_b, torch.from_numpy(pair.negatives), image_size)  # (M, K + P, D)
    weight = torch.from_numpy(pair.negative_weight)
    match = (da - db).pow(2).sum(-1).mean()
    distance = (da[:, None] - dn).pow(2).sum(-1).clamp(min=1e-12).sqrt()
    k = pair.random_negatives
    if pair.hard_negatives:  # mining: of the pool, the closest (weighted-out ones never count)
        pool = distance[:, k:].detach().masked_fill(weight[:, k:] == 0, float("inf"))
        hardest = k + pool.topk(pair.hard_negatives, dim=1, largest=False).indices
        keep = torch.cat([torch.arange(k).expand(len(distance), k), hardest], dim=1)
        distance, weight = distance.gather(1, keep), weight.gather(1, keep)
    else:
        distance, weight = distance[:, :k], weight[:, :k]
    hinge = F.relu(margin - distance).pow(2) * weight
    hard = (hinge > 0).sum().clamp(min=1)
    non_match = hinge.sum() / hard
    return match + non_match, {"match": match.item(), "non_match": non_match.item(), "hard_share": hard.item() / hinge.numel()}


class PairSampler:
    """Draws training pairs from rendered scenes."""

    def __init__(self, scenes: list[SceneViews], config: DescriptorTrainConfig, rng: np.random.Generator) -> None:
        self.scenes = scenes
        self.config = config
        self.rng = rng
        self.by_task: dict[str, list[int]] = {}
        for i, s in enumerate(scenes):
            self.by_task.setdefault(s.request.task, []).append(i)

    def draw(self, attempts: int = 1000) -> Pair:
        for _ in range(attempts):
            i = int(self.rng.integers(len(self.scenes)))
            views = self.scenes[i].views
            cross = self.rng.random() < self.config.cross_instance_share
            if cross:
                j = int(self.rng.choice(self.by_task[self.scenes[i].request.task]))
                a, b = views[self.rng.integers(len(views))], self.scenes[j].views[self.rng.integers(len(self.scenes[j].views))]
            else:
                ia, ib = self.rng.choice(len(views), size=2, replace=False)
                a, b = views[ia], views[ib]
            pair = make_pair(a, b, cross, self.config, self.rng)
            if pair is not None:
                return pair
        raise ConfigError(f"descriptor training: no view pair with 16 corresponding pixels in {attempts} draws (are the objects in view?)")


def to_tensor(rgb: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 255.0


def train(scenes: list[SceneViews], config: DescriptorTrainConfig,
          progress: Callable[[int, dict[str, float]], None] | None = None) -> tuple[DescriptorNet, list[dict[str, float]]]:
    """Train a DescriptorNet; returns it (eval mode) and the per-step loss history."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if config.init:
        from kil.perception.features.descriptor_net import load_net

        net = load_net(config.init, "--init: ")
    else:
        net = DescriptorNet(config.architecture)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / config.steps)))
    sampler = PairSampler(scenes, config, rng)
    size = tuple(config.image_size)
    history = []
    net.train()
    for step in range(config.steps):
        start = time.perf_counter()
        pairs = [sampler.draw() for _ in range(config.pairs_per_step)]
        images = augment(to_tensor([p.rgb_a for p in pairs] + [p.rgb_b for p in pairs]), generator)
        desc = net(normalise(images, IMAGENET_MEAN, IMAGENET_STD))
        n = len(pairs)
        losses, stats = [], []
        for k, pair in enumerate(pairs):
            loss, s = contrastive_loss(desc[k], desc[n + k], pair, config.margin, size)
            losses.append(loss)
            stats.append(s)
        loss = torch.stack(losses).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        record = {"step": step, "loss": loss.item(), "seconds": time.perf_counter() - start,
                  **{key: float(np.mean([s[key] for s in stats])) for key in stats[0]}}
        history.append(record)
        if progress:
            progress(step, record)
    return net.eval(), history


def training_facts(config: DescriptorTrainConfig, history: list[dict[str, float]]) -> dict:
    """What goes into the weights file's metadata about how it was trained."""
    return {"training": {**asdict(config), "final_loss": float(np.mean([h["loss"] for h in history[-50:]])),
                         "train_seconds": float(sum(h["seconds"] for h in history))}}
