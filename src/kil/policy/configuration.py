"""Configuration of the keypoint diffusion policy (paper 001, section III-C and appendix B),
its options from papers 000/002/003, the RGB baseline, and training. One YAML file holds
a `policy` and a `training` section; unknown keys are one-line errors naming the key.

Presets: `paper` (table VIII sizes, for a GPU), `cpu-small` (a usable sim policy on a 2-core
CPU in under 30 minutes), `cpu-small-multi` (cpu-small with CLS + max pooling, for several
instances of a category), `rgb` (the RGB baseline at the paper's sizes) and `rgb-cpu-small`
(the RGB baseline at cpu-small's training budget).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kil.config import load_dataclass, load_yaml, require, to_plain
from kil.errors import ConfigError


@dataclass(frozen=True)
class EncoderConfig:
    """Transformer encoder over one observation's tokens: pre-LN, GeLU, no dropout."""

    d_model: int = 256
    layers: int = 4
    heads: int = 4
    mlp: int = 1024
    pooling: Literal["mean", "cls_max"] = "mean"  # cls_max: CLS token and max over tokens (multi-instance)
    use: bool = True  # false: no encoder; keypoints concatenated to the state (the paper's ablation)

    def __post_init__(self) -> None:
        require(self.d_model > 0 and self.d_model % self.heads == 0, "d_model", f"must be a positive multiple of heads ({self.heads}), got {self.d_model}")
        require(self.layers >= 1, "layers", f"must be >= 1, got {self.layers}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentations (paper 001, table X)."""

    keypoint_noise_m: float = 0.005  # Gaussian std per keypoint coordinate
    ee_noise_m: float = 0.005  # Gaussian std of the EE position input
    ee_noise_rad: float = 0.02  # Gaussian std of the EE orientation input (rotation vector)
    shift_m: float = 0.05  # random translation (uniform in ±shift per axis, z: ±shift/2)
    yaw_rad: float = 0.3  # random rotation about the base z-axis (uniform in ±yaw)
    yaw_centre: tuple[float, float] = (0.5, 0.0)  # the rotation's axis (x, y) in the base frame: the workspace centre
    keypoint_dropout: float = 0.0  # probability of masking each keypoint token (paper 000)
    image_shift_px: int = 4  # RGB baseline: random crop as a shift of up to this many pixels

    def __post_init__(self) -> None:
        for name in ("keypoint_noise_m", "ee_noise_m", "ee_noise_rad", "shift_m", "yaw_rad"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(0 <= self.keypoint_dropout < 1, "keypoint_dropout", f"must be in [0, 1), got {self.keypoint_dropout}")


@dataclass(frozen=True)
class SelectionConfig:
    """ATK keypoint selection (paper 003), trained jointly with the policy."""

    enabled: bool = False
    sparsity: float = 0.002  # weight of the L1 penalty on the keep probabilities
    tau: float = 1.0  # Gumbel-softmax temperature
    init_keep: float = 2.0  # initial keep logit (drop logit 0): every keypoint starts likely kept

    def __post_init__(self) -> None:
        require(self.sparsity >= 0, "sparsity", f"must be >= 0, got {self.sparsity}")
        require(self.tau > 0, "tau", f"must be > 0, got {self.tau}")


@dataclass(frozen=True)
class PolicyConfig:
    kind: Literal["keypoint", "rgb"] = "keypoint"
    n_obs_steps: int = 2
    horizon: int = 16  # actions predicted per chunk
    n_action_steps: int = 8  # actions executed before the next prediction
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet_channels: tuple[int, ...] = (128, 256, 512)
    kernel_size: int = 5
    diffusion_step_embed: int = 128
    train_steps: int = 100  # DDPM
    inference_steps: int = 14  # DDIM
    proprio_rotation: Literal["euler", "rot6d"] = "rot6d"  # euler as in paper 001; 6-D avoids the ±pi wrap of a downward gripper
    similarity: bool = False  # keypoint tokens carry similarity vectors (paper 000)
    # masked: a keypoint the detector reports hidden is a masked token; last_seen: it enters at
    # its last sighting in the episode (so the block's place stays known while the gripper
    # closes over it), masked only before its first.
    hidden_keypoints: Literal["masked", "last_seen"] = "masked"
    action_frame: Literal["base", "keypoint"] = "base"  # keypoint: positions relative to a keypoint (paper 002)
    action_frame_keypoint: str = ""  # the keypoint (spec name) of the keypoint-centred frame
    ensemble: int = 1  # >1: sample this many chunks with keypoint-token dropout, take the median (paper 000)
    ensemble_dropout: float = 0.2
    image_size: tuple[int, int] = (96, 128)  # rgb baseline input (height, width)
    rgb_width: int = 64  # rgb baseline: ResNet-18 base width (64 as published; the trunk gives 8x this)
    selection: SelectionConfig = field(default_factory=SelectionConfig)

    def __post_init__(self) -> None:
        require(self.n_obs_steps >= 1, "n_obs_steps", f"must be >= 1, got {self.n_obs_steps}")
        require(1 <= self.n_action_steps <= self.horizon, "n_action_steps", f"must be in [1, horizon={self.horizon}], got {self.n_action_steps}")
        # The U-Net halves the horizon once per level but the last.
        require(self.horizon % (2 ** (len(self.unet_channels) - 1)) == 0, "horizon",
                f"must be divisible by {2 ** (len(self.unet_channels) - 1)} for {len(self.unet_channels)} U-Net levels, got {self.horizon}")
        require(self.kernel_size % 2 == 1, "kernel_size", f"must be odd, got {self.kernel_size}")
        require(1 <= self.inference_steps <= self.train_steps, "inference_steps", f"must be in [1, train_steps], got {self.inference_steps}")
        require(self.ensemble >= 1, "ensemble", f"must be >= 1, got {self.ensemble}")
        require(self.rgb_width >= 8 and self.rgb_width % 8 == 0, "rgb_width", f"a multiple of 8, at least 8, got {self.rgb_width}")
        require(0 <= self.ensemble_dropout < 1, "ensemble_dropout", f"must be in [0, 1), got {self.ensemble_dropout}")
        require(self.action_frame == "base" or bool(self.action_frame_keypoint), "action_frame_keypoint",
                "a keypoint-centred action frame needs the keypoint's name")


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = 250_000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 500
    seed: int = 0
    checkpoint_every: int = 5000
    log_every: int = 50
    num_workers: int = 0
    # The policy is saved with an exponential moving average of its weights (Diffusion Policy's
    # EMA): decay 1 - (1 + step)^-ema_power, at most ema_max_decay. The averaged weights act
    # more smoothly than the last step's; false saves the trained weights as they are.
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        require(self.ema_power > 0, "ema_power", f"must be > 0, got {self.ema_power}")
        require(0 <= self.ema_max_decay < 1, "ema_max_decay", f"must be in [0, 1), got {self.ema_max_decay}")


@dataclass(frozen=True)
class RunConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# A usable sim policy trained on a 2-core CPU in under 30 minutes. No moving average: over
# 5000 steps whose learning rate decays to zero it did not help (closed loop on pick_place,
# the same demonstrations and seeds: 54 of 90 episodes with it, 61 without).
CPU_SMALL = RunConfig(
    policy=PolicyConfig(encoder=EncoderConfig(d_model=64, layers=2, heads=4, mlp=128), unet_channels=(32, 64, 128), diffusion_step_embed=64),
    training=TrainingConfig(steps=5000, batch_size=128, lr=1e-3, weight_decay=1e-4, warmup_steps=200, checkpoint_every=1000, ema=False),
)

PRESETS: dict[str, RunConfig] = {
    "paper": RunConfig(),
    # The RGB diffusion-policy baseline at the paper's sizes (table VIII: ResNet-18, action
    # head [256, 512, 1024], batch 64, 100k steps).
    "rgb": RunConfig(
        policy=PolicyConfig(kind="rgb", unet_channels=(256, 512, 1024)),
        training=TrainingConfig(steps=100_000, batch_size=64, weight_decay=1e-6),
    ),
    "cpu-small": CPU_SMALL,
    # cpu-small for several instances of a category (pick_place_two with instance matching):
    # the encoder pools its tokens as paper 001 does then, CLS token and max over tokens.
    "cpu-small-multi": replace(CPU_SMALL, policy=replace(CPU_SMALL.policy, encoder=replace(CPU_SMALL.policy.encoder, pooling="cls_max"))),
    # The RGB baseline sized to train on a 2-core CPU as long as cpu-small does (the same
    # action head, steps and learning rate; a ResNet-18 of a quarter the width on 72x96
    # images), so the two are compared at the same training budget.
    "rgb-cpu-small": RunConfig(
        policy=PolicyConfig(kind="rgb", unet_channels=(32, 64, 128), diffusion_step_embed=64, image_size=(72, 96), rgb_width=16),
        training=TrainingConfig(steps=5000, batch_size=64, lr=1e-3, weight_decay=1e-6, warmup_steps=200, checkpoint_every=1000, ema=False),
    ),
}


def load_run_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A preset name, or a YAML file with optional `preset`, `policy` and `training` sections
    (values override the preset's)."""
    if str(name_or_path) in PRESETS:
        data: dict[str, Any] = {"preset": str(name_or_path)}
        where = f"preset {name_or_path}:"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"--config: {path} is neither a file nor a preset ({', '.join(PRESETS)})")
        data = load_yaml(path) or {}
        where = f"{path}:"
        if not isinstance(data, dict):
            raise ConfigError(f"{where} expected a mapping with policy/training sections")
    preset = data.pop("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"{where}preset: unknown preset {preset!r} (choose one of: {', '.join(PRESETS)})")
    merged = _merge(PRESETS[preset].to_dict(), data)
    if overrides:
        merged = _merge(merged, overrides)
    return load_dataclass(RunConfig, merged, where)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out

