"""Image matching: reference keypoint descriptors against every pixel of a frame, exactly.

The match of reference descriptor d is the argmax over pixels p of cos(d, f(p)), where f is
the patch feature map upsampled bilinearly to the image size (torch's `align_corners=False`
rule, the FeatureMap convention). Upsampling C channels to full resolution costs seconds and
gigabytes at C=384, 480x640, so the matcher never does it. Each f(p) is a weighted sum
f(p) = sum_k w_k(p) F_k of the four patch features at the corners of its cell, hence

    d . f(p) = sum_k w_k(p) (d . F_k)              the patch-level dot products, interpolated
    |f(p)|^2 = sum_k sum_l w_k w_l <F_k, F_l>      needs only the Gram entries of each cell

so the similarity at any pixel costs a few scalar operations once those patch-level terms
exist. The search then skips most of the image exactly: within a cell the numerator is at
most the largest corner dot product, and |f| is at least min_k <F_k, u> for the unit mean
direction u of the corners (f is a convex combination of them), which bounds the similarity
from above; only cells whose bound reaches the best similarity found at one pixel per cell
are evaluated pixel by pixel. Where the bounds prune too little, every pixel is evaluated
(`similarity`), still at scalar cost. `naive_similarity` is the straightforward
full-resolution computation the tests and the benchmark compare against.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_EPS = 1e-12
_MARGIN = 1e-5  # slack on the bounds for float rounding
_DENSE_SHARE = 0.2  # evaluate every pixel when candidate cells cover more of the image than this


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


@dataclass(frozen=True)
class _Axis:
    """One image axis: per pixel its cell (lower source index) and the two weights; per cell
    the first pixel and the number of pixels in it."""

    cell: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor


@functools.lru_cache(maxsize=16)
def _axis(out_size: int, in_size: int) -> _Axis:
    cell, w0, w1 = _source_index(out_size, in_size)
    count = torch.bincount(cell, minlength=in_size)
    start = torch.cumsum(count, 0) - count
    return _Axis(cell, w0, w1, start, count)


@dataclass(frozen=True)
class _PatchTerms:
    """Everything the similarity at a pixel needs, at patch resolution, for one frame batch.

    dots: (B, N, h+1, w+1) reference . patch feature, last row/column repeated (torch clamps
    there); sq: (B, h+1, w+1) |F|^2; right: (B, h+1, w) <F[r, j], F[r, j+1]>; and per cell
    with corners a=(i,j), b=(i,j+1), c=(i+1,j), d=(i+1,j+1): ac, ad, bc, bd (B, h, w).
    """

    dots: torch.Tensor
    sq: torch.Tensor
    right: torch.Tensor
    ac: torch.Tensor
    ad: torch.Tensor
    bc: torch.Tensor
    bd: torch.Tensor


def _patch_terms(references: torch.Tensor, feats: torch.Tensor) -> _PatchTerms:
    p = F.pad(feats, (0, 1, 0, 1), mode="replicate")
    a, b, c, d = p[:, :, :-1, :-1], p[:, :, :-1, 1:], p[:, :, 1:, :-1], p[:, :, 1:, 1:]
    return _PatchTerms(
        dots=torch.einsum("nc,bchw->bnhw", references, p),
        sq=(p * p).sum(1),
        right=(p[..., :-1] * p[..., 1:]).sum(1),
        ac=(a * c).sum(1), ad=(a * d).sum(1), bc=(b * c).sum(1), bd=(b * d).sum(1),
    )


def _similarity_at(t: _PatchTerms, b: int, n: torch.Tensor | slice, y: _Axis, x: _Axis, rows: torch.Tensor,
                   cols: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of references `n` at pixels (rows, cols) of frame b (broadcasting)."""
    return _similarity_in_cells(t, b, n, y.cell[rows], x.cell[cols], y.w0[rows], y.w1[rows], x.w0[cols], x.w1[cols])


