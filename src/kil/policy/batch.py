"""Policy inputs and targets as batched torch tensors, in metres and rotation matrices
("raw"), and their conversion to the normalised vectors the network sees ("encoded").

Raw batch keys (B samples, To observation steps, N keypoints, H actions):
    keypoints (B, To, N, 3) base frame, 0 where not visible; visible (B, To, N) bool;
    similarity (B, To, N, N) optional; images (B, To, h, w, 3) uint8 (RGB baseline); ee_position (B, To, 3); ee_rotation (B, To, 3, 3);
    gripper (B, To); and for training action_position (B, H, 3), action_rotation (B, H, 3, 3),
    action_gripper (B, H). With a keypoint-centred action frame, optionally anchor_position
    (B, 3) base frame and anchor_known (B,) bool: the anchor keypoint where it was last seen
    in the episode up to the newest observation (without them: in the history).

Training keeps every sample of the store in one SampleBank and draws batches by index, so a
step costs a few tensor gathers, not a Python loop over samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from kil.data.store import EpisodeData
from kil.errors import ConfigError
from kil.policy.configuration import PolicyConfig
from kil.policy.normalizer import MinMax, Normalizer
from kil.policy.rotation import rot6d_to_matrix

Batch = dict[str, torch.Tensor]
KEYPOINT_QUANTILE = 0.001  # keypoint bounds ignore this tail on each side (rare far-off mismatches)
QUANTILE_ROWS = 1_000_000


def quat_to_matrix_torch(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) unit quaternions x, y, z, w -> (..., 3, 3)."""
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_euler_torch(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) extrinsic x-y-z Euler angles (as rotation.quat_to_euler)."""
    pitch = torch.asin((-R[..., 2, 0]).clamp(-1.0, 1.0))
    roll = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    yaw = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    return torch.stack([roll, pitch, yaw], dim=-1)


def matrix_to_rot6d_torch(R: torch.Tensor) -> torch.Tensor:
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def last_seen(xyz: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints over an episode, xyz (T, ..., 3) and visible (T, ...), carried forward:
    ((T, ..., 3) each one's position at its latest sighting up to each step, zero before its
    first; (T, ...) seen by then)."""
    steps = np.arange(len(visible)).reshape(-1, *([1] * (visible.ndim - 1)))
    seen_at = np.where(visible, steps, -1)
    latest = np.maximum.accumulate(seen_at, axis=0) if len(seen_at) else seen_at
    known = latest >= 0
    held = np.take_along_axis(xyz, np.maximum(latest, 0)[..., None], axis=0)
    return np.where(known[..., None], held, 0.0).astype(np.float32), known


