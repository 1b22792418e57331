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
from above; only cells whose bound reaches a similarity already found (at the middle pixel
of the most promising cells, or of every cell where that leaves many) are evaluated pixel
by pixel. Where the bounds prune too little, every pixel is evaluated (`similarity`),
still at scalar cost. A keypoint with several descriptors (a reference and its views) is
matched by the best of them (`Matcher(references, owner)`). `naive_similarity` is the straightforward
full-resolution computation the tests and the benchmark compare against.

Exactness. The numerator and the norm use one set of interpolation weights, torch's own
(float32, `_axis`), so a score is a cosine of one vector. Where the four corners nearly
cancel (|f|^2 below `_CANCELLING` of (sum_k w_k |F_k|)^2) the Gram expansion loses the
digits that matter, so those pixels are recomputed from the interpolated C-vector itself,
as the naive path does; scores are clipped to [-1, 1] against the last rounding.

Speed. Everything after feature extraction is numpy (single-threaded by construction): a
few dozen small passes, and torch's intra-op threads made each of them wait on a thread
barrier, so that on a busy machine the search took many times longer with the default
threads than with one. Most cells are ruled out by two exact bounds (convexity, and the
span of the cell's corners, which holds for random-like features too).
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
_SPAN_SHARE = 0.03  # compute the span bound too when the convexity bound leaves more of the cells than this
_CANCELLING = 0.05  # |f|^2 below this share of (sum_k w_k |F_k|)^2: recompute from the C-vector
_VANISHING = 1e-6  # |f|^2 below this share of (sum_k w_k |F_k|)^2: even float64 Gram terms lose digits
_SAME_PLACE_PX = 3  # candidates of two views of a keypoint closer than this (in u and v) are one place
_DEGENERATE = 1e-8  # a corner whose squared distance to the span of the others is below this share of |F|^2 adds nothing


@dataclass(frozen=True)
class Matches:
    """Best matches of N reference keypoints in B frames.

    uv: (B, N, 2) float32 pixels (u, v), integer pixel centres.
    score: (B, N) float32 cosine similarity at the match, in [-1, 1].
    valid: (B, N) bool, false where the frame's features were not finite (or the mask empty).
    similarity: (B, N, N) float32 or None; [b, i, j] is the cosine similarity of keypoint i's
        matched pixel to reference j (paper 000's similarity vectors).
    candidate_uv: (B, N, K, 2) float32 or None: the K best distinct places of each reference,
        best first (the first is `uv`): the exact best pixel, then the other local maxima of
        the similarity at patch resolution, each refined to its exact best pixel nearby.
    candidate_score: (B, N, K) float32 or None, -inf where there are fewer places.
    """

    uv: np.ndarray
    score: np.ndarray
    valid: np.ndarray
    similarity: np.ndarray | None = None
    candidate_uv: np.ndarray | None = None
    candidate_score: np.ndarray | None = None


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


def _torch_weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the lower source index and the upper source's weight, computed as
    torch's bilinear upsampling does (align_corners=False, float32 arithmetic, negative
    source positions clamped to 0, truncation; the upper source clamped to the last one)."""
    scale = np.float32(in_size) / np.float32(out_size)
    real = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    lo = np.minimum(real.astype(np.int64), in_size - 1)
    return lo, (real - lo.astype(np.float32)).astype(np.float32)


@dataclass(frozen=True)
class _Axis:
    """One image axis: per pixel its cell (lower source index) and the two weights; per cell
    the first pixel and the number of pixels in it."""

    cell: np.ndarray
    w0: np.ndarray
    w1: np.ndarray
    start: np.ndarray
    count: np.ndarray


@functools.lru_cache(maxsize=16)
def _axis(out_size: int, in_size: int) -> _Axis:
    cell, w1 = _torch_weights(out_size, in_size)
    count = np.bincount(cell, minlength=in_size)
    start = np.cumsum(count) - count
    return _Axis(cell, np.float32(1) - w1, w1, start, count)


@dataclass(frozen=True)
class _PatchTerms:
    """Everything the similarity at a pixel needs, at patch resolution, for one frame batch
    (numpy float32).

    The grid is padded by one row and column repeating the last ones (torch clamps there).
    features: (B, C, h, w) as given (unpadded); references (N, C) float64; dots: (B, N, h+1, w+1) reference . patch feature; sq: (B, h+1, w+1) |F|^2;
    length: |F|; right: (B, h+1, w) <F[r, j], F[r, j+1]>; and per cell with corners
    a=(i,j), b=(i,j+1), c=(i+1,j), d=(i+1,j+1): ac, ad, bc, bd (B, h, w); references (N, C).
    exact: the same terms in float64 (dots, sq, right, ac, ad, bc, bd), for the span bound
    and exact recomputation (`_corner_gram`, `_corner_dots`).
    """

    features: np.ndarray
    references: np.ndarray
    dots: np.ndarray
    sq: np.ndarray
    length: np.ndarray
    right: np.ndarray
    ac: np.ndarray
    ad: np.ndarray
    bc: np.ndarray
    bd: np.ndarray
    exact: dict[str, np.ndarray]


def _neighbour_products(q: np.ndarray) -> tuple[np.ndarray, ...]:
    """Inner products of channels-last (B, h, w, C) features with their neighbours: self
    (B, h, w), right (B, h, w-1), down (B, h-1, w), diagonal <F[i,j], F[i+1,j+1]> and
    anti-diagonal <F[i,j+1], F[i+1,j]> (B, h-1, w-1)."""
    def inner(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("bhwc,bhwc->bhw", x, y)

    return (inner(q, q), inner(q[:, :, :-1], q[:, :, 1:]), inner(q[:, :-1], q[:, 1:]),
            inner(q[:, :-1, :-1], q[:, 1:, 1:]), inner(q[:, :-1, 1:], q[:, 1:, :-1]))


def _pad_edge(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """x with the last entry repeated once along each of `axes`."""
    for axis in axes:
        x = np.concatenate([x, np.take(x, [-1], axis=axis)], axis=axis)
    return x


def _patch_terms(references: np.ndarray, feats: np.ndarray) -> _PatchTerms:
    """The patch-level terms, summed over channels in float64 (a sum over hundreds of
    channels in float32 carries errors the cancellation test would amplify) and stored in
    float32 for the pixel-level passes. numpy throughout: on a busy machine torch's
    threads made these few small operations wait on each other for milliseconds.

    The products are taken on the unpadded, channels-last features (contiguous sums over
    channels) and the padded grid's terms assembled from them: a pair of corners that the
    padding makes one feature twice is |F|^2, one that it makes horizontal or vertical
    neighbours is a right or down product."""
    q = np.moveaxis(np.asarray(feats), 1, -1).astype(np.float64, order="C")  # (B, h, w, C)
    refs = np.asarray(references, np.float64)
    dots = _pad_edge(np.moveaxis(q @ refs.T, -1, 1), (2, 3))
    sq_u, right_u, down_u, diag_u, anti_u = _neighbour_products(q)
    sq = _pad_edge(sq_u, (1, 2))  # (B, h+1, w+1)
    right = _pad_edge(np.concatenate([right_u, sq_u[:, :, -1:]], 2), (1,))  # (B, h+1, w)
    ac = np.concatenate([down_u, sq_u[:, -1:]], 1)  # (B, h, w): a=(i,j), c=(i+1,j)
    bd = _pad_edge(ac[:, :, 1:], (2,)) if ac.shape[2] > 1 else ac  # b=(i,j+1), d=(i+1,j+1)

    def crossing(inner: np.ndarray) -> np.ndarray:
        """ad or bc (B, h, w) from its inner cells: on the last column the two corners are
        vertical neighbours, on the last row horizontal ones, in the last cell one feature."""
        body = np.concatenate([inner, down_u[:, :, -1:]], 2)
        last = np.concatenate([right_u[:, -1:], sq_u[:, -1:, -1:]], 2)
        return np.concatenate([body, last], 1)

    ad, bc = crossing(diag_u), crossing(anti_u)

    def f32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    return _PatchTerms(features=np.asarray(feats), references=refs, dots=f32(dots), sq=f32(sq), length=f32(np.sqrt(sq)),
                       right=f32(right), ac=f32(ac), ad=f32(ad), bc=f32(bc), bd=f32(bd),
                       exact={"dots": dots, "sq": sq, "right": right, "ac": ac, "ad": ad, "bc": bc, "bd": bd})


def _corner_gram(t: _PatchTerms, b: int, i, j) -> np.ndarray:
    """(..., 4, 4) float64 Gram matrices of the corners (a, b, c, d) of cells (i, j)."""
    e = {key: value[b] for key, value in t.exact.items()}
    sq, right = e["sq"], e["right"]
    aa, bb, cc, dd = sq[i, j], sq[i, j + 1], sq[i + 1, j], sq[i + 1, j + 1]
    ab, cd = right[i, j], right[i + 1, j]
    ac, ad, bc, bd = e["ac"][i, j], e["ad"][i, j], e["bc"][i, j], e["bd"][i, j]
    return np.stack([np.stack(row, -1) for row in ((aa, ab, ac, ad), (ab, bb, bc, bd), (ac, bc, cc, cd), (ad, bd, cd, dd))], -1)


def _corner_dots(t: _PatchTerms, b: int, n, i, j) -> np.ndarray:
    """(..., 4) float64 dot products of references n with the corners (a, b, c, d) of cells (i, j)."""
    D = t.exact["dots"][b]
    return np.stack([D[n, i, j], D[n, i, j + 1], D[n, i + 1, j], D[n, i + 1, j + 1]], -1)


def _similarity_at(t: _PatchTerms, b: int, n, y: _Axis, x: _Axis, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Cosine similarity of references `n` at pixels (rows, cols) of frame b (broadcasting)."""
    return _similarity_in_cells(t, b, n, y.cell[rows], x.cell[cols], y.w0[rows], y.w1[rows], x.w0[cols], x.w1[cols])