def _similarity_in_cells(t: _PatchTerms, b: int, n, i, j, y0, y1, x0, x1) -> torch.Tensor:
    """Similarity of references `n` in cells (i, j) at row weights (y0, y1) and column weights
    (x0, x1), all broadcasting: the cell terms are gathered at the shape of (n, i, j) and only
    then spread over the pixels, so a block of pixels costs one gather per term.

    d.f = y0 (x0 D[i,j] + x1 D[i,j+1]) + y1 (x0 D[i+1,j] + x1 D[i+1,j+1]) and
    |f|^2 = y0^2 Q(i) + y1^2 Q(i+1) + 2 y0 y1 X(i), with Q(r) = |x0 F[r,j] + x1 F[r,j+1]|^2 and
    X(i) = <x0 a + x1 b, x0 c + x1 d> for the cell's corners a, b (row i) and c, d (row i+1).
    """
    D, sq, right = t.dots[b], t.sq[b], t.right[b]
    dots = y0 * (x0 * D[n, i, j] + x1 * D[n, i, j + 1]) + y1 * (x0 * D[n, i + 1, j] + x1 * D[n, i + 1, j + 1])
    xx0, xx1, x01 = x0 * x0, x1 * x1, 2 * x0 * x1
    q_top = xx0 * sq[i, j] + xx1 * sq[i, j + 1] + x01 * right[i, j]
    q_bottom = xx0 * sq[i + 1, j] + xx1 * sq[i + 1, j + 1] + x01 * right[i + 1, j]
    cross = xx0 * t.ac[b, i, j] + 0.5 * x01 * (t.ad[b, i, j] + t.bc[b, i, j]) + xx1 * t.bd[b, i, j]
    norm2 = y0 * y0 * q_top + y1 * y1 * q_bottom + 2 * y0 * y1 * cross
    return dots / norm2.clamp(min=_EPS * _EPS).sqrt()


