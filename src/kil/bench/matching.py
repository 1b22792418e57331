"""Image-matching speed and memory: the naive full-resolution matcher (upsample all C feature
channels) against the exact patch-cost matcher, side by side in one run, plus the latency of
every feature backend whose weights are present.

Peak memory is measured in a fresh child process per method (the rise of its maximum resident
set size while matching), so one method's allocations never hide the other's.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from kil.bench.matching import synthetic_features
from kil.perception.matching import Matcher, naive_similarity
method, kind, C, h, w, H, W, N, repeats, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:11])
if threads:
    torch.set_num_threads(threads)
features, refs = synthetic_features(kind, C, h, w, N)
matcher = Matcher(refs)
def fast():
    return matcher.match(features, (H, W)).uv
def naive():
    with torch.inference_mode():
        return naive_similarity(refs, features, (H, W)).flatten(2).argmax(dim=2)
run = fast if method == "fast" else naive
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run()
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
times = []
for _ in range(repeats):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "peak_kib": peak_kib, "threads": torch.get_num_threads()}))
"""


def synthetic_features(kind: str, channels: int, h: int, w: int, keypoints: int, seed: int = 0):
    """(features (1, C, h, w) float32 tensor, references (N, C)) for the benchmark.

    random: i.i.d. normal features and references: the convexity bound rules out no cell,
        the span bound most.
    low-rank: features in a 3-dimensional subspace (as on flat, textureless surfaces), the
        worst case: neither bound holds there, neighbouring features often nearly cancel
        (recomputed exactly), and every pixel is evaluated.
    smooth: spatially correlated features (a coarse random grid upsampled, plus noise), like a
        ViT's, with references taken from a second, perturbed map at random pixels, as from a
        reference image of the same scene.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    if kind == "low-rank":
        basis = rng.standard_normal((channels, 3)).astype(np.float32)
        features = np.einsum("cr,brhw->bchw", basis, rng.standard_normal((1, 3, h, w)).astype(np.float32))
        return torch.from_numpy(np.ascontiguousarray(features, np.float32)), rng.standard_normal((keypoints, channels)).astype(np.float32)
    if kind == "random":
        return torch.from_numpy(rng.standard_normal((1, channels, h, w)).astype(np.float32)), rng.standard_normal((keypoints, channels)).astype(np.float32)
    coarse = torch.from_numpy(rng.standard_normal((1, channels, max(h // 4, 2), max(w // 4, 2))).astype(np.float32))
    base = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    features = base + 0.2 * torch.from_numpy(rng.standard_normal((1, channels, h, w)).astype(np.float32))
    reference = base + 0.2 * torch.from_numpy(rng.standard_normal((1, channels, h, w)).astype(np.float32))
    picks = rng.integers(0, [h, w], size=(keypoints, 2))
    return features, reference[0, :, picks[:, 0], picks[:, 1]].T.contiguous().numpy()


def _measure(method: str, kind: str, channels: int, grid: tuple[int, int], size: tuple[int, int], keypoints: int, repeats: int,
             threads: int = 0) -> dict:
    """Times of one method in a fresh process; threads: torch threads there (0: torch's default)."""
    args = [sys.executable, "-c", _CHILD, method, kind, str(channels), *map(str, grid), *map(str, size), str(keypoints), str(repeats),
            str(threads)]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _quiet_model_libraries() -> None:
    """No per-model progress bars and advice from transformers/diffusers in the benchmark's
    table output (this is a command-line process; nothing else shares those loggers)."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def feature_latency(size: tuple[int, int], repeats: int = 3, random_weights: bool = True) -> list[tuple[str, str, float | None, str]]:
    """(backend config, backend, median seconds per frame or None, note) for each config under
    config/features/. Backends whose weights are missing are timed with a randomly initialised
    checkpoint of the same architecture (DIFT with one ensemble member) when `random_weights`."""
    import tempfile

    from kil.bench.architectures import random_checkpoint
    from kil.errors import ConfigError
    from kil.paths import share_dir
    from kil.perception.features.base import describe, load_extractor

    _quiet_model_libraries()
    rows = []
    image = (np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8)
    for path in sorted((share_dir() / "config" / "features").glob("*.yaml")):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                backend, status = describe(path)
                overrides, note = {}, ""
                if not status.present:
                    checkpoint = random_checkpoint(backend, Path(tmp)) if random_weights else None
                    if checkpoint is None:
                        rows.append((path.stem, backend, None, f"weights not present: {status.location}"))
                        continue
                    overrides = {"weights": str(checkpoint), **({"ensemble_size": 1} if backend == "dift" else {})}
                    note = "random weights, published architecture" + (", 1 ensemble member" if backend == "dift" else "") + "; "
                extractor = load_extractor(path, overrides)
                features = extractor.extract(image)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    extractor.extract(image)
                    times.append(time.perf_counter() - t)
                note += f"{tuple(extractor.input_size)} input -> {tuple(features.shape[1:])}, {extractor.device.type} {str(extractor.dtype).split('.')[-1]}"
                rows.append((path.stem, backend, statistics.median(times), note))
                del extractor
            except ConfigError as err:
                rows.append((path.stem, "?", None, str(err)))
    return rows


def run(channels: int = 384, grid: tuple[int, int] = (30, 40), size: tuple[int, int] = (480, 640), keypoints: int = 6,
        repeats: int = 15, backends: bool = True, random_weights: bool = True) -> int:
    console = Console(width=160)
    console.print(f"[bold]image matching[/bold]: {keypoints} keypoints, C={channels}, {grid[0]}x{grid[1]} patches -> "
                  f"{size[0]}x{size[1]} pixels, median of {repeats} runs, peak memory in a fresh process each")
    table = Table("features", "matcher", "torch threads", "median ms", "p90 ms", "max ms", "peak extra memory MiB", "speed-up", "memory ratio")
    for kind in ("smooth", "random", "low-rank"):
        results = {(m, n): _measure(m, kind, channels, grid, size, keypoints, repeats if m == "fast" else max(3, repeats // 5), n)
                   for m, n in (("naive", 0), ("fast", 0), ("fast", 1))}
        naive = statistics.median(results[("naive", 0)]["times"])
        for (method, threads), r in results.items():
            times = np.array(r["times"]) * 1e3
            mem = results[("naive", 0)]["peak_kib"] / max(r["peak_kib"], 1)
            table.add_row(kind, method, f"{r['threads']}" + (" (default)" if threads == 0 else ""), f"{np.median(times):.2f}",
                          f"{np.percentile(times, 90):.2f}", f"{times.max():.2f}", f"{r['peak_kib'] / 1024:.1f}",
                          f"{naive / statistics.median(r['times']):.0f}x" if method == "fast" else "",
                          f"{mem:.0f}x less" if method == "fast" else "")
    console.print(table)
    console.print("smooth: spatially correlated features (as a ViT's) with references from a similar map; random: i.i.d. "
                  "features, where the span bound still skips most cells; low-rank: features in a 3-D subspace, the worst case "
                  "(every pixel evaluated, many nearly cancelling neighbours recomputed exactly). "
                  "Goal >= 100x with the default threads, and about the same time with one thread.")
    if backends:
        table = Table("config", "backend", "median ms / frame", "notes", title=f"feature latency at {size[0]}x{size[1]} camera frames")
        for name, backend, seconds, note in feature_latency(size, random_weights=random_weights):
            table.add_row(name, backend, "-" if seconds is None else f"{seconds * 1e3:.1f}", note)
        console.print(table)
    return 0
