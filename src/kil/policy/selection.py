"""ATK keypoint selection (paper 003): a learned binary mask over candidate keypoints,
trained jointly with the policy. Each keypoint has keep/drop logits; a mask is drawn with
the Gumbel-softmax relaxation (hard in the forward pass, soft gradients), the policy sees
only the kept keypoints, and an L1 penalty on the keep probabilities makes the set small.
"""

from __future__ import annotations

import torch
from torch import nn


class KeypointGate(nn.Module):
    def __init__(self, keypoints: int, tau: float = 1.0, init_keep: float = 2.0) -> None:
        super().__init__()
        self.tau = tau
        # Start with every keypoint likely kept: the policy first learns from all of them.
        self.logits = nn.Parameter(torch.tensor([[init_keep, 0.0]]).repeat(keypoints, 1))

    def keep_probability(self) -> torch.Tensor:
        """(N,) probability of keeping each keypoint."""
        return self.logits.softmax(dim=-1)[:, 0]

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, N) binary masks with straight-through Gumbel-softmax gradients."""
        u = torch.rand((batch, *self.logits.shape), generator=generator).clamp(1e-9, 1 - 1e-9).to(self.logits.device)
        soft = ((self.logits - torch.log(-torch.log(u))) / self.tau).softmax(dim=-1)
        hard = nn.functional.one_hot(soft.argmax(dim=-1), 2).to(soft.dtype)
        return (hard - soft.detach() + soft)[..., 0]

    def sparsity(self) -> torch.Tensor:
        """The L1 norm of the keep probabilities."""
        return self.keep_probability().sum()

    def selected(self, threshold: float = 0.5) -> torch.Tensor:
        """(N,) bool: the keypoints kept after training."""
        return self.keep_probability() > threshold