def _similarity_in_cells(t: _PatchTerms, b: int, n, i, j, y0, y1, x0, x1) -> np.ndarray:
    """Similarity of references `n` in cells (i, j) at row weights (y0, y1) and column weights
    (x0, x1), all broadcasting: the cell terms are gathered at the shape of (n, i, j) and only
    then spread over the pixels, so a block of pixels costs one gather per term.

    d.f = y0 (x0 D[i,j] + x1 D[i,j+1]) + y1 (x0 D[i+1,j] + x1 D[i+1,j+1]) and
    |f|^2 = y0^2 Q(i) + y1^2 Q(i+1) + 2 y0 y1 X(i), with Q(r) = |x0 F[r,j] + x1 F[r,j+1]|^2 and
    X(i) = <x0 a + x1 b, x0 c + x1 d> for the cell's corners a, b (row i) and c, d (row i+1).
    """
    D, sq, right, length = t.dots[b], t.sq[b], t.right[b], t.length[b]
    dots = y0 * (x0 * D[n, i, j] + x1 * D[n, i, j + 1]) + y1 * (x0 * D[n, i + 1, j] + x1 * D[n, i + 1, j + 1])
    xx0, xx1, x01 = x0 * x0, x1 * x1, 2 * x0 * x1
    q_top = xx0 * sq[i, j] + xx1 * sq[i, j + 1] + x01 * right[i, j]
    q_bottom = xx0 * sq[i + 1, j] + xx1 * sq[i + 1, j + 1] + x01 * right[i + 1, j]
    cross = xx0 * t.ac[b, i, j] + 0.5 * x01 * (t.ad[b, i, j] + t.bc[b, i, j]) + xx1 * t.bd[b, i, j]
    norm2 = y0 * y0 * q_top + y1 * y1 * q_bottom + 2 * y0 * y1 * cross
    scale = y0 * (x0 * length[i, j] + x1 * length[i, j + 1]) + y1 * (x0 * length[i + 1, j] + x1 * length[i + 1, j + 1])
    sim = dots / np.sqrt(np.maximum(norm2, _EPS * _EPS))
    cancelling = norm2 < _CANCELLING * scale * scale
    if cancelling.any():
        parts = [i, j, y0, y1, x0, x1]
        if isinstance(n, slice):  # the references form the leading axis of the result
            n = np.arange(len(t.references))[n].reshape((-1,) + (1,) * (sim.ndim - 1))
            parts = [np.asarray(part)[None] for part in parts]
        at = np.nonzero(np.broadcast_to(cancelling, sim.shape))
        sim[at] = _exact_similarity(t, b, *(np.broadcast_to(part, sim.shape)[at] for part in (n, *parts)))
    return np.clip(sim, -1.0, 1.0)


