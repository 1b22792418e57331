"""Training augmentations on raw batches (paper 001, table X; paper 000 for token dropout).

The spatial transform (a yaw about a vertical axis through the workspace centre, then a
translation) is one rigid motion per sample, applied to every keypoint, the EE pose of
every observation step and every action: the demonstration is moved as a whole, so the
actions stay exactly consistent with the moved observations. The noise terms perturb only
the observations.
"""

from __future__ import annotations

import torch

from kil.policy.batch import Batch
from kil.policy.configuration import AugmentConfig


def yaw_matrices(angle: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3) rotations about z."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).reshape(-1, 3, 3)


def rotvec_matrices(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vectors -> (..., 3, 3) (Rodrigues)."""
    theta = v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    k = v / theta
    K = torch.zeros(*v.shape[:-1], 3, 3, dtype=v.dtype)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - K.transpose(-1, -2)
    t = theta[..., None]
    eye = torch.eye(3, dtype=v.dtype).expand_as(K)
    return eye + torch.sin(t) * K + (1 - torch.cos(t)) * (K @ K)


def rigid_transform(raw: Batch, R: torch.Tensor, centre: torch.Tensor, shift: torch.Tensor) -> Batch:
    """Apply p -> R (p - centre) + centre + shift and R_ee -> R R_ee per sample (R: (B, 3, 3),
    shift: (B, 3)) to keypoints, EE poses and actions; invisible keypoints stay zero."""
    out = dict(raw)

    def move(p: torch.Tensor) -> torch.Tensor:
        lead = p.shape[1:-1]
        flat = p.reshape(p.shape[0], -1, 3)
        moved = (flat - centre) @ R.transpose(-1, -2) + centre + shift[:, None]
        return moved.reshape(p.shape[0], *lead, 3)

    def turn(rot: torch.Tensor) -> torch.Tensor:
        extra = (None,) * (rot.dim() - 3)
        return R[(slice(None), *extra)] @ rot

    out["keypoints"] = torch.where(raw["visible"][..., None], move(raw["keypoints"]), torch.zeros(()))
    out["ee_position"] = move(raw["ee_position"])
    out["ee_rotation"] = turn(raw["ee_rotation"])
    if "anchor_position" in raw:
        out["anchor_position"] = move(raw["anchor_position"][:, None])[:, 0]
    if "action_position" in raw:
        out["action_position"] = move(raw["action_position"])
        out["action_rotation"] = turn(raw["action_rotation"])
    return out


def shift_images(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `pad` pixels (replicate-padded, then cropped back: the
    random crop of diffusion policy), one shift per sample for all its steps."""
    B, To, h, w, _ = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(B, To * 3, h, w).float()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, B), generator=generator)
    out = torch.stack([padded[b, :, dy[b]: dy[b] + h, dx[b]: dx[b] + w] for b in range(B)])
    return out.reshape(B, To, 3, h, w).permute(0, 1, 3, 4, 2).round().to(images.dtype)


def augment(raw: Batch, config: AugmentConfig, generator: torch.Generator, protected: int | None = None) -> Batch:
    """Spatial transform, noise and dropout for keypoint policies. Camera images cannot be
    moved with the scene, so with images only the EE noise and a random crop apply. The
    `protected` keypoint (the action frame's) is never dropped."""
    if "images" in raw:
        out = dict(raw)
        out["images"] = shift_images(raw["images"], config.image_shift_px, generator)
        out["ee_position"] = raw["ee_position"] + torch.randn(raw["ee_position"].shape, generator=generator) * config.ee_noise_m
        return out
    B = raw["ee_position"].shape[0]
    dtype = raw["ee_position"].dtype

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1

    def normal(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, dtype=dtype)

    R = yaw_matrices(uniform(B) * config.yaw_rad)
    shift = uniform(B, 3) * config.shift_m * torch.tensor([1.0, 1.0, 0.5], dtype=dtype)
    centre = torch.tensor([*config.yaw_centre, 0.0], dtype=dtype)
    out = rigid_transform(raw, R, centre, shift)
    out["keypoints"] = torch.where(raw["visible"][..., None], out["keypoints"] + normal(out["keypoints"]) * config.keypoint_noise_m, torch.zeros(()))
    out["ee_position"] = out["ee_position"] + normal(out["ee_position"]) * config.ee_noise_m
    if config.ee_noise_rad > 0:
        out["ee_rotation"] = rotvec_matrices(normal(out["ee_position"]) * config.ee_noise_rad) @ out["ee_rotation"]
    if config.keypoint_dropout > 0:
        keep = torch.rand(raw["visible"].shape, generator=generator) >= config.keypoint_dropout
        if protected is not None:
            keep[..., protected] = True
        out["visible"] = raw["visible"] & keep
        out["keypoints"] = torch.where(out["visible"][..., None], out["keypoints"], torch.zeros(()))
    return out
