"""Export a training store as a LeRobot dataset (format v3.0, as lerobot 0.4.x writes it).

A LeRobot v3.0 dataset is a directory of parquet and JSON files:
    meta/info.json                               format version, fps, totals, path templates, features
    meta/stats.json                              min, max, mean, std, count per numeric feature
    meta/tasks.parquet                           task strings (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet     one row per episode: length, tasks, where its rows are
    data/chunk-000/file-000.parquet              one row per frame, one column per feature

lerobot itself is not importable here (it needs torchvision), so the files are written with
pyarrow to lerobot's v3.0 layout, using the constants of lerobot/datasets/utils.py. Each
frame holds the observation (end-effector pose and gripper, keypoints with their visibility)
and the first action of the stored chunk: the target commanded at the observation time.
There are no images or videos.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kil.data.store import EpisodeData, Store
from kil.errors import ConfigError

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 200
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DEFAULT_DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_EPISODES_PATH = "meta/episodes/" + CHUNK_FILE_PATTERN + ".parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STATE_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper"]
ACTION_NAMES = ["x", "y", "z", "r11", "r21", "r31", "r12", "r22", "r32", "gripper"]
STATS_FEATURES = ("observation.state", "observation.keypoints", "action")


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - the models extra installs it
        raise ConfigError("the LeRobot export needs pyarrow (pip install 'kil[models]')") from err
    return pa, pq


def features(keypoint_names: list[str]) -> dict[str, dict[str, Any]]:
    """The `features` of info.json for a store with these keypoints."""
    n = len(keypoint_names)
    return {
        "observation.state": {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": STATE_NAMES},
        "observation.keypoints": {"dtype": "float32", "shape": [3 * n],
                                  "names": [f"{k}.{axis}" for k in keypoint_names for axis in "xyz"]},
        "observation.keypoints_visible": {"dtype": "bool", "shape": [n], "names": list(keypoint_names)},
        "action": {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": ACTION_NAMES},
        **DEFAULT_FEATURES,
    }


def frame_columns(episode: EpisodeData, episode_index: int, first_index: int) -> dict[str, np.ndarray]:
    """One episode's frames as arrays keyed by feature, rows first."""
    T = len(episode)
    state = np.concatenate([episode.ee_position, episode.ee_orientation, episode.gripper[:, None]], axis=1)
    return {
        "observation.state": state.astype(np.float32),
        "observation.keypoints": episode.keypoints.reshape(T, -1).astype(np.float32),
        "observation.keypoints_visible": episode.visible.astype(bool),
        "action": episode.action[:, 0, :].astype(np.float32),
        "timestamp": ((episode.stamp_ns - episode.stamp_ns[0]) / 1e9).astype(np.float32),
        "frame_index": np.arange(T, dtype=np.int64),
        "episode_index": np.full(T, episode_index, dtype=np.int64),
        "index": np.arange(first_index, first_index + T, dtype=np.int64),
        "task_index": np.zeros(T, dtype=np.int64),
    }


def _arrow_column(values: np.ndarray) -> Any:
    """A scalar column, or a fixed-size list column for (rows, width) arrays (lerobot's
    `datasets.Sequence(length=width)`)."""
    pa, _ = _pa()
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def frames_table(columns: list[dict[str, np.ndarray]], names: list[str]) -> Any:
    pa, _ = _pa()
    return pa.table({name: _arrow_column(np.concatenate([c[name] for c in columns])) for name in names})


def episodes_table(lengths: list[int], task: str) -> Any:
    """meta/episodes: where each episode's rows lie (all in data chunk 0, file 0)."""
    pa, _ = _pa()
    ends = np.cumsum(lengths, dtype=np.int64)
    n = len(lengths)
    zeros = pa.array(np.zeros(n, dtype=np.int64))
    return pa.table({
        "episode_index": pa.array(np.arange(n, dtype=np.int64)),
        "tasks": pa.array([[task]] * n, type=pa.list_(pa.string())),
        "length": pa.array(np.asarray(lengths, dtype=np.int64)),
        "data/chunk_index": zeros,
        "data/file_index": zeros,
        "dataset_from_index": pa.array(ends - np.asarray(lengths, dtype=np.int64)),
        "dataset_to_index": pa.array(ends),
        "meta/episodes/chunk_index": zeros,
        "meta/episodes/file_index": zeros,
    })