def _exact_similarity(t: _PatchTerms, b: int, n, i, j, y0, y1, x0, x1) -> np.ndarray:
    """(K,) similarity of references n (K,) at K pixels given by cell and weights, in float64:
    from the cell's float64 Gram matrix and corner dot products (16 terms a pixel), or, where
    even that loses digits (|f| below `_VANISHING` of sum_k w_k |F_k|), from the interpolated
    C-vector itself."""
    y0, y1, x0, x1 = (np.asarray(w, np.float64) for w in (y0, y1, x0, x1))
    w = np.stack([y0 * x0, y0 * x1, y1 * x0, y1 * x1], -1)  # (K, 4): corners a, b, c, d
    gram = _corner_gram(t, b, i, j)  # (K, 4, 4)
    norm2 = np.einsum("kl,klm,km->k", w, gram, w)
    scale = (w * np.sqrt(np.maximum(np.diagonal(gram, axis1=1, axis2=2), 0))).sum(-1)
    sim = (w * _corner_dots(t, b, n, i, j)).sum(-1) / np.sqrt(np.maximum(norm2, _EPS * _EPS))
    vanishing = np.flatnonzero(norm2 < _VANISHING * scale * scale)
    if len(vanishing):
        F, k = t.features[b], vanishing
        h, w = F.shape[1:]
        i0, j0 = np.asarray(i)[k], np.asarray(j)[k]
        i1, j1 = np.minimum(i0 + 1, h - 1), np.minimum(j0 + 1, w - 1)  # the padding repeats the last row/column

        def corner(rows, cols):  # (C, k) float64: only the columns needed, never the whole frame
            return np.asarray(F[:, rows, cols], np.float64)

        f = (y0[k] * (x0[k] * corner(i0, j0) + x1[k] * corner(i0, j1))
             + y1[k] * (x0[k] * corner(i1, j0) + x1[k] * corner(i1, j1)))  # (C, k)
        f = f / np.maximum(np.sqrt((f * f).sum(0)), _EPS)
        sim[k] = np.einsum("kc,ck->k", t.references[np.asarray(n)[k]], f)
    return sim.astype(np.float32)


