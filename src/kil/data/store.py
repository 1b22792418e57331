"""The training store: one zarr group per episode, observations and action chunks at the
policy rate, plus the normalisation statistics of every field (diffusion_policy keeps its
replay buffers in zarr too).

Layout of DS/ (a zarr v2 directory store):
    attrs      task, keypoint names and instances, keypoint source, rate, horizon, stats
    episodes/<name>/
        stamp_ns     (T,) int64     observation (camera frame) stamps
        keypoints    (T, N, 3) f32  base frame, NaN where not visible
        visible      (T, N) bool
        score        (T, N) f32     matching score (1 for oracle keypoints)
        similarity   (T, N, N) f32  only when built with similarity vectors
        rgb          (T, h, w, 3) u8  only when built with images (the RGB baseline)
        ee_position  (T, 3) f32
        ee_orientation (T, 4) f32   quaternion x, y, z, w
        gripper      (T,) f32       opening in metres
        action       (T, H, 10) f32 commanded targets at obs + i/rate: position, 6-D rotation, gripper
        imitate      (T,) bool      only where some are False: the action chunk at t is no demonstration
                                    (it reaches into a span the recording marks not to imitate)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kil.errors import ConfigError

STORE_FORMAT = 1
ACTION_DIM = 10
FIELDS = ("stamp_ns", "keypoints", "visible", "score", "ee_position", "ee_orientation", "gripper", "action")
OPTIONAL_FIELDS = ("similarity", "rgb", "imitate")


def _zarr():
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - the models extra installs it
        raise ConfigError("the training store needs zarr<3 (pip install 'kil[models]')") from err
    return zarr


@dataclass
class EpisodeData:
    """One episode's arrays (see the module docstring for shapes)."""

    name: str
    stamp_ns: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    score: np.ndarray
    ee_position: np.ndarray
    ee_orientation: np.ndarray
    gripper: np.ndarray
    action: np.ndarray
    similarity: np.ndarray | None = None
    rgb: np.ndarray | None = None
    imitate: np.ndarray | None = None

    def __post_init__(self) -> None:
        T = len(self.stamp_ns)
        N = self.keypoints.shape[1] if self.keypoints.ndim == 3 else -1
        expected = {
            "keypoints": (T, N, 3), "visible": (T, N), "score": (T, N), "ee_position": (T, 3),
            "ee_orientation": (T, 4), "gripper": (T,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"episode {self.name}: {name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.action.ndim != 3 or self.action.shape[0] != T or self.action.shape[2] != ACTION_DIM:
            raise ValueError(f"episode {self.name}: action has shape {self.action.shape}, expected ({T}, H, {ACTION_DIM})")
        if self.rgb is not None and (self.rgb.ndim != 4 or self.rgb.shape[0] != T or self.rgb.shape[3] != 3 or self.rgb.dtype != np.uint8):
            raise ValueError(f"episode {self.name}: rgb has shape {self.rgb.shape} {self.rgb.dtype}, expected ({T}, h, w, 3) uint8")
        if self.imitate is not None and (self.imitate.shape != (T,) or self.imitate.dtype != bool):
            raise ValueError(f"episode {self.name}: imitate has shape {self.imitate.shape} {self.imitate.dtype}, expected ({T},) bool")
        if self.similarity is not None and self.similarity.shape != (T, N, N):
            raise ValueError(f"episode {self.name}: similarity has shape {self.similarity.shape}, expected {(T, N, N)}")

    def __len__(self) -> int:
        return len(self.stamp_ns)


class Store:
    """A training store on disk: write episodes one by one, then the statistics."""

    def __init__(self, root: Any, path: Path) -> None:
        self.root = root
        self.path = path

    @classmethod
    def create(cls, path: str | Path, attrs: dict[str, Any]) -> Store:
        """A new, empty store at `path` (which must not exist: stores are never overwritten)."""
        path = Path(path)
        if path.exists():
            raise ConfigError(f"--out: {path} exists already (datasets are never overwritten; choose another path)")
        root = _zarr().open_group(str(path), mode="w-")
        root.attrs.update({"format": STORE_FORMAT, **attrs})
        root.create_group("episodes")
        return cls(root, path)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        path = Path(path)
        if not (path / ".zgroup").exists():
            raise ConfigError(f"--dataset: {path} is not a kil training store (no .zgroup; build one with kil build-dataset)")
        root = _zarr().open_group(str(path), mode="r")
        if root.attrs.get("format") != STORE_FORMAT:
            raise ConfigError(f"--dataset: {path} has store format {root.attrs.get('format')!r}; this kil reads format {STORE_FORMAT}")
        return cls(root, path)

    def require_complete(self, option: str = "--dataset") -> Store:
        """This store, if its build finished: episodes listed and present, statistics written
        (a build that was interrupted leaves none). A one-line ConfigError otherwise."""
        names = self.episode_names
        if not names:
            raise ConfigError(f"{option}: {self.path} holds no episode (its build was interrupted or kept nothing); build it again")
        missing = [n for n in names if n not in self.root["episodes"]]
        if missing:
            raise ConfigError(f"{option}: {self.path} lists episodes it does not hold ({', '.join(missing[:3])}); build it again")
        if not self.stats:
            raise ConfigError(f"{option}: {self.path} has no normalisation statistics (its build was interrupted); build it again")
        return self

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def episode_names(self) -> list[str]:
        return list(self.root.attrs.get("episodes", []))

    def write_episode(self, episode: EpisodeData) -> None:
        group = self.root["episodes"].create_group(episode.name)
        optional = tuple(name for name in OPTIONAL_FIELDS if getattr(episode, name) is not None)
        for name in FIELDS + optional:
            value = np.ascontiguousarray(getattr(episode, name))
            # One chunk per episode along time: episodes are read whole.
            group.create_dataset(name, data=value, chunks=value.shape)
        # The episode list is what readers trust: an episode only counts once fully written.
        self.root.attrs["episodes"] = [*self.episode_names, episode.name]

    def read_episode(self, name: str) -> EpisodeData:
        group = self.root["episodes"][name]
        arrays = {key: group[key][...] for key in FIELDS + OPTIONAL_FIELDS if key in group}
        return EpisodeData(name=name, **arrays)

    def episodes(self) -> list[EpisodeData]:
        return [self.read_episode(n) for n in self.episode_names]

    def set_stats(self, stats: dict[str, dict[str, list[float]]]) -> None:
        self.root.attrs["stats"] = stats

    @property
    def stats(self) -> dict[str, dict[str, list[float]]]:
        return dict(self.root.attrs.get("stats", {}))


def field_stats(episodes: list[EpisodeData]) -> dict[str, dict[str, list[float]]]:
    """Min/max per dimension of each policy input and of the actions, over all episodes
    (keypoint positions pooled over keypoints; invisible ones ignored). Orientation enters
    the policy as Euler angles or 6-D rotation, so both are given."""
    from kil.policy.rotation import quat_to_euler, quat_to_rot6d

    def bounds(x: np.ndarray) -> dict[str, list[float]]:
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        finite = np.isfinite(x).all(axis=1)
        if not finite.any():
            raise ValueError("no finite values to compute statistics from")
        return {"min": x[finite].min(0).tolist(), "max": x[finite].max(0).tolist()}

    cat = {key: np.concatenate([getattr(e, key) for e in episodes]) for key in ("keypoints", "ee_position", "ee_orientation", "gripper", "action")}
    return {
        "keypoints": bounds(cat["keypoints"]),
        "ee_position": bounds(cat["ee_position"]),
        "ee_euler": bounds(quat_to_euler(cat["ee_orientation"])),
        "ee_rot6d": bounds(quat_to_rot6d(cat["ee_orientation"])),
        "gripper": bounds(cat["gripper"][:, None]),
        "action": bounds(cat["action"]),
    }
