"""The dataset builder on recorded sim episodes: image-matched and oracle keypoints, the
keypoint cache, broken and unsuccessful episodes, and the LeRobot export."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from kil.data.bag import EpisodeReader, EpisodeWriter
from kil.data.builder import CACHE_DIR, BuildConfig, build_dataset
from kil.data.episode import read_metadata, write_metadata
from kil.data.store import Store
from kil.errors import ConfigError

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from kil.sim.demos import episode_seed, record_episode

    root = tmp_path_factory.mktemp("demos")
    result = record_episode("pick_place", "panda", "in", episode_seed(11, 0), root / "source")
    assert result.success and result.path == root / "source" / "episode_0000"
    return result.path


def _copy_without(source, target, drop) -> None:
    """Rewrite an episode through the bag API, leaving out the messages `drop` selects."""
    metadata = read_metadata(source)
    reader = EpisodeReader(source)
    start = None
    with EpisodeWriter(target, metadata) as writer:
        for topic, typename, log_time, msg in reader.ros_messages():
            start = log_time if start is None else start
            if not drop(topic, (log_time - start) / 1e9):
                writer.write_ros(topic, typename, msg, log_time)
    write_metadata(target, read_metadata(target).with_updates(status="complete"))


def test_builder_keeps_good_episodes_and_skips_broken_ones(recorded, tmp_path, caplog):
    episodes = tmp_path / "episodes"
    shutil.copytree(recorded, episodes / "episode_0000")
    _copy_without(recorded, episodes / "episode_0001", lambda topic, t: topic.startswith("/camera/") and 2.0 < t < 3.5)
    _copy_without(recorded, episodes / "episode_0002", lambda topic, t: topic == "/kil/pose_target")
    shutil.copytree(recorded, episodes / "episode_0003")
    write_metadata(episodes / "episode_0003", read_metadata(recorded).with_updates(success=False))
    shutil.copytree(recorded, episodes / "episode_0004")  # a damaged file: the MCAP cut in half
    mcap = next((episodes / "episode_0004").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    shutil.copytree(recorded, episodes / "episode_0005")  # a hand-edited metadata file gone wrong
    (episodes / "episode_0005" / "kil_episode.yaml").write_text("task: [pick_place\n")

    with caplog.at_level(logging.WARNING, logger="kil.dataset"):
        report = build_dataset(episodes, tmp_path / "ds", BuildConfig(task="pick_place"))
    assert list(report.kept) == ["episode_0000"] and list(report.excluded) == ["episode_0003"]
    assert report.excluded["episode_0003"].startswith("unsuccessful (success: false")
    assert set(report.broken) == {"episode_0001", "episode_0002", "episode_0004", "episode_0005"}
    assert all(reason.startswith(str(episodes / name)) and "\n" not in reason for name, reason in report.broken.items())
    assert "camera stream" in report.broken["episode_0001"] and "gap" in report.broken["episode_0001"]
    assert "/kil/pose_target" in report.broken["episode_0002"]
    warnings = [r.getMessage() for r in caplog.records]
    assert any(w.startswith("skipped ") and "episode_0001: camera stream" in w for w in warnings)
    assert any(w.startswith("skipped ") and "episode_0002: topic /kil/pose_target" in w for w in warnings)
    assert all("\n" not in w for w in warnings)

    store = Store.open(tmp_path / "ds")
    assert store.attrs["keypoint_names"][:2] == ["block/top_center", "block/top_x"] and store.attrs["keypoint_source"] == "image"
    assert store.attrs["spec"] == "pick_place"  # the shipped spec by name: a policy trained here runs on another machine
    e = store.read_episode("episode_0000")
    T = len(e)
    assert e.keypoints.shape == (T, 7, 3) and e.action.shape == (T, 16, 10) and T > 50
    # The recorded source bag is untouched; the keypoints are cached beside it.
    assert read_metadata(episodes / "episode_0000").success is True
    cached = list((episodes / CACHE_DIR).glob("episode_0000.*.npz"))
    assert len(cached) == 1

    # Oracle keypoints: the ground truth; image-matched keypoints lie close to it.
    build_dataset(episodes, tmp_path / "ds_oracle", BuildConfig(task="pick_place", keypoints="oracle"))
    oracle = Store.open(tmp_path / "ds_oracle").read_episode("episode_0000")
    both = e.visible & oracle.visible  # the oracle hides points occluded (e.g. the block's by the gripper)
    # Visibility follows the truth: most points it sees are reported, most it does not see are not.
    assert both.sum() / oracle.visible.sum() > 0.75 and (~e.visible & ~oracle.visible).sum() / (~oracle.visible).sum() > 0.4
    error = np.linalg.norm(e.keypoints - oracle.keypoints, axis=-1)[both]
    assert np.median(error) < 0.01, np.median(error)
    np.testing.assert_array_equal(oracle.action, e.action)

    # A rebuild reads the cache: same keypoints without running the feature net.
    cached = len(list((episodes / CACHE_DIR).glob("episode_0000.*.npz")))  # image and oracle keypoints
    build_dataset(episodes, tmp_path / "ds_again", BuildConfig(task="pick_place"))
    np.testing.assert_array_equal(Store.open(tmp_path / "ds_again").read_episode("episode_0000").keypoints, e.keypoints)
    assert len(list((episodes / CACHE_DIR).glob("episode_0000.*.npz"))) == cached
    # A re-recorded episode of the same name is not served stale keypoints.
    shutil.rmtree(episodes / "episode_0000")
    shutil.copytree(episodes / "episode_0003", episodes / "episode_0000")
    write_metadata(episodes / "episode_0000", read_metadata(recorded))
    build_dataset(episodes, tmp_path / "ds_rerecorded", BuildConfig(task="pick_place"))
    assert len(list((episodes / CACHE_DIR).glob("episode_0000.*.npz"))) == cached + 1


def test_builder_without_a_successful_episode_is_an_error(recorded, tmp_path):
    episodes = tmp_path / "episodes"
    shutil.copytree(recorded, episodes / "episode_0000")
    write_metadata(episodes / "episode_0000", read_metadata(recorded).with_updates(success=False))
    with pytest.raises(ConfigError, match=r"no episode to build a dataset from .*0 kept \(0 trimmed\), 1 excluded"):
        build_dataset(episodes, tmp_path / "ds", BuildConfig(task="pick_place"))
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ConfigError, match="keypoints: expected one of image, oracle"):
        from kil.config import load_dataclass

        load_dataclass(BuildConfig, {"task": "pick_place", "keypoints": "magic"}, "build-dataset:")
    with pytest.raises(ConfigError, match="build-dataset: keypointz: unknown key"):
        load_dataclass(BuildConfig, {"task": "pick_place", "keypointz": "image"}, "build-dataset:")


def test_policy_trained_on_a_recorded_episode_drives_the_sim_rig(recorded, tmp_path):
    """Episode -> store (with images) -> a few training steps -> the sim_policy graph runs the
    policy closed loop: chunks stamped with observation times reach the rig through the
    interpolator and the safety node, and the arm moves."""
    from kil.policy.configuration import load_run_config
    from kil.runtimes.local import LocalRuntime
    from kil.sim.rollouts import policy_graph
    from kil.training.policy import train

    episodes = tmp_path / "episodes"
    shutil.copytree(recorded, episodes / "episode_0000")
    build_dataset(episodes, tmp_path / "ds", BuildConfig(task="pick_place", images=(24, 32)))
    e = Store.open(tmp_path / "ds").read_episode("episode_0000")
    assert e.rgb.shape == (len(e), 24, 32, 3) and e.rgb.dtype == np.uint8 and e.rgb.max() > 0
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: cpu-small\ntraining: {steps: 20, batch_size: 16, checkpoint_every: 20, warmup_steps: 2}\n")
    train(load_run_config(config), tmp_path / "ds", tmp_path / "run")

    graph = policy_graph(tmp_path / "run", "pick_place", "panda", "in", 5)
    assert set(graph.nodes) == {"rig", "features", "keypoints", "policy", "interpolator", "safety", "visualisation"}
    assert graph.nodes["features"].config.model == "descriptor_net"
    runtime = LocalRuntime(graph, clock="stepped")
    stats = runtime.run(2.0)
    policy = runtime.stages["policy"]
    # Predictions every n_action_steps observations at 10 Hz, each chunk stamped with its frame.
    assert 2 <= policy.predictions <= 4 and stats.published["/kil/chunk"] == policy.predictions
    chunk = runtime.stages["visualisation"].chunk  # the newest chunk
    assert runtime.stages["interpolator"].trajectory is not None
    camera_period_ns = 100_000_000  # the graph's camera runs at 10 Hz from a round start time
    assert len(chunk.positions) == 16 and chunk.stamp_ns % camera_period_ns == 0 and chunk.stamp_ns <= policy.history[-1].stamp_ns
    assert stats.published["/kil/pose_target"] > 150
    states = list(policy.states)
    assert np.linalg.norm(states[-1].position - states[0].position) > 1e-3  # the arm moved
    # What kil eval and kil run --policy call per episode: the same graph, with its video.
    from kil.sim.rollouts import run_policy

    result = run_policy(tmp_path / "run", "pick_place", "panda", "in", 5, time_limit_s=1.0, video=tmp_path / "rollout.mp4")
    assert result.path == tmp_path / "rollout.mp4" and result.path.stat().st_size > 0
    assert result.duration_s == pytest.approx(1.0) and result.stop_reason == "ran for 1 s" and 0.0 <= result.completion <= 1.0


def test_spans_marked_not_to_imitate_are_left_out_of_training(recorded, tmp_path):
    """A recording's injected error (metadata extra.not_to_imitate_ns, as `kil sim demos
    --miss-rate` writes) keeps its observations in the store but no sample whose action
    chunk reaches into it is trained on; a malformed span breaks only its episode."""
    from kil.data.episode import NOT_TO_IMITATE
    from kil.policy.configuration import load_run_config
    from kil.training.policy import Trainer

    episodes = tmp_path / "episodes"
    shutil.copytree(recorded, episodes / "episode_0000")
    plain = build_dataset(episodes, tmp_path / "plain", BuildConfig(task="pick_place"))
    stamps = Store.open(tmp_path / "plain").read_episode("episode_0000").stamp_ns
    assert not plain.not_imitated
    start, end = int(stamps[20]) + 50_000_000, int(stamps[40])  # between frames 20 and 21 .. frame 40
    metadata = read_metadata(recorded)
    write_metadata(episodes / "episode_0000", metadata.with_updates(extra={**metadata.extra, NOT_TO_IMITATE: [[start, end]]}))
    shutil.copytree(recorded, episodes / "episode_0001")
    write_metadata(episodes / "episode_0001", metadata.with_updates(extra={**metadata.extra, NOT_TO_IMITATE: [[end, start]]}))

    report = build_dataset(episodes, tmp_path / "ds", BuildConfig(task="pick_place", horizon=16))
    assert "episode_0001" in report.broken and f"extra.{NOT_TO_IMITATE}" in report.broken["episode_0001"]
    e = Store.open(tmp_path / "ds").read_episode("episode_0000")
    assert np.array_equal(e.stamp_ns, stamps)
    # at 10 Hz the chunk at frame t reaches t + 1.5 s: frames 6..39 touch [start, end), the rest do not
    expected = np.ones(len(e), bool)
    expected[6:40] = False
    assert np.array_equal(e.imitate, expected) and report.not_imitated == {"episode_0000": 34}

    config = tmp_path / "tiny.yaml"
    config.write_text("preset: cpu-small\ntraining: {steps: 1, batch_size: 4}\n")
    trainer = Trainer(load_run_config(config), tmp_path / "ds", tmp_path / "run")
    assert set(trainer.usable.tolist()) == set(np.flatnonzero(expected).tolist())


def test_instance_matching_builds_a_dataset_and_the_policy_runs_with_it(recorded, tmp_path):
    """--extraction in: the builder finds the keypoints inside the depth-and-colour
    segmenter's instances, the store and the trained policy say so, and the closed-loop
    graph's keypoints node is set to instance matching with that segmenter; --extraction t
    (Lucas-Kanade from image matching) agrees with image matching while the arm is away."""
    from kil.policy.configuration import load_run_config
    from kil.sim.rollouts import policy_graph
    from kil.training.policy import train

    episodes = tmp_path / "episodes"
    shutil.copytree(recorded, episodes / "episode_0000")
    build_dataset(episodes, tmp_path / "im", BuildConfig(task="pick_place"))
    build_dataset(episodes, tmp_path / "in", BuildConfig(task="pick_place", extraction="in"))
    build_dataset(episodes, tmp_path / "t", BuildConfig(task="pick_place", extraction="t"))
    im, inn, tracked = (Store.open(tmp_path / name) for name in ("im", "in", "t"))
    assert inn.attrs["extraction"] == "in" and inn.attrs["segmenter"] == "depth_colour" and im.attrs["extraction"] == "im"
    assert tracked.attrs["extraction"] == "t" and tracked.attrs["tracker"] == "lucas_kanade" and tracked.attrs["track_init"] == "im"
    a = im.read_episode("episode_0000")
    for other in (inn, tracked):
        b = other.read_episode("episode_0000")
        first = slice(0, 20)  # the arm away from the block: all find it
        assert b.visible[first].mean() >= 0.9
        both = a.visible[first] & b.visible[first]
        assert np.nanmedian(np.linalg.norm(a.keypoints[first][both] - b.keypoints[first][both], axis=-1)) < 0.01
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: cpu-small\ntraining: {steps: 1, batch_size: 4, checkpoint_every: 1}\n")
    train(load_run_config(config), tmp_path / "in", tmp_path / "run")
    keypoints = policy_graph(tmp_path / "run", "pick_place", "panda", "in", 5).nodes["keypoints"].config
    assert keypoints.extraction == "in" and keypoints.segmenter == "depth_colour"
    from kil.rigs import live_params, load_rig

    live = live_params(load_rig("sim"), "pick_place", str(tmp_path / "run"))["keypoints"]  # what bringup.launch.py sets
    assert live["extraction"] == "in" and live["segmenter"] == "depth_colour"
    with pytest.raises(ConfigError, match="extraction:=im but the policy .* was trained on keypoints extracted by in"):
        live_params(load_rig("sim"), "pick_place", str(tmp_path / "run"), "im")


def test_rigid_objects_go_from_the_dataset_to_the_policys_keypoints_node(recorded, tmp_path):
    """rigid_objects_m: the builder follows objects as rigid bodies, the store records it
    (its keypoints are cached apart from the default's), and the trained policy's closed-loop
    and live keypoints nodes follow them so too; a policy without it sets nothing."""
    from kil.policy.configuration import load_run_config
    from kil.rigs import live_params, load_rig
    from kil.sim.rollouts import policy_graph
    from kil.training.policy import train

    episodes = tmp_path / "episodes"
    shutil.copytree(recorded, episodes / "episode_0000")
    build_dataset(episodes, tmp_path / "im", BuildConfig(task="pick_place"))
    build_dataset(episodes, tmp_path / "rigid", BuildConfig(task="pick_place", rigid_objects_m=0.015))
    im, rigid = Store.open(tmp_path / "im"), Store.open(tmp_path / "rigid")
    assert im.attrs["rigid_objects_m"] is None and rigid.attrs["rigid_objects_m"] == 0.015
    config = tmp_path / "tiny.yaml"
    config.write_text("preset: cpu-small\ntraining: {steps: 1, batch_size: 4, checkpoint_every: 1}\n")
    for name in ("im", "rigid"):
        train(load_run_config(config), tmp_path / name, tmp_path / f"run_{name}")
    expected = {"im": None, "rigid": 0.015}
    for name, value in expected.items():
        assert policy_graph(tmp_path / f"run_{name}", "pick_place", "panda", "in", 5).nodes["keypoints"].config.rigid_objects_m == value
        live = live_params(load_rig("sim"), "pick_place", str(tmp_path / f"run_{name}"))["keypoints"]  # what bringup.launch.py sets
        assert live.get("rigid_objects_m") == value
    with pytest.raises(ValueError, match="rigid_objects_m: must be > 0 metres"):
        BuildConfig(task="pick_place", rigid_objects_m=0.0)


def test_proposed_keypoints_lie_on_the_object_pointed_at(recorded, tmp_path):
    """kil keypoints propose: SKIL's k-means and KALM's consistent farthest points inside the
    block a pixel names, on the episode's first frame, written as a loadable spec beside the
    frame (the one kil annotate edits) with a PNG; a pixel on bare table is a one-line error."""
    import subprocess
    import sys

    from kil.cli.keypoints import _episode_frame
    from kil.data.builder import recording_graph
    from kil.data.episode_streams import read_streams
    from kil.perception.lifting import lift
    from kil.perception.spec import load_spec

    truth = read_streams(recorded, recording_graph("sim")).truth[0]
    at = truth.uv[truth.names.index("block/top_center")]
    centre, corner = (truth.xyz[truth.names.index(f"block/{name}")] for name in ("top_center", "top_corner"))
    table_z = truth.xyz[truth.names.index("tray/center")][2] - 0.015  # the tray's floor stands just above the table
    frame, _ = _episode_frame(recorded, 0)
    demos = tmp_path / "demos"
    for i in range(2):
        shutil.copytree(recorded, demos / f"episode_000{i}")
    for method, extra in (("kmeans", []), ("fps", ["--demos", str(demos), "--count", "4"])):
        out = tmp_path / method
        run = subprocess.run([sys.executable, "-m", "kil", "keypoints", "propose", "--episode", str(recorded), "--object",
                              f"block={at[0]:.0f},{at[1]:.0f}", "--method", method, "--out", str(out), *extra],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        spec = load_spec(out)
        (category,) = spec.spec.categories
        uv = np.array(list(category.references[0].keypoints.values()))
        assert category.name == "block" and len(uv) == (6 if method == "kmeans" else 4)
        assert (out / category.references[0].image).is_file() and (out / "proposals.png").stat().st_size > 0
        xyz, has_depth = lift(uv, frame.depth, frame.K, frame.T_base_camera)
        # on the block: within its top face's half-diagonal (+1 cm) of its centre, between the table and its top
        assert has_depth.all()
        assert (np.linalg.norm(xyz[:, :2] - centre[:2], axis=1) <= np.linalg.norm(corner[:2] - centre[:2]) + 0.01).all(), (method, xyz)
        assert ((xyz[:, 2] <= centre[2] + 0.005) & (xyz[:, 2] >= table_z)).all(), (method, xyz, centre)
    table = subprocess.run([sys.executable, "-m", "kil", "keypoints", "propose", "--episode", str(recorded), "--object", "block=5,470",
                            "--out", str(tmp_path / "none")], capture_output=True, text=True, timeout=600)
    assert table.returncode != 0 and "--object block=5,470: no instance of depth_colour covers that pixel" in table.stderr
