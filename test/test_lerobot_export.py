"""The LeRobot v3.0 export of a training store: layout, metadata, frame rows and values."""

from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from kil.data.lerobot import export_lerobot
from kil.data.store import EpisodeData, Store, field_stats
from kil.errors import ConfigError

KEYPOINTS = ["block/a", "block/b", "tray/c"]
HORIZON = 4
LENGTHS = (12, 9)


def episode(name: str, seed: int, T: int) -> EpisodeData:
    """Random but valid arrays; keypoint 2 is not seen every third frame."""
    rng = np.random.default_rng(seed)
    visible = np.ones((T, len(KEYPOINTS)), bool)
    visible[::3, 2] = False
    keypoints = np.where(visible[..., None], rng.uniform(-1, 1, (T, len(KEYPOINTS), 3)), np.nan).astype(np.float32)
    quat = rng.normal(size=(T, 4))
    return EpisodeData(
        name=name, stamp_ns=1_700_000_000_000_000_000 + np.arange(T, dtype=np.int64) * 100_000_000,
        keypoints=keypoints, visible=visible, score=np.ones((T, len(KEYPOINTS)), np.float32),
        ee_position=rng.uniform(-1, 1, (T, 3)).astype(np.float32),
        ee_orientation=(quat / np.linalg.norm(quat, axis=1, keepdims=True)).astype(np.float32),
        gripper=rng.uniform(0, 0.08, T).astype(np.float32),
        action=rng.uniform(-1, 1, (T, HORIZON, 10)).astype(np.float32),
    )


@pytest.fixture
def store_path(tmp_path):
    store = Store.create(tmp_path / "ds", {"task": "pick_place", "keypoint_names": KEYPOINTS,
                                           "keypoint_instance": [0, 0, 1], "keypoint_source": "oracle", "feature_model": None,
                                           "rate_hz": 10.0, "horizon": HORIZON, "episodes": []})
    for i, T in enumerate(LENGTHS):
        store.write_episode(episode(f"episode_{i:04d}", i, T))
    store.set_stats(field_stats(store.episodes()))
    return tmp_path / "ds"


@pytest.fixture
def exported(store_path, tmp_path):
    out = export_lerobot(store_path, tmp_path / "lerobot")
    assert out == tmp_path / "lerobot"
    return out


def column(table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist())


def test_info(exported):
    info = json.loads((exported / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] is None
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, sum(LENGTHS), 1)
    assert info["fps"] == 10 and info["splits"] == {"train": "0:2"} and info["video_path"] is None
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    shapes = {key: (ft["dtype"], ft["shape"]) for key, ft in info["features"].items()}
    assert shapes == {
        "observation.state": ("float32", [8]), "observation.keypoints": ("float32", [9]),
        "observation.keypoints_visible": ("bool", [3]), "action": ("float32", [10]),
        "timestamp": ("float32", [1]), "frame_index": ("int64", [1]), "episode_index": ("int64", [1]),
        "index": ("int64", [1]), "task_index": ("int64", [1]),
    }
    assert info["features"]["observation.keypoints"]["names"][:4] == ["block/a.x", "block/a.y", "block/a.z", "block/b.x"]
    assert info["features"]["index"]["names"] is None


def test_frames_and_episodes(exported, store_path):
    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    total = sum(LENGTHS)
    assert data.num_rows == total
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 8)
    assert data.schema.field("observation.keypoints_visible").type == pa.list_(pa.bool_(), 3)
    np.testing.assert_array_equal(column(data, "index"), np.arange(total))
    np.testing.assert_array_equal(column(data, "episode_index"), np.repeat([0, 1], LENGTHS))
    np.testing.assert_array_equal(column(data, "frame_index"), np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_array_equal(column(data, "task_index"), np.zeros(total))
    assert data.schema.field("timestamp").type == pa.float32()
    np.testing.assert_allclose(column(data, "timestamp")[:3], [0.0, 0.1, 0.2], atol=1e-6)

    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == [0, 1] and [e["length"] for e in episodes] == list(LENGTHS)
    assert all(e["tasks"] == ["pick_place"] and e["data/chunk_index"] == 0 and e["data/file_index"] == 0 for e in episodes)
    state, action = column(data, "observation.state"), column(data, "action")
    keypoints, visible = column(data, "observation.keypoints"), column(data, "observation.keypoints_visible")
    for i, (meta, ep) in enumerate(zip(episodes, Store.open(store_path).episodes())):
        rows = slice(meta["dataset_from_index"], meta["dataset_to_index"])
        assert (column(data, "episode_index")[rows] == i).all() and rows.stop - rows.start == len(ep)
        expected_state = np.concatenate([ep.ee_position, ep.ee_orientation, ep.gripper[:, None]], axis=1)
        np.testing.assert_array_equal(state[rows].astype(np.float32), expected_state)
        np.testing.assert_array_equal(action[rows].astype(np.float32), ep.action[:, 0])
        np.testing.assert_array_equal(keypoints[rows].reshape(-1, 3, 3).astype(np.float32), ep.keypoints)
        np.testing.assert_array_equal(visible[rows], ep.visible)
        assert np.isnan(keypoints[rows][~ep.visible.repeat(3, axis=1)].astype(float)).all()


def test_tasks_and_stats(exported):
    tasks = pq.read_table(exported / "meta/tasks.parquet")
    assert tasks.column("task_index").to_pylist() == [0]
    assert tasks.column("__index_level_0__").to_pylist() == ["pick_place"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    stats = json.loads((exported / "meta/stats.json").read_text())
    assert set(stats) == {"observation.state", "observation.keypoints", "action"}
    assert all(set(s) == {"min", "max", "mean", "std", "count"} for s in stats.values())
    assert len(stats["observation.keypoints"]["mean"]) == 9 and stats["action"]["count"] == [sum(LENGTHS)]
    assert np.isfinite(stats["observation.keypoints"]["min"]).all()


def test_existing_output_is_refused(store_path, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists already"):
        export_lerobot(store_path, tmp_path / "taken")