def write_tasks(task: str, path: Path) -> None:
    """meta/tasks.parquet: lerobot writes `pd.DataFrame({"task_index": [...]}, index=tasks)`
    and reads it back with `pd.read_parquet`, looking tasks up in the index. With pandas at
    hand that is done here too. Without it the same file is written with pyarrow: the index
    as column `__index_level_0__` plus the `pandas` schema metadata that makes
    `pd.read_parquet` restore it as the index."""
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        pd.DataFrame({"task_index": [0]}, index=[task]).to_parquet(path)
        return
    pa, pq = _pa()
    pandas_metadata = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": pa.array([task], pa.string())})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_metadata)}), path)


def feature_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics ignoring NaN; `count` is the number of frames (lerobot's shape [1])."""
    x = values.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a keypoint never seen gives NaN statistics
        return {
            "min": np.nanmin(x, axis=0).tolist(), "max": np.nanmax(x, axis=0).tolist(),
            "mean": np.nanmean(x, axis=0).tolist(), "std": np.nanstd(x, axis=0).tolist(),
            "count": [len(x)],
        }


def _fps(rate_hz: float) -> int:
    if rate_hz <= 0 or float(rate_hz) != int(rate_hz):
        raise ConfigError(f"--lerobot: the store's rate {rate_hz} Hz is not a whole number; "
                          "LeRobot datasets need an integer fps")
    return int(rate_hz)


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def export_lerobot(store_path: str | Path, out: str | Path) -> Path:
    """Write the training store at `store_path` as a LeRobot v3.0 dataset in `out` (a new
    directory) and return `out`."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--lerobot: {out} exists already (datasets are never overwritten; choose another path)")
    _, pq = _pa()
    store = Store.open(store_path)
    attrs = store.attrs
    fps = _fps(attrs["rate_hz"])
    episodes = store.episodes()
    if not episodes:
        raise ConfigError(f"--dataset: {store_path} has no episodes to export")
    marked = sum(int((~e.imitate).sum()) for e in episodes if e.imitate is not None)
    if marked:  # LeRobot's format has no field for it
        logging.getLogger("kil.dataset").warning("%s: %d frames are marked not to imitate; the LeRobot export keeps them as "
                                                 "ordinary frames (drop them in its training if it matters)", store_path, marked)
    feats = features(list(attrs["keypoint_names"]))
    lengths = [len(e) for e in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    columns = [frame_columns(e, i, int(s)) for i, (e, s) in enumerate(zip(episodes, starts))]
    task = str(attrs["task"])

    data_path = out / DEFAULT_DATA_PATH.format(chunk_index=0, file_index=0)
    episodes_path = out / DEFAULT_EPISODES_PATH.format(chunk_index=0, file_index=0)
    for path in (data_path, episodes_path):
        path.parent.mkdir(parents=True)
    pq.write_table(frames_table(columns, list(feats)), data_path, compression="snappy")
    pq.write_table(episodes_table(lengths, task), episodes_path, compression="snappy")
    write_tasks(task, out / TASKS_PATH)
    _write_json({name: feature_stats(np.concatenate([c[name] for c in columns])) for name in STATS_FEATURES},
                out / STATS_PATH)
    _write_json({
        "codebase_version": CODEBASE_VERSION,
        "robot_type": attrs.get("robot_type", attrs.get("robot")),
        "total_episodes": len(episodes),
        "total_frames": int(sum(lengths)),
        "total_tasks": 1,
        "chunks_size": DEFAULT_CHUNK_SIZE,
        "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
        "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DEFAULT_DATA_PATH,
        "video_path": None,
        "features": feats,
    }, out / INFO_PATH)
    return out