class SampleBank:
    """Every training sample of a store: sample t of an episode has observations t-To+1..t
    (clamped at the episode start) and the action chunk recorded at t."""

    def __init__(self, episodes: list[EpisodeData], n_obs_steps: int, horizon: int, similarity: bool = False, images: bool = False,
                 anchor: int | None = None, hold_hidden: bool = False) -> None:
        """hold_hidden: a hidden keypoint is observed at its last sighting in the episode
        (policy.hidden_keypoints last_seen), not masked."""
        if not episodes:
            raise ValueError("no episodes")
        if episodes[0].action.shape[1] < horizon:
            raise ValueError(f"the store's chunks have {episodes[0].action.shape[1]} actions, the policy predicts {horizon}")
        obs_index, offset = [], 0
        for e in episodes:
            t = np.arange(len(e))
            steps = np.clip(t[:, None] + np.arange(-n_obs_steps + 1, 1)[None], 0, None)
            obs_index.append(offset + steps)
            offset += len(e)
        self.obs_index = torch.as_tensor(np.concatenate(obs_index))  # (S, To) rows of the flat arrays
        cat = lambda key: torch.as_tensor(np.concatenate([getattr(e, key) for e in episodes]))  # noqa: E731
        if hold_hidden:
            held = [last_seen(e.keypoints, e.visible) for e in episodes]
            keypoints, visible = (torch.as_tensor(np.concatenate(part)) for part in zip(*held))
            keypoints = keypoints.float()
        else:
            visible = cat("visible")
            keypoints = cat("keypoints").float()
        self.keypoints = torch.where(visible[..., None], keypoints, torch.zeros(()))
        self.visible = visible
        if similarity and any(e.similarity is None for e in episodes):
            raise ConfigError("policy.similarity: the store was built without similarity vectors (kil build-dataset --similarity)")
        if images and any(e.rgb is None for e in episodes):
            raise ConfigError("policy.kind: rgb needs images, but the store was built without them (kil build-dataset --images)")
        self.similarity = cat("similarity").float() if similarity else None
        self.images = cat("rgb") if images else None  # uint8, converted per batch
        self.ee_position = cat("ee_position").float()
        self.ee_rotation = quat_to_matrix_torch(cat("ee_orientation").double()).float()
        self.gripper = cat("gripper").float()
        action = cat("action")[:, :horizon].float()
        self.action_position = action[..., :3]
        self.action_rotation = rot6d_to_matrix(action[..., 3:9])
        self.action_gripper = action[..., 9]
        # samples whose action chunk is a demonstration (a store may mark injected errors not to imitate)
        self.imitate = torch.as_tensor(np.concatenate([np.ones(len(e), bool) if e.imitate is None else e.imitate for e in episodes]))
        self.anchor_position = self.anchor_known = None
        if anchor is not None:  # the anchor's last sighting in the episode, at every sample
            rows = [last_seen(e.keypoints[:, anchor], e.visible[:, anchor]) for e in episodes]
            self.anchor_position = torch.as_tensor(np.concatenate([r[0] for r in rows])).float()
            self.anchor_known = torch.as_tensor(np.concatenate([r[1] for r in rows]))

    def __len__(self) -> int:
        return len(self.obs_index)

    @property
    def keypoint_count(self) -> int:
        return self.keypoints.shape[1]

    def batch(self, index: torch.Tensor, images: bool = True) -> Batch:
        rows = self.obs_index[index]
        out = {
            "keypoints": self.keypoints[rows], "visible": self.visible[rows], "ee_position": self.ee_position[rows],
            "ee_rotation": self.ee_rotation[rows], "gripper": self.gripper[rows],
            "action_position": self.action_position[index], "action_rotation": self.action_rotation[index],
            "action_gripper": self.action_gripper[index],
        }
        if self.anchor_position is not None:
            out["anchor_position"], out["anchor_known"] = self.anchor_position[index], self.anchor_known[index]
        if self.similarity is not None:
            out["similarity"] = self.similarity[rows]
        if self.images is not None and images:
            out["images"] = self.images[rows]
        return out


@dataclass
class Encoded:
    """Network inputs: keypoints (B, To, N, F) features, mask (B, To, N) visible, proprio
    (B, To, P), images (B, To, 3, h, w) for the RGB baseline; action (B, H, 10) when training."""

    keypoints: torch.Tensor
    mask: torch.Tensor
    proprio: torch.Tensor
    action: torch.Tensor | None = None
    images: torch.Tensor | None = None

    OBSERVATION_FIELDS = ("keypoints", "mask", "proprio", "images")

    def _map(self, fn, fields=OBSERVATION_FIELDS) -> Encoded:
        changes = {k: fn(getattr(self, k)) for k in fields if getattr(self, k) is not None}
        return replace(self, **changes)

    def flat_steps(self) -> Encoded:
        """Observation fields with (B, To) merged into one batch axis (steps encoded alone)."""
        return self._map(lambda x: x.flatten(0, 1))

    def rows(self, index: slice) -> Encoded:
        return self._map(lambda x: x[index], self.OBSERVATION_FIELDS + ("action",))

    def to(self, device: torch.device | str) -> Encoded:
        return self._map(lambda x: x.to(device), self.OBSERVATION_FIELDS + ("action",))


