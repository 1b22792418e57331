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
from kil.perception.matching import Matcher, naive_similarity
method, C, h, w, H, W, N, repeats = sys.argv[1], *map(int, sys.argv[2:9])
rng = np.random.default_rng(0)
features = torch.from_numpy(rng.standard_normal((1, C, h, w)).astype(np.float32))
refs = rng.standard_normal((N, C)).astype(np.float32)
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
print(json.dumps({"times": times, "peak_kib": peak_kib}))
"""


def _measure(method: str, channels: int, grid: tuple[int, int], size: tuple[int, int], keypoints: int, repeats: int) -> dict:
    args = [sys.executable, "-c", _CHILD, method, str(channels), *map(str, grid), *map(str, size), str(keypoints), str(repeats)]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def feature_latency(size: tuple[int, int], repeats: int = 3, random_weights: bool = True) -> list[tuple[str, str, float | None, str]]:
    """(backend config, backend, median seconds per frame or None, note) for each config under
    config/features/. Backends whose weights are missing are timed with a randomly initialised
    checkpoint of the same architecture (DIFT with one ensemble member) when `random_weights`."""
    import tempfile

    from kil.bench.architectures import random_checkpoint
    from kil.errors import ConfigError
    from kil.paths import share_dir
    from kil.perception.features.base import describe, load_extractor

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
    results = {m: _measure(m, channels, grid, size, keypoints, repeats) for m in ("naive", "fast")}
    table = Table("matcher", "median ms", "peak extra memory MiB")
    for method, r in results.items():
        table.add_row(method, f"{statistics.median(r['times']) * 1e3:.2f}", f"{r['peak_kib'] / 1024:.1f}")
    console.print(table)
    naive, fast = (statistics.median(results[m]["times"]) for m in ("naive", "fast"))
    mem = results["naive"]["peak_kib"] / max(results["fast"]["peak_kib"], 1)
    console.print(f"fast matcher: [bold]{naive / fast:.0f}x faster[/bold] than naive (goal >= 100x), {mem:.0f}x less peak memory")
    if backends:
        table = Table("config", "backend", "median ms / frame", "notes", title=f"feature latency at {size[0]}x{size[1]} camera frames")
        for name, backend, seconds, note in feature_latency(size, random_weights=random_weights):
            table.add_row(name, backend, "-" if seconds is None else f"{seconds * 1e3:.1f}", note)
        console.print(table)
    return 0