class _DenseRows:
    """The similarity of every pixel, one cell row at a time (an (N, rows, W) block stays in
    cache): the same formulas as `_similarity_at`, arranged separably. Along columns the
    terms are interpolated once at patch-row resolution; each image row then mixes two of
    those rows with its weight y1 as a + y1 (b - a), which is y0 a + y1 b with y0 = 1 - y1.
    The norms (shared by all references) are computed for the whole image at once."""

    def __init__(self, t: _PatchTerms, b: int, y: _Axis, x: _Axis) -> None:
        j, x0, x1 = x.cell, x.w0, x.w1
        D, sq, right, length = t.dots[b], t.sq[b], t.right[b], t.length[b]
        self.t, self.b, self.y, self.x = t, b, y, x
        self.dots = x0 * D[:, :, j] + x1 * D[:, :, j + 1]  # (N, h+1, W)
        self.dots_step = np.diff(self.dots, axis=1)  # (N, h, W)
        row_norm2 = x0 * x0 * sq[:, j] + x1 * x1 * sq[:, j + 1] + 2 * x0 * x1 * right[:, j]  # Q: (h+1, W)
        cross = x0 * x0 * t.ac[b][:, j] + x0 * x1 * (t.ad[b] + t.bc[b])[:, j] + x1 * x1 * t.bd[b][:, j]  # X: (h, W)
        row_length = x0 * length[:, j] + x1 * length[:, j + 1]
        i, y0, y1 = y.cell, y.w0[:, None], y.w1[:, None]
        norm2 = y0 * y0 * row_norm2[i] + y1 * y1 * row_norm2[i + 1] + 2 * y0 * y1 * cross[i]  # (H, W)
        scale = y0 * row_length[i] + y1 * row_length[i + 1]
        self.inverse_norm = 1 / np.sqrt(np.maximum(norm2, _EPS * _EPS))
        self.cancelling = norm2 < _CANCELLING * scale * scale

    def cells(self, clip: bool = True):
        """Yields (first image row, similarity block (N, rows, W)) for each cell row with
        pixels; clip=False leaves values a rounding error outside [-1, 1] (an argmax does
        not mind). Blocks are views of one buffer: use each before taking the next."""
        y = self.y
        N, W = self.dots.shape[0], self.dots.shape[2]
        buffer = np.empty((N, int(y.count.max()), W), np.float32)
        for i in np.flatnonzero(y.count):
            rows = slice(int(y.start[i]), int(y.start[i] + y.count[i]))
            block = buffer[:, : rows.stop - rows.start]
            np.multiply(self.dots_step[:, i, None], y.w1[rows, None], out=block)
            block += self.dots[:, i, None]
            block *= self.inverse_norm[rows]
            r, c = np.nonzero(self.cancelling[rows])
            if len(r):
                N = len(block)
                n, r, c = np.repeat(np.arange(N), len(r)), np.tile(r, N), np.tile(c, N)
                pr = r + rows.start
                block[n, r, c] = _exact_similarity(self.t, self.b, n, y.cell[pr], self.x.cell[c], y.w0[pr], y.w1[pr],
                                                   self.x.w0[c], self.x.w1[c])
            if clip:
                np.minimum(block, 1.0, out=block)
                np.maximum(block, -1.0, out=block)
            yield rows.start, block


def _dense_similarity(t: _PatchTerms, b: int, y: _Axis, x: _Axis) -> np.ndarray:
    """(N, H, W) similarity at every pixel of frame b."""
    out = np.empty((t.dots.shape[1], len(y.cell), len(x.cell)), np.float32)
    for row, block in _DenseRows(t, b, y, x).cells():
        out[:, row:row + block.shape[1]] = block
    return out