class Codec:
    """Raw batches <-> normalised network vectors, for one policy configuration."""

    def __init__(self, config: PolicyConfig, normalizer: Normalizer, anchor: int | None = None) -> None:
        self.config = config
        self.normalizer = normalizer
        self.anchor = anchor  # keypoint index of the keypoint-centred action frame

    @property
    def proprio_dim(self) -> int:
        return 3 + (3 if self.config.proprio_rotation == "euler" else 6) + 1

    def _rotation_features(self, R: torch.Tensor) -> torch.Tensor:
        return matrix_to_euler_torch(R) if self.config.proprio_rotation == "euler" else matrix_to_rot6d_torch(R)

    def anchor_position(self, raw: Batch) -> torch.Tensor:
        """(B, 3) origin of the action frame: the anchor keypoint where it was last seen (the
        batch's anchor_position, else the newest observation of the history where it is
        visible; zero for the base frame; see anchor_visible)."""
        B, To = raw["ee_position"].shape[:2]
        if self.anchor is None:
            return torch.zeros(B, 3, dtype=raw["ee_position"].dtype)
        if "anchor_position" in raw:
            return raw["anchor_position"]
        seen = raw["visible"][:, :, self.anchor]
        newest = (seen * torch.arange(1, To + 1)).argmax(dim=1)
        return raw["keypoints"][torch.arange(B), newest, self.anchor]

    def anchor_visible(self, raw: Batch) -> torch.Tensor:
        """(B,) whether the action frame is defined: the anchor was seen (in the episode so
        far where the batch says, else in the history)."""
        if self.anchor is None:
            return torch.ones(raw["ee_position"].shape[0], dtype=torch.bool)
        if "anchor_known" in raw:
            return raw["anchor_known"]
        return raw["visible"][:, :, self.anchor].any(dim=1)

    def raw_fields(self, raw: Batch) -> dict[str, torch.Tensor]:
        """Unnormalised network fields (what the normaliser is fitted on)."""
        proprio = torch.cat([raw["ee_position"], self._rotation_features(raw["ee_rotation"]), raw["gripper"][..., None]], dim=-1)
        fields = {"keypoints": raw["keypoints"], "proprio": proprio}
        if "action_position" in raw:
            position = raw["action_position"] - self.anchor_position(raw)[:, None]
            fields["action"] = torch.cat([position, matrix_to_rot6d_torch(raw["action_rotation"]), raw["action_gripper"][..., None]], dim=-1)
        return fields

    def encode(self, raw: Batch) -> Encoded:
        fields = self.raw_fields(raw)
        keypoints = self.normalizer["keypoints"].normalize(fields["keypoints"]).clamp(-2.0, 2.0)  # a wild mismatch stays bounded
        keypoints = torch.where(raw["visible"][..., None], keypoints, torch.zeros(()))
        if self.config.similarity:
            keypoints = torch.cat([keypoints, raw["similarity"]], dim=-1)
        proprio = self.normalizer["proprio"].normalize(fields["proprio"])
        action = self.normalizer["action"].normalize(fields["action"]) if "action" in fields else None
        images = None
        if "images" in raw:  # (B, To, h, w, 3) uint8 -> (B, To, 3, h, w) in [-1, 1]
            images = raw["images"].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        return Encoded(keypoints, raw["visible"], proprio, action, images)

    def decode_actions(self, action: torch.Tensor, raw: Batch) -> dict[str, torch.Tensor]:
        """Normalised (B, H, 10) network output -> position (B, H, 3) base frame, rotation
        (B, H, 3, 3), gripper (B, H)."""
        a = self.normalizer["action"].unnormalize(action)
        position = a[..., :3] + self.anchor_position(raw).to(a)[:, None]
        return {"position": position, "rotation": rot6d_to_matrix(a[..., 3:9]), "gripper": a[..., 9]}

    @staticmethod
    def fit(config: PolicyConfig, samples: list[Batch], anchor: int | None = None) -> Codec:
        """Fit the normaliser on raw batches (e.g. the bank with and without augmentation)."""
        probe = Codec(config, Normalizer({}), anchor)
        fields = [probe.raw_fields(b) for b in samples]
        kp = torch.cat([f["keypoints"][b["visible"]] for f, b in zip(fields, samples)])
        if len(kp) > QUANTILE_ROWS:  # torch.quantile takes at most 2^24 rows; a fixed subsample is plenty
            kp = kp[torch.randperm(len(kp), generator=torch.Generator().manual_seed(0))[:QUANTILE_ROWS]]
        low, high = torch.quantile(kp.double(), torch.tensor([KEYPOINT_QUANTILE, 1 - KEYPOINT_QUANTILE], dtype=torch.float64), dim=0).float()
        mm = {"keypoints": MinMax(low, high)}
        mm["proprio"] = MinMax.fit(torch.cat([f["proprio"].reshape(-1, f["proprio"].shape[-1]) for f in fields]))
        # Only samples whose action frame is defined (always, in the base frame).
        actions = [f["action"][probe.anchor_visible(b)] for f, b in zip(fields, samples)]
        mm["action"] = MinMax.fit(torch.cat([a.reshape(-1, a.shape[-1]) for a in actions]))
        return Codec(config, Normalizer(mm), anchor)
