"""The project's own dense descriptor net (dense object nets, paper 004): a small fully
convolutional encoder with a feature-pyramid decoder giving D-dimensional descriptors at
stride 4, trained self-supervised on simulated views (kil.training.descriptor_net).

One safetensors file holds the weights and, in its metadata, the architecture, so a file is
all the features node needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kil.config import require
from kil.errors import ConfigError
from kil.perception.features.base import IMAGENET_MEAN, IMAGENET_STD, BackendConfig, FeatureExtractor, normalise

METADATA_KEY = "kil_descriptor_net"


@dataclass(frozen=True)
class NetArchitecture:
    """channels: encoder widths at strides 2, 4, 8, 16; width: decoder width; descriptor_dim: D."""

    channels: tuple[int, int, int, int] = (16, 32, 64, 96)
    width: int = 64
    descriptor_dim: int = 32

    def __post_init__(self) -> None:
        require(all(c > 0 for c in self.channels), "channels", "must be positive")
        require(self.descriptor_dim > 0 and self.width > 0, "descriptor_dim", "must be positive")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class _Down(nn.Module):
    """Residual block halving the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, 2), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.GroupNorm(min(8, cout), cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.GroupNorm(min(8, cout), cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class DescriptorNet(nn.Module):
    """(B, 3, H, W) standardised RGB -> (B, D, H/4, W/4) descriptors (not normalised)."""

    stride = 4

    def __init__(self, arch: NetArchitecture = NetArchitecture()) -> None:
        super().__init__()
        c = arch.channels
        self.arch = arch
        self.stem = _conv(3, c[0], 2)
        self.down = nn.ModuleList([_Down(c[0], c[1]), _Down(c[1], c[2]), _Down(c[2], c[3])])
        self.lateral = nn.ModuleList([nn.Conv2d(ch, arch.width, 1) for ch in c[1:]])
        self.head = nn.Sequential(_conv(arch.width, arch.width // 2), nn.Conv2d(arch.width // 2, arch.descriptor_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        levels = []
        for block in self.down:
            x = block(x)
            levels.append(x)
        top = self.lateral[2](levels[2])
        for lateral, level in zip((self.lateral[1], self.lateral[0]), (levels[1], levels[0])):
            top = lateral(level) + F.interpolate(top, size=level.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(top)


def save_net(net: DescriptorNet, path: str | Path, extra: dict | None = None) -> None:
    """Weights + architecture (+ `extra` facts, e.g. how it was trained) in one safetensors file."""
    from safetensors.torch import save_file

    meta = {METADATA_KEY: json.dumps({"architecture": asdict(net.arch), **(extra or {})})}
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)


def load_net(path: str | Path, where: str = "") -> DescriptorNet:
    """A DescriptorNet from a file written by `save_net`; errors name `where` and the path."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "null"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ConfigError(f"{where}weights: cannot read descriptor net {path} ({err})") from None
    if not isinstance(meta, dict) or "architecture" not in meta:
        raise ConfigError(f"{where}weights: {path} is not a kil descriptor net (no {METADATA_KEY} metadata)")
    arch = meta["architecture"]
    net = DescriptorNet(NetArchitecture(channels=tuple(arch["channels"]), width=arch["width"], descriptor_dim=arch["descriptor_dim"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{where}weights: {path} does not fit its own architecture ({str(err).splitlines()[0]})") from None
    return net.eval()


@dataclass(frozen=True)
class DescriptorNetConfig(BackendConfig):
    weights: str = "../models/descriptor_net_sim.safetensors"


class DescriptorNetExtractor(FeatureExtractor):
    Config = DescriptorNetConfig
    title = "descriptor net"
    patch_size = DescriptorNet.stride
    default_input_size = (360, 480)
    gpu_dtype = torch.float16
    weights_expect = None

    def _load(self) -> None:
        self.net = load_net(self.weights_path(), self.where).to(self.device, self.dtype)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(normalise(pixels, IMAGENET_MEAN, IMAGENET_STD))


BACKEND = DescriptorNetExtractor
