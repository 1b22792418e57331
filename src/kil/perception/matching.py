"""Image matching: reference keypoint descriptors against every pixel of a frame, exactly.

The match of reference descriptor d is the argmax over pixels p of cos(d, f(p)), where f is
the patch feature map upsampled bilinearly to the image size (torch's `align_corners=False`
rule, the FeatureMap convention). Upsampling C channels to full resolution costs seconds and
gigabytes at C=384, 480x640, so the matcher never does it. Each f(p) is a weighted sum
f(p) = sum_k w_k(p) F_k of the four patch features at the corners of its cell, hence

    d . f(p) = sum_k w_k(p) (d . F_k)              upsample the N patch-level dot-product maps
    |f(p)|^2 = sum_k sum_l w_k w_l <F_k, F_l>      needs only the 10 Gram entries of each cell

Both are computed at patch resolution; only N + 10 scalar maps reach full resolution.
`naive_similarity` is the full-resolution reference used by the tests and the benchmark.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_EPS = 1e-12
@dataclass(frozen=True)
class Matches:
    """Best matches of N reference keypoints in B frames.

    uv: (B, N, 2) float32 pixels (u, v), integer pixel centres.
    score: (B, N) float32 cosine similarity at the match, in [-1, 1].
    valid: (B, N) bool, false where the frame's features were not finite (or the mask empty).
    similarity: (B, N, N) float32 or None; [b, i, j] is the cosine similarity of keypoint i's
        matched pixel to reference j (paper 000's similarity vectors).
    """

    uv: np.ndarray
    score: np.ndarray
    valid: np.ndarray
    similarity: np.ndarray | None = None


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())  # messages hold read-only arrays


def sample_descriptors(features: np.ndarray | torch.Tensor, uv: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Descriptors of the upsampled feature map at pixels `uv`.

    features: (C, h, w) patch features covering an image of `image_size` (H, W).
    uv: (N, 2) pixels (u, v); sub-pixel positions interpolate bilinearly.
    Returns (N, C) float32, equal to the full-resolution upsampled features at integer pixels.
    """
    feats = _as_tensor(features).float()
    H, W = image_size
    uv_t = torch.as_tensor(np.asarray(uv, np.float64)).float()
    grid = torch.stack([(2 * uv_t[:, 0] + 1) / W - 1, (2 * uv_t[:, 1] + 1) / H - 1], dim=-1)
    out = F.grid_sample(feats[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.contiguous().numpy()


def _source_index(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output pixel: the lower source index and the weights of the lower and upper
    source (torch's bilinear upsampling rule with align_corners=False; the upper source is
    clamped to the last one, as torch does)."""
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    upper = (src - lo).float()
    return lo, 1 - upper, upper


@functools.lru_cache(maxsize=8)
def _layout(h: int, w: int, H: int, W: int) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of every output row and column (data-independent)."""
    return (*_source_index(H, h), *_source_index(W, w))


def _upsampled_norm(feats: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """|f(p)| at every pixel, (B, H, W), for patch features (B, C, h, w).

    With corners a=(i,j), b=(i,j+1) on row i and c, d below them on row i+1, and weights
    y0, y1 (rows) and x0, x1 (columns) of a pixel in cell (i, j):
    |f|^2 = y0^2 Q(i) + y1^2 Q(i+1) + 2 y0 y1 X(i), where Q(r) = |x0 F[r,j] + x1 F[r,j+1]|^2
    and X(i) = <x0 a + x1 b, x0 c + x1 d>. Q and X are interpolated along columns at patch-row
    resolution; only three maps are gathered to full resolution.
    """
    h, w = feats.shape[-2:]
    y_lo, y0, y1, x_lo, x0, x1 = _layout(h, w, *image_size)
    p = F.pad(feats, (0, 1, 0, 1), mode="replicate")  # torch clamps the last row/column
    a, b, c, d = p[:, :, :-1, :-1], p[:, :, :-1, 1:], p[:, :, 1:, :-1], p[:, :, 1:, 1:]
    sq = (p * p).sum(1)  # (B, h+1, w+1)
    ab = (p[..., :-1] * p[..., 1:]).sum(1)  # neighbours along a row: (B, h+1, w)
    # Gram entries between the rows of each cell, then everything interpolated along columns.
    ac, ad, bc, bd = ((a * c).sum(1), (a * d).sum(1), (b * c).sum(1), (b * d).sum(1))
    row_norm2 = x0 * x0 * sq[..., x_lo] + x1 * x1 * sq[..., x_lo + 1] + 2 * x0 * x1 * ab[..., x_lo]  # Q
    cross = x0 * x0 * ac[..., x_lo] + x0 * x1 * (ad + bc)[..., x_lo] + x1 * x1 * bd[..., x_lo]  # X
    y0, y1 = y0[:, None], y1[:, None]
    norm2 = y0 * y0 * row_norm2[:, y_lo] + y1 * y1 * row_norm2[:, y_lo + 1] + 2 * y0 * y1 * cross[:, y_lo]
    return norm2.clamp(min=_EPS).sqrt()


class Matcher:
    """Finds N reference descriptors in feature maps by upsampled cosine similarity.

    references: (N, C) descriptors (e.g. from `sample_descriptors` on the reference image).
    """

    def __init__(self, references: np.ndarray) -> None:
        refs = torch.as_tensor(np.asarray(references, np.float32))
        if refs.ndim != 2 or refs.shape[0] == 0:
            raise ValueError(f"references: expected (N, C) descriptors, got shape {tuple(refs.shape)}")
        if not torch.isfinite(refs).all():
            raise ValueError("references: descriptors contain NaN or inf")
        self.references = refs / refs.norm(dim=1, keepdim=True).clamp(min=_EPS)

    @property
    def channels(self) -> int:
        return int(self.references.shape[1])

    @torch.inference_mode()
    def similarity(self, features: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, H, W) cosine similarity of every pixel to every reference (NaN-free input).

        features: (B, C, h, w) patch features of B images of `image_size` (H, W).
        """
        feats = _as_tensor(features).float()
        if feats.ndim != 4 or feats.shape[1] != self.channels:
            raise ValueError(f"features: expected (B, {self.channels}, h, w), got {tuple(feats.shape)}")
        dots = torch.einsum("nc,bchw->bnhw", self.references, feats)
        dots_up = F.interpolate(dots, size=image_size, mode="bilinear", align_corners=False)
        return dots_up.mul_(_upsampled_norm(feats, image_size).reciprocal_()[:, None])

    @torch.inference_mode()
    def match(
        self,
        features: np.ndarray | torch.Tensor,
        image_size: tuple[int, int],
        similarity_vectors: bool = False,
        mask: np.ndarray | None = None,
    ) -> Matches:
        """Best pixel per reference in each of B frames.

        features: (B, C, h, w) patch features; image_size: (H, W) pixels.
        mask: optional (B, H, W) bool; matches are searched only where it is true.
        """
        feats = _as_tensor(features).float()
        B, N = feats.shape[0], self.references.shape[0]
        finite = torch.isfinite(feats.sum(dim=(1, 2, 3)))  # NaN and inf propagate into the sum
        if not bool(finite.all()):  # such frames are matched on zeros and reported invalid
            feats = torch.where(finite[:, None, None, None], feats, torch.zeros((), dtype=feats.dtype))
        sim = self.similarity(feats, image_size)
        valid = finite[:, None].expand(B, N).clone()
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask, bool))
            sim = sim.masked_fill(~m[:, None], -float("inf"))
            valid &= m.reshape(B, -1).any(dim=1)[:, None]
        flat = sim.flatten(2)
        score, index = flat.max(dim=2)  # first maximum, as torch.argmax
        W = image_size[1]
        uv = torch.stack([index % W, index // W], dim=-1).float()
        sims = None
        if similarity_vectors:
            sims = torch.gather(flat, 2, index[:, None, :].expand(B, N, N)).transpose(1, 2)
            sims = torch.where(valid[:, :, None], sims, torch.zeros(()))
        score = torch.where(valid, score, torch.zeros(()))
        return Matches(
            uv=uv.numpy().astype(np.float32),
            score=score.numpy().astype(np.float32),
            valid=valid.numpy(),
            similarity=None if sims is None else sims.numpy().astype(np.float32),
        )


def naive_similarity(references: np.ndarray, features: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, N, H, W) cosine similarity computed the straightforward way: upsample all C feature
    channels to full resolution, normalise every pixel, dot with each reference."""
    refs = torch.as_tensor(np.asarray(references, np.float32))
    refs = refs / refs.norm(dim=1, keepdim=True).clamp(min=_EPS)
    up = F.interpolate(_as_tensor(features).float(), size=image_size, mode="bilinear", align_corners=False)
    up = up / up.norm(dim=1, keepdim=True).clamp(min=_EPS)
    return torch.einsum("nc,bchw->bnhw", refs, up)
