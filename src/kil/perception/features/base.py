"""The feature-extractor interface: RGB images -> patch features (B, C, h, w) on a grid that
covers the whole image (the FeatureMap convention), plus config loading and weight lookup.

A backend is a module ``kil.perception.features.<name>`` whose ``BACKEND`` class derives from
`FeatureExtractor`; its YAML config (``config/features/<name>.yaml`` or any file) names it in
``backend:``. Weights come from a local path (relative paths are relative to the YAML file)
or, only where the machine has network, a hub id; a missing checkpoint is a one-line
ConfigError naming the config key and the path tried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from kil.config import require
from kil.errors import ConfigError
from kil.msgs import FeatureMap
from kil.perception.registry import BackendKind, WeightedBackend, WeightsStatus

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackendConfig:
    """Settings every backend shares.

    weights: local checkpoint (directory or file), or a hub id used only with network.
    input_size: (height, width) pixels the image is resized to before the model; a multiple
        of the backend's patch size. None: the backend's default.
    device: "auto" takes the GPU where one is present. dtype: "auto" is bf16/fp16 on a GPU
        (per backend) and fp32 on the CPU.
    """

    backend: str
    weights: str = ""
    input_size: tuple[int, int] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = 4
    min_score: float = -1.0  # keypoint matches scoring lower are not visible; calibrated per model by `kil keypoints calibrate`

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(-1.0 <= self.min_score <= 1.0, "min_score", f"a cosine similarity lies in [-1, 1], got {self.min_score}")
        if self.input_size is not None:
            require(all(s > 0 for s in self.input_size), "input_size", f"must be positive, got {self.input_size}")


class FeatureExtractor(WeightedBackend):
    """Base class of feature backends. Subclasses set `Config`, `patch_size`,
    `default_input_size`, and implement `_load` and `_forward`."""

    Config: ClassVar[type[BackendConfig]] = BackendConfig
    title: ClassVar[str] = "feature"
    patch_size: ClassVar[int] = 16
    default_input_size: ClassVar[tuple[int, int]] = (384, 512)
    gpu_dtype: ClassVar[torch.dtype] = torch.bfloat16

    def __init__(self, config: BackendConfig, source: Path | None = None) -> None:
        """`source` is the YAML file the config came from (for relative paths and errors)."""
        self._open(config, source)
        if config.dtype != "auto":
            self.dtype = getattr(torch, config.dtype)
        else:
            self.dtype = self.gpu_dtype if self.device.type == "cuda" else torch.float32
        self._load()  # may set the patch size and default input size from the checkpoint
        size = tuple(config.input_size or self.default_input_size)
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ConfigError(f"{self.where}input_size: {list(size)} must be a multiple of the {self.title} patch size {self.patch_size}")
        self.input_size = size

    # ---------------------------------------------------------------- running

    def _load(self) -> None:
        """Build the model from the weights (on self.device, in self.dtype, eval mode)."""
        raise NotImplementedError

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, h*p, w*p) RGB in [0, 1] at input_size, on the device -> (B, C, h, w)."""
        raise NotImplementedError

    @torch.inference_mode()
    def extract(self, images: np.ndarray) -> torch.Tensor:
        """Patch features of B images.

        images: (B, H, W, 3) or (H, W, 3) uint8 RGB. Returns (B, C, h, w) float32 on the CPU; the
        grid covers the whole image (patch (i, j) centred on pixel ((j+.5) W/w, (i+.5) H/h)).
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images: expected (B, H, W, 3) uint8 RGB, got {images.shape} {images.dtype}")
        out = []
        for start in range(0, len(images), self.config.batch_size):
            batch = torch.tensor(images[start: start + self.config.batch_size])  # a copy: frames may be read-only
            pixels = batch.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            if tuple(pixels.shape[-2:]) != self.input_size:
                pixels = F.interpolate(pixels, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
            out.append(self._forward(pixels.to(self.dtype)).float().cpu())
        return torch.cat(out)

    def feature_map(self, rgb: np.ndarray, stamp_ns: int, frame_id: str) -> FeatureMap:
        """FeatureMap of one (H, W, 3) uint8 image."""
        return FeatureMap(stamp_ns=stamp_ns, frame_id=frame_id, features=self.extract(rgb)[0].numpy())


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) patch tokens in row-major order -> (B, C, h, w)."""
    B, n, C = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"expected {h}x{w}={h * w} patch tokens, got {n}")
    return tokens.transpose(1, 2).reshape(B, C, h, w)


def normalise(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> standardised per channel."""
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device)[:, None, None]
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device)[:, None, None]
    return (pixels - m) / s


def preprocessor_stats(path: Path | str, default_mean: tuple, default_std: tuple) -> tuple[tuple, tuple]:
    """image_mean / image_std from a checkpoint's preprocessor_config.json (or the image
    processor inside processor_config.json, as newer `transformers` save it), else the defaults."""
    if not isinstance(path, Path):
        return default_mean, default_std
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        file = path / name
        if file.is_file():
            data = json.loads(file.read_text())
            data = data.get(key, {}) if key else data
            if "image_mean" in data or "image_std" in data:
                return tuple(data.get("image_mean", default_mean)), tuple(data.get("image_std", default_std))
    return default_mean, default_std


# -------------------------------------------------------------------- registry


FEATURES = BackendKind("features", FeatureExtractor, "feature backend", ("__init__", "base", "hf"))


def config_path(name_or_path: str | Path) -> Path:
    """A backend config: an existing YAML path, or a name under config/features/."""
    return FEATURES.config_path(name_or_path)


def backend_class(name: str, where: str) -> type[FeatureExtractor]:
    """The extractor class of backend `name` (module kil.perception.features.<name>)."""
    return FEATURES.backend_class(name, where)


def backend_names() -> list[str]:
    return FEATURES.names()


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[type[FeatureExtractor], BackendConfig, Path]:
    """The backend class, its validated config and the YAML path."""
    return FEATURES.load_config(name_or_path, overrides)


def load_extractor(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> FeatureExtractor:
    """Build the extractor a config names (e.g. "descriptor_net" or a YAML path)."""
    cls, config, path = load_config(name_or_path, overrides)
    return cls(config, path)


def describe(name_or_path: str | Path) -> tuple[str, WeightsStatus]:
    """(backend name, weights status) without loading the model."""
    cls, config, path = load_config(name_or_path)
    return config.backend, cls.check_weights(config, path)