def _dense_best(t: _PatchTerms, b: int, y: _Axis, x: _Axis, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(score (N,), flat pixel index (N,)) of the first best pixel of every reference in frame
    b, every pixel evaluated; mask: (H, W) bool or None (pixels outside never win)."""
    N, W = t.dots.shape[1], len(x.cell)
    score, index = np.full(N, -np.inf, np.float32), np.zeros(N, np.int64)
    for row, block in _DenseRows(t, b, y, x).cells(clip=False):
        rows = block.shape[1]
        if mask is not None:
            block = np.where(mask[row:row + rows], block, -np.inf)
        flat = block.reshape(N, -1)
        best = flat.argmax(1)
        value = flat[np.arange(N), best]
        better = value > score  # strictly: an earlier row keeps a tie, as a row-major argmax does
        score[better], index[better] = value[better], row * W + best[better]
    return np.clip(score, -1.0, 1.0), index


def _cell_bounds(t: _PatchTerms, b: int) -> np.ndarray:
    """(N, h, w) upper bound of the similarity of each reference anywhere in each cell, by
    convexity (cheap; loose where corners point in unrelated directions, see `_span_bounds`)."""
    D = t.dots[b]
    best_dot = np.maximum(np.maximum(D[:, :-1, :-1], D[:, :-1, 1:]), np.maximum(D[:, 1:, :-1], D[:, 1:, 1:]))
    sq, right = t.sq[b], t.right[b]
    aa, bb, cc, dd = sq[:-1, :-1], sq[:-1, 1:], sq[1:, :-1], sq[1:, 1:]
    ab, cd = right[:-1], right[1:]
    ac, ad, bc, bd = t.ac[b], t.ad[b], t.bc[b], t.bd[b]
    # <F_k, s> for s = a + b + c + d, and |s|^2: |f| >= <f, s/|s|> >= min_k <F_k, s>/|s|.
    towards = np.stack([aa + ab + ac + ad, ab + bb + bc + bd, ac + bc + cc + cd, ad + bd + cd + dd])
    total = towards.sum(0)
    least_norm = np.maximum(towards.min(0), 0) / np.sqrt(np.maximum(total, _EPS))
    most_norm = np.sqrt(np.maximum(np.stack([aa, bb, cc, dd]).max(0), _EPS))
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(least_norm > 0, best_dot / np.maximum(least_norm, _EPS), np.inf)
    # Where the corners nearly cancel, scores are recomputed exactly: never rule such a cell out.
    upper = np.where(least_norm * least_norm < _CANCELLING * np.maximum(total, _EPS) / 16, np.inf, upper)
    return np.where(best_dot > 0, upper, best_dot / most_norm)


def _span_bounds(t: _PatchTerms, b: int) -> np.ndarray:
    """(N, h, w) upper bound of the similarity of each (unit) reference anywhere in each cell:
    every f in a cell lies in the span of its four corners, and no vector of a subspace has
    a larger cosine with d than d's projection onto it, |P d|^2 = D^T G^-1 D (G the corners'
    Gram matrix, D their dot products with d), here |z|^2 for L z = D with G = L L^T.
    Unlike the convexity bound this stays tight where corners point in unrelated directions
    (random-like features).

    The Cholesky factorisation runs over all cells at once, corner by corner (a, b, c, d); a
    corner within 1e-4 rad of the span of the earlier ones is left out. The last cell row and
    column have replicated corners (c = a and d = b, or b = a and d = c), which are left out
    exactly; a cell that leaves out any other corner gets no bound (inf), because leaving out
    a corner that is only nearly in the span could underestimate the projection."""
    h, w = t.ac.shape[-2:]
    i, j = np.arange(h)[:, None], np.arange(w)[None, :]
    G, D = _corner_gram(t, b, i, j), _corner_dots(t, b, np.arange(len(t.references))[:, None, None], i[None], j[None])  # (h, w, 4, 4), (N, h, w, 4)
    L = np.zeros_like(G)
    z = np.zeros_like(D)
    left_out = np.zeros((h, w), np.int64)
    for k in range(4):
        pivot = G[..., k, k] - (L[..., k, :k] ** 2).sum(-1)
        keep = pivot > _DEGENERATE * G[..., k, k]
        root = np.sqrt(np.where(keep, pivot, 1.0))
        for r in range(k + 1, 4):
            L[..., r, k] = np.where(keep, (G[..., r, k] - (L[..., r, :k] * L[..., k, :k]).sum(-1)) / root, 0.0)
        L[..., k, k] = np.where(keep, root, 0.0)
        z[..., k] = np.where(keep, (D[..., k] - (z[..., :k] * L[..., k, :k]).sum(-1)) / root, 0.0)
        left_out += ~keep
    replicated = np.zeros((h, w), np.int64)
    replicated[-1, :] = 2
    replicated[:, -1] = 2
    replicated[-1, -1] = 3
    return np.where(left_out == replicated, np.sqrt((z * z).sum(-1)) + _MARGIN, np.inf)


def _search_frame(t: _PatchTerms, b: int, y: _Axis, x: _Axis, W: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(score (N,), flat pixel index (N,)) of the best pixel of every reference in frame b,
    evaluating only the cells whose bound reaches a similarity already found; None when the
    bounds leave too much of the image to make this worthwhile."""
    N = t.dots.shape[1]
    bound = _cell_bounds(t, b)
    # A similarity every best pixel must reach (any pixel's is a valid floor; a lower one only
    # prunes less): first the middle pixel of the cell where the patch-level similarity peaks
    # and of the cell with the highest bound, both near the best pixel as a rule (two
    # evaluations per reference); where that leaves many cells, the middle pixel of every
    # cell. (clamped: with fewer pixels than patches along an axis, the last cells hold no pixel)
    h, w = bound.shape[1:]
    mid_rows = np.minimum(y.start + y.count // 2, len(y.cell) - 1)
    mid_cols = np.minimum(x.start + x.count // 2, W - 1)
    grid = t.dots[b][:, :h, :w] / np.maximum(t.length[b][:h, :w], _EPS)
    picks = np.stack([grid.reshape(N, -1).argmax(1), bound.reshape(N, -1).argmax(1)], 1)  # (N, 2) flat cells
    floor = _similarity_at(t, b, np.arange(N)[:, None], y, x, mid_rows[picks // w], mid_cols[picks % w]).max(1)
    candidates = bound >= (floor - _MARGIN)[:, None, None]
    if candidates.mean() > _SPAN_SHARE:
        sampled = _similarity_at(t, b, slice(None), y, x, mid_rows[:, None], mid_cols[None, :])  # (N, h, w)
        floor = np.maximum(floor, sampled.reshape(N, -1).max(1))
        candidates = bound >= (floor - _MARGIN)[:, None, None]
    if candidates.mean() > _SPAN_SHARE:  # the convexity bound is loose here (random-like features): tighten it
        candidates &= _span_bounds(t, b) >= (floor - _MARGIN)[:, None, None]
    n_idx, i_idx, j_idx = np.nonzero(candidates)
    pixels = (y.count[i_idx] * x.count[j_idx]).sum()
    if pixels > _DENSE_SHARE * N * len(y.cell) * W:
        return None
    cell_best, cell_first = _evaluate_cells(t, b, y, x, W, n_idx, i_idx, j_idx)
    score = np.full(N, -np.inf, np.float32)
    np.maximum.at(score, n_idx, cell_best)
    # Among pixels reaching the best score, the first in row-major order (as an argmax).
    last = np.iinfo(np.int64).max
    first = np.where(cell_best == score[n_idx], cell_first, last)
    index = np.full(N, last, np.int64)
    np.minimum.at(index, n_idx, first)
    return score, index


def _evaluate_cells(t: _PatchTerms, b: int, y: _Axis, x: _Axis, W: int, n_idx: np.ndarray, i_idx: np.ndarray,
                    j_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For K (reference, cell) entries: the best similarity over the cell's pixels and the
    first (row-major) flat pixel index reaching it, each (K,)."""
    ry, rx = int(y.count.max()), int(x.count.max())
    rows = y.start[i_idx][:, None] + np.arange(ry)[None, :]  # (K, ry)
    cols = x.start[j_idx][:, None] + np.arange(rx)[None, :]  # (K, rx)
    inside = (np.arange(ry)[None, :] < y.count[i_idx][:, None])[:, :, None] & (np.arange(rx)[None, :] < x.count[j_idx][:, None])[:, None, :]
    rows_c, cols_c = np.minimum(rows, len(y.cell) - 1), np.minimum(cols, W - 1)
    n3, i3, j3 = n_idx[:, None, None], i_idx[:, None, None], j_idx[:, None, None]
    sims = _similarity_in_cells(t, b, n3, i3, j3, y.w0[rows_c][:, :, None], y.w1[rows_c][:, :, None],
                                x.w0[cols_c][:, None, :], x.w1[cols_c][:, None, :])
    sims = np.where(inside, sims, -np.inf).reshape(len(n_idx), -1)
    flat = (rows_c[:, :, None] * W + cols_c[:, None, :]).reshape(len(n_idx), -1)
    at = sims.argmax(1)
    rows_k = np.arange(len(n_idx))
    return sims[rows_k, at], flat[rows_k, at]


def _grid_peaks(t: _PatchTerms, b: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to `count` local maxima (3x3) per reference of the similarity at the patch
    centres, best first: (reference (P,), row (P,), column (P,)) of the patch grid."""
    h, w = t.ac.shape[-2:]
    grid = t.dots[b][:, :h, :w] / np.maximum(t.length[b][:h, :w], _EPS)  # (N, h, w)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    neighbours = np.stack([padded[:, 1 + di:1 + di + h, 1 + dj:1 + dj + w] for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj])
    peak = grid >= neighbours.max(0)
    out = []
    for n in range(len(grid)):
        r, c = np.nonzero(peak[n])
        order = np.argsort(-grid[n, r, c], kind="stable")[:count]
        out.append((np.full(len(order), n), r[order], c[order]))
    return tuple(np.concatenate(parts) for parts in zip(*out))


def _frame_candidates(t: _PatchTerms, b: int, y: _Axis, x: _Axis, W: int, best: tuple[np.ndarray, np.ndarray],
                      count: int) -> tuple[np.ndarray, np.ndarray]:
    """(uv (N, count, 2), score (N, count)) of frame b: the best pixel `best` (score (N,),
    flat index (N,)) first, then other grid peaks refined in the four cells around them."""
    N = t.dots.shape[1]
    h, w = t.ac.shape[-2:]
    uv = np.zeros((N, count, 2), np.float32)
    score = np.full((N, count), -np.inf, np.float32)
    n, r, c = _grid_peaks(t, b, count)
    offsets = np.array([(-1, -1), (-1, 0), (0, -1), (0, 0)])  # the cells sharing the patch centre as a corner
    cells_r = np.clip(r[:, None] + offsets[None, :, 0], 0, h - 1).ravel()
    cells_c = np.clip(c[:, None] + offsets[None, :, 1], 0, w - 1).ravel()
    value, index = _evaluate_cells(t, b, y, x, W, np.repeat(n, 4), cells_r, cells_c)
    value, index = value.reshape(-1, 4), index.reshape(-1, 4)
    pick = value.argmax(1)
    value, index = value[np.arange(len(n)), pick], index[np.arange(len(n)), pick]
    peak_uv = np.stack([index % W, index // W], -1).astype(np.float32)
    for k in range(N):
        best_uv = np.array([best[1][k] % W, best[1][k] // W], np.float32)
        # a peak refined onto (or next to) the best pixel is the same place
        other = np.flatnonzero((n == k) & (np.linalg.norm(peak_uv - best_uv, axis=1) > 1.5))
        other = other[np.argsort(-value[other], kind="stable")][:count - 1]
        uv[k, 0], score[k, 0] = best_uv, best[0][k]
        uv[k, 1:1 + len(other)], score[k, 1:1 + len(other)] = peak_uv[other], value[other]
    return uv, score


class Matcher:
    """Finds N reference keypoints in feature maps by upsampled cosine similarity.

    references: (M, C) descriptors (e.g. from `sample_descriptors` on the reference image).
    owner: (M,) int, the keypoint each descriptor describes (several views of one keypoint:
        its similarity at a pixel is the best of its views'); default one keypoint per
        descriptor (N = M).
    """

    def __init__(self, references: np.ndarray, owner: np.ndarray | None = None) -> None:
        refs = np.asarray(references, np.float64)
        if refs.ndim != 2 or refs.shape[0] == 0:
            raise ValueError(f"references: expected (N, C) descriptors, got shape {refs.shape}")
        if not np.isfinite(refs).all():
            raise ValueError("references: descriptors contain NaN or inf")
        self.references = refs / np.maximum(np.linalg.norm(refs, axis=1, keepdims=True), _EPS)  # (M, C) float64, unit
        self.owner = np.arange(len(refs)) if owner is None else np.asarray(owner, np.int64)
        if self.owner.shape != (len(refs),) or not np.array_equal(np.unique(self.owner), np.arange(self.owner.max() + 1)):
            raise ValueError(f"owner: expected one keypoint index per descriptor covering 0..N-1, got {self.owner.tolist()}")
        self.keypoints = int(self.owner.max()) + 1
        self._views = [np.flatnonzero(self.owner == n) for n in range(self.keypoints)]

    @property
    def channels(self) -> int:
        return int(self.references.shape[1])

    @property
    def several_views(self) -> bool:
        return self.keypoints < len(self.references)

    def _best_view(self, per_descriptor: np.ndarray, axis: int) -> np.ndarray:
        """Per keypoint the maximum over its descriptors along `axis` (M there -> N)."""
        if not self.several_views:
            return per_descriptor
        return np.stack([per_descriptor.take(rows, axis).max(axis) for rows in self._views], axis)

    def scores(self, descriptors: np.ndarray) -> np.ndarray:
        """(N,) cosine similarity of each keypoint to the descriptor (N, C) sampled where it
        is (the best of its views)."""
        d = np.asarray(descriptors, np.float64)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), _EPS)
        return self._best_view(np.einsum("mc,mc->m", d[self.owner], self.references), 0)

    def refine(self, features: np.ndarray | torch.Tensor, image_size: tuple[int, int], uv: np.ndarray,
               which: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Each keypoint of `which` (N,) bool moved to the pixel of highest similarity (the
        best of its descriptors) within `radius` px of uv (N, 2); (uv (N, 2), score (N,)
        there, NaN for the others). features: (C, h, w) of one frame of image_size (H, W)."""
        H, W = image_size
        offsets = np.stack(np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1)), -1).reshape(-1, 2)
        out_uv, out_score = np.array(uv, np.float64, copy=True), np.full(len(uv), np.nan)
        chosen = np.flatnonzero(which)
        if not len(chosen):
            return out_uv, out_score
        windows = np.round(np.asarray(uv, np.float64)[chosen])[:, None] + offsets  # (n, P, 2)
        inside = (windows[..., 0] >= 0) & (windows[..., 0] < W) & (windows[..., 1] >= 0) & (windows[..., 1] < H)
        d = sample_descriptors(features, windows[inside], image_size).astype(np.float64)  # one sampling for every window
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), _EPS)
        starts = np.concatenate([[0], np.cumsum(inside.sum(1))])
        for i, n in enumerate(chosen):
            if starts[i] == starts[i + 1]:
                continue
            similarity = (d[starts[i]:starts[i + 1]] @ self.references[self._views[n]].T).max(1)  # (P,) best of its descriptors
            best = int(np.argmax(similarity))
            out_uv[n], out_score[n] = windows[i][inside[i]][best], similarity[best]
        return out_uv, out_score

    def _merge_views(self, uv: np.ndarray, score: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(uv (N, count, 2), score (N, count)) of one frame from its descriptors' candidates
        (M, K, ...): per keypoint the best places over its views, best first, a place found
        by several views (within _SAME_PLACE_PX) once."""
        out_uv = np.zeros((self.keypoints, count, 2), np.float32)
        out_score = np.full((self.keypoints, count), -np.inf, np.float32)
        for n, rows in enumerate(self._views):
            places, values = uv[rows].reshape(-1, 2), score[rows].reshape(-1)
            kept: list[int] = []
            for i in np.argsort(-values, kind="stable"):
                if not np.isfinite(values[i]) or len(kept) == count:
                    break
                if all(np.abs(places[i] - places[k]).max() > _SAME_PLACE_PX for k in kept):
                    kept.append(i)
            out_uv[n, :len(kept)], out_score[n, :len(kept)] = places[kept], values[kept]
        return out_uv, out_score

    def _features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if feats.ndim != 4 or feats.shape[1] != self.channels:
            raise ValueError(f"features: expected (B, {self.channels}, h, w), got {feats.shape}")
        return feats.astype(np.float32, copy=False)

    def similarity(self, features: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
        """(B, N, H, W) float32 cosine similarity of every pixel to every keypoint (the best of
        its views; NaN-free input).

        features: (B, C, h, w) patch features of B images of `image_size` (H, W).
        """
        feats = self._features(features)
        t = _patch_terms(self.references, feats)
        y, x = _axis(image_size[0], feats.shape[2]), _axis(image_size[1], feats.shape[3])
        return np.stack([self._best_view(_dense_similarity(t, b, y, x), 0) for b in range(len(feats))])

    def match(
        self,
        features: np.ndarray | torch.Tensor,
        image_size: tuple[int, int],
        similarity_vectors: bool = False,
        mask: np.ndarray | None = None,
        candidates: int = 0,
    ) -> Matches:
        """Best pixel per keypoint in each of B frames (the best over its views).

        features: (B, C, h, w) patch features; image_size: (H, W) pixels.
        mask: optional (B, H, W) bool; matches are searched only where it is true (every
            pixel is evaluated then).
        candidates: also return this many best distinct places per keypoint (no mask).
        """
        feats = self._features(features)
        B, N = feats.shape[0], self.keypoints
        H, W = image_size
        finite = np.isfinite(feats.sum(axis=(1, 2, 3), dtype=np.float64))  # NaN and inf propagate into the sum
        if not finite.all():  # such frames are matched on zeros and reported invalid
            feats = np.where(finite[:, None, None, None], feats, np.float32(0))
        t = _patch_terms(self.references, feats)
        y, x = _axis(H, feats.shape[2]), _axis(W, feats.shape[3])
        valid = np.repeat(finite[:, None], N, axis=1)
        masks = None if mask is None else np.asarray(mask, bool)
        if masks is not None and masks.shape != (B, H, W):
            raise ValueError(f"mask: expected shape {(B, H, W)} (frames, height, width), got {masks.shape}")
        if candidates and masks is not None:
            raise ValueError("candidates: not with a mask")
        score, index = np.empty((B, N), np.float32), np.empty((B, N), np.int64)
        candidate_uv = np.zeros((B, N, candidates, 2), np.float32) if candidates else None
        candidate_score = np.zeros((B, N, candidates), np.float32) if candidates else None
        for b in range(B):
            found = _search_frame(t, b, y, x, W) if masks is None else None
            if found is None:
                found = _dense_best(t, b, y, x, None if masks is None else masks[b])
                if masks is not None:
                    valid[b] &= bool(masks[b].any())
            best_view = np.array([rows[np.argmax(found[0][rows])] for rows in self._views])  # (N,) descriptor rows
            score[b], index[b] = found[0][best_view], found[1][best_view]
            if candidates:
                places = _frame_candidates(t, b, y, x, W, found, candidates)
                candidate_uv[b], candidate_score[b] = self._merge_views(*places, candidates) if self.several_views else places
        uv = np.stack([index % W, index // W], axis=-1)
        sims = None
        if similarity_vectors:
            sims = np.stack([self._best_view(_similarity_at(t, b, slice(None), y, x, uv[b, :, 1], uv[b, :, 0]).T, 1) for b in range(B)])
            sims = np.where(valid[:, :, None], sims, 0)
        score = np.where(valid, score, 0)
        return Matches(
            uv=uv.astype(np.float32),
            score=score.astype(np.float32),
            valid=valid,
            similarity=None if sims is None else sims.astype(np.float32),
            candidate_uv=candidate_uv,
            candidate_score=None if candidate_score is None else np.where(valid[:, :, None], candidate_score, -np.inf).astype(np.float32),
        )


def naive_similarity(references: np.ndarray, features: np.ndarray | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, N, H, W) cosine similarity computed the straightforward way: upsample all C feature
    channels to full resolution, normalise every pixel, dot with each reference."""
    refs = torch.as_tensor(np.asarray(references, np.float32))
    refs = refs / refs.norm(dim=1, keepdim=True).clamp(min=_EPS)
    up = F.interpolate(_as_tensor(features).float(), size=image_size, mode="bilinear", align_corners=False)
    up = up / up.norm(dim=1, keepdim=True).clamp(min=_EPS)
    return torch.einsum("nc,bchw->bnhw", refs, up)