def _dense_similarity(t: _PatchTerms, b: int, y: _Axis, x: _Axis, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) similarity at every pixel of frame b: the same formulas as `_similarity_at`,
    arranged separably (interpolate along columns at patch-row resolution, then gather rows)."""
    h, w = t.ac.shape[-2:]
    dots_up = F.interpolate(t.dots[b:b + 1, :, :h, :w], size=image_size, mode="bilinear", align_corners=False)[0]
    j, x0, x1 = x.cell, x.w0, x.w1
    sq, right = t.sq[b], t.right[b]
    row_norm2 = x0 * x0 * sq[:, j] + x1 * x1 * sq[:, j + 1] + 2 * x0 * x1 * right[:, j]  # Q: (h+1, W)
    cross = x0 * x0 * t.ac[b][:, j] + x0 * x1 * (t.ad[b] + t.bc[b])[:, j] + x1 * x1 * t.bd[b][:, j]  # X: (h, W)
    i, y0, y1 = y.cell, y.w0[:, None], y.w1[:, None]
    norm2 = y0 * y0 * row_norm2[i] + y1 * y1 * row_norm2[i + 1] + 2 * y0 * y1 * cross[i]
    return dots_up.mul_(norm2.clamp_(min=_EPS * _EPS).rsqrt_())


def _cell_bounds(t: _PatchTerms, b: int) -> torch.Tensor:
    """(N, h, w) upper bound of the similarity of each reference anywhere in each cell."""
    D = t.dots[b]
    best_dot = torch.maximum(torch.maximum(D[:, :-1, :-1], D[:, :-1, 1:]), torch.maximum(D[:, 1:, :-1], D[:, 1:, 1:]))
    sq, right = t.sq[b], t.right[b]
    aa, bb, cc, dd = sq[:-1, :-1], sq[:-1, 1:], sq[1:, :-1], sq[1:, 1:]
    ab, cd = right[:-1], right[1:]
    ac, ad, bc, bd = t.ac[b], t.ad[b], t.bc[b], t.bd[b]
    # <F_k, s> for s = a + b + c + d, and |s|^2: |f| >= <f, s/|s|> >= min_k <F_k, s>/|s|.
    towards = torch.stack([aa + ab + ac + ad, ab + bb + bc + bd, ac + bc + cc + cd, ad + bd + cd + dd])
    total = towards.sum(0)
    least_norm = towards.min(0).values.clamp(min=0) / total.clamp(min=_EPS).sqrt()
    most_norm = torch.stack([aa, bb, cc, dd]).max(0).values.clamp(min=_EPS).sqrt()
    upper = torch.where(least_norm > 0, best_dot / least_norm.clamp(min=_EPS), torch.full_like(least_norm, float("inf")))
    return torch.where(best_dot > 0, upper, best_dot / most_norm)


def _search_frame(t: _PatchTerms, b: int, y: _Axis, x: _Axis, W: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(score (N,), flat pixel index (N,)) of the best pixel of every reference in frame b,
    evaluating only the cells whose bound reaches a similarity already found; None when the
    bounds leave too much of the image to make this worthwhile."""
    N = t.dots.shape[1]
    bound = _cell_bounds(t, b)
    # One pixel per cell (its middle) gives a similarity every best pixel must reach.
    # (clamped: with fewer pixels than patches along an axis, the last cells hold no pixel)
    mid_rows = (y.start + y.count // 2).clamp(max=y.cell.numel() - 1)
    mid_cols = (x.start + x.count // 2).clamp(max=W - 1)
    sampled = _similarity_at(t, b, slice(None), y, x, mid_rows[:, None], mid_cols[None, :])  # (N, h, w)
    floor = sampled.flatten(1).max(1).values
    candidates = bound >= (floor - _MARGIN)[:, None, None]
    n_idx, i_idx, j_idx = torch.nonzero(candidates, as_tuple=True)
    pixels = (y.count[i_idx] * x.count[j_idx]).sum()
    if pixels > _DENSE_SHARE * N * y.cell.numel() * W:
        return None
    ry, rx = int(y.count.max()), int(x.count.max())
    rows = y.start[i_idx][:, None] + torch.arange(ry)[None, :]  # (K, ry)
    cols = x.start[j_idx][:, None] + torch.arange(rx)[None, :]  # (K, rx)
    inside = (torch.arange(ry)[None, :] < y.count[i_idx][:, None])[:, :, None] & (torch.arange(rx)[None, :] < x.count[j_idx][:, None])[:, None, :]
    rows_c, cols_c = rows.clamp(max=y.cell.numel() - 1), cols.clamp(max=W - 1)
    n3, i3, j3 = n_idx[:, None, None], i_idx[:, None, None], j_idx[:, None, None]
    sims = _similarity_in_cells(t, b, n3, i3, j3, y.w0[rows_c][:, :, None], y.w1[rows_c][:, :, None],
                                x.w0[cols_c][:, None, :], x.w1[cols_c][:, None, :])
    sims = sims.masked_fill(~inside, -float("inf"))
    flat = rows_c[:, :, None] * W + cols_c[:, None, :]
    score = torch.full((N,), -float("inf"))
    score = score.scatter_reduce(0, n_idx, sims.flatten(1).max(1).values, reduce="amax")
    # Among pixels reaching the best score, the first in row-major order (as torch.argmax).
    at_best = sims == score[n_idx][:, None, None]
    first = torch.where(at_best, flat, torch.full_like(flat, torch.iinfo(torch.int64).max)).flatten(1).min(1).values
    index = torch.full((N,), torch.iinfo(torch.int64).max).scatter_reduce(0, n_idx, first, reduce="amin")
    return score, index


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

    def _features(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        feats = _as_tensor(features).float()
        if feats.ndim != 4 or feats.shape[1] != self.channels:
            raise ValueError(f"features: expected (B, {self.channels}, h, w), got {tuple(feats.shape)}")
        return feats

    @torch.inference_mode()
    def similarity(self, features: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, H, W) cosine similarity of every pixel to every reference (NaN-free input).

        features: (B, C, h, w) patch features of B images of `image_size` (H, W).
        """
        feats = self._features(features)
        t = _patch_terms(self.references, feats)
        y, x = _axis(image_size[0], feats.shape[2]), _axis(image_size[1], feats.shape[3])
        return torch.stack([_dense_similarity(t, b, y, x, image_size) for b in range(len(feats))])

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
        mask: optional (B, H, W) bool; matches are searched only where it is true (every
            pixel is evaluated then).
        """
        feats = self._features(features)
        B, N = feats.shape[0], self.references.shape[0]
        H, W = image_size
        finite = torch.isfinite(feats.sum(dim=(1, 2, 3)))  # NaN and inf propagate into the sum
        if not bool(finite.all()):  # such frames are matched on zeros and reported invalid
            feats = torch.where(finite[:, None, None, None], feats, torch.zeros((), dtype=feats.dtype))
        t = _patch_terms(self.references, feats)
        y, x = _axis(H, feats.shape[2]), _axis(W, feats.shape[3])
        valid = finite[:, None].expand(B, N).clone()
        masks = None if mask is None else torch.as_tensor(np.asarray(mask, bool))
        if masks is not None and tuple(masks.shape) != (B, H, W):
            raise ValueError(f"mask: expected shape {(B, H, W)} (frames, height, width), got {tuple(masks.shape)}")
        score, index = torch.empty(B, N), torch.empty(B, N, dtype=torch.int64)
        for b in range(B):
            found = _search_frame(t, b, y, x, W) if masks is None else None
            if found is None:
                sim = _dense_similarity(t, b, y, x, image_size)
                if masks is not None:
                    sim = sim.masked_fill(~masks[b], -float("inf"))
                    valid[b] &= bool(masks[b].any())
                found = sim.flatten(1).max(dim=1)  # first maximum, as torch.argmax
            score[b], index[b] = found[0], found[1]
        uv = torch.stack([index % W, index // W], dim=-1)
        sims = None
        if similarity_vectors:
            sims = torch.stack([_similarity_at(t, b, slice(None), y, x, uv[b, :, 1], uv[b, :, 0]).T for b in range(B)])
            sims = torch.where(valid[:, :, None], sims, torch.zeros(()))
        score = torch.where(valid, score, torch.zeros(()))
        return Matches(
            uv=uv.float().numpy(),
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
