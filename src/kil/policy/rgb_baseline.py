"""The RGB diffusion-policy baseline's observation encoder: a ResNet-18 written in torch
(there is no CPU torchvision here) with GroupNorm in place of BatchNorm, as diffusion policy
uses it, global average pooling, and the proprio state appended. Same action head as the
keypoint policy."""

from __future__ import annotations

import torch
from torch import nn

from kil.policy.batch import Encoded


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(channels // 16, 1), channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18 trunk: (B, 3, H, W) -> (B, 8 * width) (global average pool); width 64 is
    the published network, narrower ones train on a CPU."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), _norm(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class ResNet18Encoder(nn.Module):
    def __init__(self, proprio_dim: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNet18(width)
        self.out_dim = self.trunk.out_dim + proprio_dim

    def forward(self, obs: Encoded, gate: torch.Tensor | None = None) -> torch.Tensor:
        if obs.images is None:
            raise ValueError("the RGB baseline needs images (build the dataset with --images)")
        return torch.cat([self.trunk(obs.images), obs.proprio], dim=-1)
