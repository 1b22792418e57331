"""Episode metadata: the small YAML file kept inside each episode's rosbag2 directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from kil import __version__
from kil.config import load_dataclass, load_yaml, to_plain

METADATA_FILE = "kil_episode.yaml"
# extra key: [[start, end], ...] stamps (ns, the bag's clock) whose actions are no demonstration
# (a demonstrator's injected error, DART-style); training leaves samples whose labels reach into them out
NOT_TO_IMITATE = "not_to_imitate_ns"
EpisodeStatus = Literal["recording", "complete", "recovered", "failed"]


@dataclass(frozen=True)
class EpisodeMetadata:
    """What an episode is: task, rig, variation, seed, outcome; plus free-form `extra`
    (object ids, task completion, operator notes). `status` is maintained by the writer:
    `recording` until the bag is closed, `complete` once it was closed whole, `recovered`
    after a killed or cut recording is repaired, `failed` when the recorder process died
    (what it wrote is kept). Only `complete` episodes judged successful are demonstrations."""

    task: str = ""  # "" (a file written by hand without it): any task
    rig: str = ""  # "" : the rig is named by whoever reads it (kil build-dataset --rig)
    variation: str = "in"
    seed: int | None = None
    success: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    distro: Literal["humble", "jazzy"] = "jazzy"
    # kil's writers always set it; a file written by hand or by another tool is a closed recording
    status: EpisodeStatus = "complete"
    kil_version: str = __version__

    def with_updates(self, **changes: Any) -> EpisodeMetadata:
        return replace(self, **changes)


def not_to_imitate(metadata: EpisodeMetadata | None, where: str | Path) -> list[tuple[int, int]]:
    """The spans of `metadata`'s episode (read from `where`) not to imitate: [(start_ns,
    end_ns)], start < end. A malformed entry is a one-line ValueError naming the file and key."""
    raw = [] if metadata is None else metadata.extra.get(NOT_TO_IMITATE, [])
    try:
        spans = [(int(a), int(b)) for a, b in raw]
    except (TypeError, ValueError):
        raise ValueError(f"{Path(where) / METADATA_FILE}: extra.{NOT_TO_IMITATE} must be a list of [start_ns, end_ns], got {raw!r}") from None
    if any(a >= b for a, b in spans):
        raise ValueError(f"{Path(where) / METADATA_FILE}: extra.{NOT_TO_IMITATE}: every span needs start < end, got {raw!r}")
    return spans


def write_metadata(bag_dir: str | Path, metadata: EpisodeMetadata) -> Path:
    """Write (atomically replace) the episode metadata file in `bag_dir`."""
    path = Path(bag_dir) / METADATA_FILE
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_plain(metadata), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_metadata(bag_dir: str | Path) -> EpisodeMetadata | None:
    """The episode metadata of `bag_dir`, or None for a bag without one (e.g. ros2 bag record)."""
    path = Path(bag_dir) / METADATA_FILE
    if not path.exists():
        return None
    return load_dataclass(EpisodeMetadata, load_yaml(path), f"{path}:")


def episode_task(episode: str | Path, task: str | None, option: str = "--task") -> tuple[Path, str]:
    """An existing episode directory and its task: `task` when given, else its metadata's
    (a missing episode or task is a one-line ConfigError naming `option`)."""
    from kil.errors import ConfigError

    from kil.data.bag import bag_problem

    path = Path(episode)
    if not path.exists():
        raise ConfigError(f"--episode: {path} does not exist")
    problem = bag_problem(path)
    if problem is not None and "not closed" not in problem:  # an unclosed one is recovered when read
        raise ConfigError(f"--episode: {path} is not a readable episode: {problem.removeprefix(f'{path}: ')}")
    metadata = read_metadata(path)
    found = task or (metadata.task if metadata else None)
    if not found:
        raise ConfigError(f"{option}: {path} has no metadata naming its task; pass {option}")
    return path, found
