"""Recordings as real rigs make them become training data: Franka FR3 + ZED 2i and UR5e
episodes in the `ros2 bag record -s mcap` layout, written independently of kil (mcap +
mcap-ros2-support, test/real_rig_bags.py), read by `kil build-dataset` with the topic names
of each episode's rig; partial, failed, unclosed and cut recordings accounted for; setup
errors first and in one line, for build-dataset, bag, train, eval and annotate."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from kil.cli import main
from kil.data.episode import read_metadata
from kil.data.store import Store
from real_rig_bags import FRANKA, UR5E, Episode, measured_pose, write_episode, write_lab

TASK = ["--task", "pick_place"]


def _rot6d(q: np.ndarray) -> np.ndarray:
    """First two columns of the rotation matrix of quaternion(s) (..., 4) xyzw, as (..., 6)."""
    x, y, z, w = np.moveaxis(np.asarray(q, float), -1, 0)
    col0 = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], -1)
    col1 = np.stack([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)], -1)
    return np.concatenate([col0, col1], -1)


def _latest(stamps: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.searchsorted(stamps, t, side="right") - 1


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab's folder after a day of recording: good Franka and UR5e episodes whose robot
    state starts after the camera, one ending early, a partial one, a failed one, a killed
    recording, another task's, one too short to use, and a calibration folder."""
    root = tmp_path_factory.mktemp("lab") / "demos"
    return root, write_lab(root)


@pytest.fixture(scope="module")
def built(lab, tmp_path_factory):
    """`kil build-dataset DIR --task pick_place --out OUT` on the lab's folder (no --graph)."""
    root, _ = lab
    out = tmp_path_factory.mktemp("built") / "ds"
    import contextlib
    import io

    # (capsys is per test; this build is shared by the tests of the module)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["build-dataset", str(root), *TASK, "--out", str(out)])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_real_franka_and_ur5e_recordings_build_without_a_graph(lab, built):
    root, truth = lab
    code, stdout, stderr, out = built
    assert code == 0, stderr
    lines = {line.split()[1].rstrip(":"): line for line in stdout.splitlines()[1:] if line.startswith("  ") and ":" in line}
    assert "from 8 episodes: 3 kept (3 trimmed), 4 excluded, 1 broken; 1 other directories ignored" in stdout.splitlines()[0]
    # The state starting after the camera costs the frames before it, not the episode.
    assert "kept     episode_0000:" in lines["episode_0000"] and "trimmed 8 leading and 0 trailing camera frames" in lines["episode_0000"]
    assert "trimmed 8 leading and 0 trailing" in lines["episode_0001"]
    assert "trimmed 3 leading and 7 trailing" in lines["episode_0002"]
    assert "excluded episode_0003: recovered from a killed or cut recording (partial); success unknown (success: null)" in lines["episode_0003"]
    assert "excluded episode_0004: unsuccessful (success: false" in lines["episode_0004"]
    assert "excluded episode_0005: recovered" in lines["episode_0005"]  # recovered as the README says, then left out
    assert list((root / "episode_0005").glob("*.mcap.partial")) and (root / "episode_0005" / "metadata.yaml").is_file()
    assert "excluded episode_0006: task 'place_upright', not 'pick_place'" in lines["episode_0006"]
    broken = lines["episode_0007"]
    assert broken.startswith("  broken   episode_0007: ") and "the streams overlap for 0.48 s only (at least 1 s needed)" in broken
    for topic in (FRANKA.image, FRANKA.ee_pose, FRANKA.joint_states, FRANKA.command):
        assert topic in broken
    assert "robot state /franka_robot_state_broadcaster/current_pose + /joint_states 0.42-0.88 s" in broken
    assert "ignored  calibration: " in lines["calibration"] and "not a recording" in lines["calibration"]
    assert "Traceback" not in stdout + stderr

    store = Store.open(out).require_complete()
    assert store.episode_names == ["episode_0000", "episode_0001", "episode_0002"]
    for name, (layout, streams) in truth.items():
        e = store.read_episode(name)
        t = e.stamp_ns
        cmd_ns = np.array([s for s, _, _ in streams["command"]])
        first_state = streams["state"][0][0]
        assert t[0] >= max(cmd_ns[0], first_state) and np.all(np.diff(t) > 0)
        # Actions: the commanded poses held at obs + i/10 s (the last one past the end).
        times = t[:, None] + np.arange(16)[None] * 100_000_000
        index = _latest(cmd_ns, times)
        assert np.all(index >= 0)
        positions = np.array([p for _, p, _ in streams["command"]])[index]
        rot6d = _rot6d(np.array([q for _, _, q in streams["command"]])[index])
        assert np.abs(e.action[..., :3] - positions).max() < 1e-6
        assert np.abs(e.action[..., 3:9] - rot6d).max() < 1e-6
        grip_ns = np.array([s for s, _ in streams["gripper"]])
        gi = _latest(grip_ns, times)  # before the first gripper command: the opening measured then
        grip = np.where(gi >= 0, np.array([g for _, g in streams["gripper"]], np.float32)[gi], e.gripper[:, None])
        assert np.array_equal(e.action[..., 9], grip) and {0.08, 0.02} <= set(np.round(e.action[..., 9].astype(float), 4).ravel().tolist())
        # Proprio: the measured pose in the base frame (the UR's pose comes in `base`, turned 180 degrees).
        state_ns = np.array([s for s, _, _ in streams["state"]])
        expected = np.array([measured_pose((state_ns[i] - Episode().start_ns) / 1e9, layout)[0] for i in _latest(state_ns, t)])
        assert np.abs(e.ee_position - expected).max() < 1e-6, name
        assert set(np.round(e.gripper.astype(float), 4).tolist()) <= {0.08, 0.02}


def test_unsuccessful_episodes_train_only_when_asked(lab, tmp_path, capsys):
    root, _ = lab
    assert main(["build-dataset", str(root), *TASK, "--out", str(tmp_path / "ds"), "--include-unsuccessful", "--keypoints", "image"]) == 0
    out = capsys.readouterr().out
    assert "from 8 episodes: 5 kept (5 trimmed), 1 excluded, 2 broken" in out
    assert "excluded episode_0006: task 'place_upright'" in out  # another task's never
    # the killed recording kept no kil_episode.yaml: which rig's topics it has is for --rig to say
    assert "broken   episode_0005: " in out and "no kil_episode.yaml naming the rig it was recorded on; pass --rig" in out
    assert set(Store.open(tmp_path / "ds").episode_names) == {f"episode_000{i}" for i in range(5)}


def test_a_cut_mcap_is_named_by_bag_info_and_recovered_by_bag_recover(lab, tmp_path, capsys):
    root, _ = lab
    episode = tmp_path / "demos" / "episode_0000"
    shutil.copytree(root / "episode_0000", episode)
    mcap = next(episode.glob("*.mcap"))
    whole = mcap.stat().st_size
    mcap.write_bytes(mcap.read_bytes()[: int(whole * 0.6)])  # metadata.yaml says whole; the copy stopped at 60%

    assert main(["bag", "info", str(episode)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{mcap} is cut short (no MCAP footer after {int(whole * 0.6)} bytes); `kil bag recover {episode}`" in err
    assert main(["build-dataset", str(episode.parent), *TASK, "--out", str(tmp_path / "ds0")]) == 1
    captured = capsys.readouterr()
    assert "broken   episode_0000: " in captured.out and "is cut short" in captured.out  # nothing else to build from
    assert "(topic names" not in captured.out
    assert "Traceback" not in captured.out + captured.err

    assert main(["bag", "recover", str(episode)]) == 0
    recovered = int(capsys.readouterr().out.split("recovered ")[1].split()[0])
    assert recovered > 100
    assert (episode / f"{mcap.name}.partial").is_file() and (episode / "metadata.yaml.cut").is_file()
    assert read_metadata(episode).status == "recovered"
    assert main(["bag", "info", str(episode)]) == 0
    assert "/joint_states" in capsys.readouterr().out
    assert main(["bag", "recover", str(episode)]) == 0 and "nothing to recover" in capsys.readouterr().out
    assert main(["build-dataset", str(episode.parent), *TASK, "--out", str(tmp_path / "ds1")]) == 1
    assert "excluded episode_0000: recovered from a killed or cut recording" in capsys.readouterr().out
    # The recovered bag builds with --include-unsuccessful. This test is about the bag, not about
    # matching, so the threshold is set: none of the frames' matches counts (a clear refusal)...
    from kil.paths import share_dir

    def features(min_score: float) -> str:
        path = tmp_path / f"features_{min_score}.yaml"
        path.write_text(f"backend: descriptor_net\nweights: {share_dir() / 'config/models/descriptor_net_sim.safetensors'}\n"
                        f"input_size: [360, 480]\nmin_score: {min_score}\n")
        return str(path)

    assert main(["build-dataset", str(episode.parent), *TASK, "--out", str(tmp_path / "ds2"), "--include-unsuccessful",
                 "--features", features(1.0)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("kil build-dataset: error: ") and "no keypoint was visible in any of the" in err and "kil keypoints show" in err
    # ...and every match counts: it builds.
    assert main(["build-dataset", str(episode.parent), *TASK, "--out", str(tmp_path / "ds3"), "--include-unsuccessful",
                 "--features", features(-1.0)]) == 0
    assert len(Store.open(tmp_path / "ds3").read_episode("episode_0000")) > 10


def test_plain_recordings_and_a_labs_own_rig_file(lab, tmp_path, capsys):
    """A bag without kil_episode.yaml needs --rig; a rig file the lab adds (other camera
    topics) is found by name in kil_episode.yaml or given by path."""
    root, _ = lab
    plain = tmp_path / "plain"
    write_episode(plain / "episode_0000", FRANKA, Episode(seed=8, metadata=None))
    assert main(["build-dataset", str(plain), *TASK, "--out", str(tmp_path / "ds0")]) == 1
    assert "no kil_episode.yaml naming the rig it was recorded on; pass --rig" in capsys.readouterr().out
    assert main(["build-dataset", str(plain), *TASK, "--out", str(tmp_path / "ds1"), "--rig", "franka"]) == 0
    assert Store.open(tmp_path / "ds1").episode_names == ["episode_0000"]
    # kil_episode.yaml written by hand, with only what the lab knows: a closed, successful UR5e demonstration
    write_episode(plain / "episode_0001", UR5E, Episode(seed=9, metadata=None))
    (plain / "episode_0001" / "kil_episode.yaml").write_text("rig: ur5e\nsuccess: true\n")
    (plain / "episode_0000" / "kil_episode.yaml").write_text("rig: franka\ntask: pick_place\nsuccess: true\n")
    assert main(["build-dataset", str(plain), *TASK, "--out", str(tmp_path / "ds1b")]) == 0
    assert "from 2 episodes: 2 kept" in capsys.readouterr().out

    rig = yaml.safe_load((Path(__file__).parents[1] / "config" / "rigs" / "franka.yaml").read_text())
    rig["name"] = "mylab"
    rig["camera"].update(image="/cam/color/image_raw", depth="/cam/aligned_depth_to_color/image_raw", camera_info="/cam/color/camera_info")
    rig_file = tmp_path / "mylab.yaml"
    rig_file.write_text(yaml.safe_dump(rig))
    layout = replace(FRANKA, rig="mylab", image="/cam/color/image_raw", depth="/cam/aligned_depth_to_color/image_raw",
                     camera_info="/cam/color/camera_info", depth_encoding="16UC1", depth_stamp_offset_ns=3_000_000)  # a RealSense
    write_episode(tmp_path / "mylab" / "episode_0000", layout, Episode(seed=9))
    assert main(["build-dataset", str(tmp_path / "mylab"), *TASK, "--out", str(tmp_path / "ds2")]) == 1
    assert "kil_episode.yaml names rig 'mylab': rig: unknown rig 'mylab'" in capsys.readouterr().out
    assert main(["build-dataset", str(tmp_path / "mylab"), *TASK, "--out", str(tmp_path / "ds3"), "--rig", str(rig_file)]) == 0
    assert len(Store.open(tmp_path / "ds3").read_episode("episode_0000")) > 20
    # Read with the wrong rig's names, the message says which topic and which rig.
    assert main(["build-dataset", str(tmp_path / "mylab"), *TASK, "--out", str(tmp_path / "ds4"), "--rig", "franka"]) == 1
    out = capsys.readouterr().out
    assert "topic /zed/zed_node/rgb/color/rect/image (/camera image) is not in the bag" in out and "(topic names of rig franka)" in out


def _one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"kil {command}: error: ") and "\n" not in err, err
    assert "Traceback" not in captured.out + captured.err
    return err


def test_setup_errors_come_first_and_in_one_line(lab, tmp_path, capsys):
    root, _ = lab
    episodes = tmp_path / "demos"
    shutil.copytree(root / "episode_0000", episodes / "episode_0000")
    shutil.copytree(root / "episode_0005", episodes / "episode_0005")  # recovered already; untouched by a failed setup
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "exists").mkdir()
    missing_weights = tmp_path / "missing.yaml"
    missing_weights.write_text("backend: descriptor_net\nweights: /nowhere/net.safetensors\n")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    corrupt_weights = tmp_path / "corrupt.yaml"
    corrupt_weights.write_text(f"backend: descriptor_net\nweights: {corrupt}\n")
    cases = [
        (["--out", str(tmp_path / "exists")], "--out: ", "exists already"),
        (["--out", str(a_file / "ds")], "--out: cannot create", "is not a directory"),
        (["--out", str(tmp_path / "ds"), "--graph", str(tmp_path / "nope.yaml")], "nope.yaml", ""),
        (["--out", str(tmp_path / "ds"), "--features", str(missing_weights)], "/nowhere/net.safetensors", ""),
        (["--out", str(tmp_path / "ds"), "--features", str(corrupt_weights)], str(corrupt), ""),
        (["--out", str(tmp_path / "ds"), "--rig", "nosuchrig"], "rig: unknown rig 'nosuchrig'", "franka"),
        (["--out", str(tmp_path / "ds"), "--spec", str(tmp_path / "nospec.yaml")], "nospec.yaml", ""),
        (["--out", str(tmp_path / "ds"), "--lerobot", str(a_file / "lr")], "--lerobot: cannot create", ""),
    ]
    for extra, *expected in cases:
        assert main(["build-dataset", str(episodes), *TASK, *extra]) == 1, extra
        err = _one_line_error(capsys, "build-dataset")
        assert all(e in err for e in expected), (extra, err)
        assert not (tmp_path / "ds").exists() and not (episodes / ".kil_cache").exists(), extra  # no episode was processed


def test_train_eval_and_annotate_errors_are_one_line(built, tmp_path, capsys):
    _, _, _, dataset = built
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("preset: cpu-small\ntraining: {steps: 2, batch_size: 4, checkpoint_every: 2, warmup_steps: 1}\n")
    assert main(["train", "--config", str(tiny), "--dataset", str(dataset), "--out", str(a_file / "run")]) == 1
    assert "--out: cannot create" in _one_line_error(capsys, "train")

    interrupted = tmp_path / "interrupted"  # a build killed after its first episode: no statistics
    store = Store.create(interrupted, dict(Store.open(dataset).attrs, episodes=[], stats={}))
    store.write_episode(Store.open(dataset).read_episode("episode_0000"))
    assert main(["train", "--config", str(tiny), "--dataset", str(interrupted), "--out", str(tmp_path / "run0")]) == 1
    assert "has no normalisation statistics (its build was interrupted)" in _one_line_error(capsys, "train")
    assert not (tmp_path / "run0").exists()

    assert main(["train", "--config", str(tiny), "--dataset", str(dataset), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    checkpoint = next(p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir())
    (checkpoint / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:1000])
    assert main(["eval", "--policy", str(tmp_path / "run"), "--episodes", "1"]) == 1
    assert f"cannot load {checkpoint / 'model.safetensors'}" in _one_line_error(capsys, "eval")

    (tmp_path / "not_an_episode").mkdir()
    assert main(["annotate", "--episode", str(tmp_path / "not_an_episode")]) == 1
    assert "is not a readable episode: not a rosbag2 episode (no metadata.yaml, no .mcap file)" in _one_line_error(capsys, "annotate")


@pytest.mark.parametrize("layout", [FRANKA, UR5E], ids=lambda layout: layout.rig)
def test_frames_depth_holes_and_calibration_read_back(layout, tmp_path):
    """What the drivers wrote: bgra8 colour, 32FC1 depth with NaN / +-inf holes or 16UC1 with
    0 as no reading (every hole stays invalid), the calibration from /tf_static, the state in
    the base frame."""
    from kil.data.builder import recording_graph
    from kil.data.episode_streams import read_streams
    from kil.geometry import pose_to_matrix
    from real_rig_bags import CAMERA_IN_BASE

    episode = tmp_path / "episode_0000"
    truth = write_episode(episode, layout, Episode(seed=3))
    streams = read_streams(episode, recording_graph(layout.rig))
    frame = streams.frames[5]
    rgb, depth = next((rgb, depth) for stamp, rgb, depth in truth["frames"] if stamp == frame.stamp_ns)
    assert frame.rgb.shape == (layout.height, layout.width, 3) and np.array_equal(frame.rgb, rgb)
    valid = np.isfinite(depth) & (depth > 0)
    assert np.array_equal(np.isfinite(frame.depth), valid)  # every hole stays invalid (NaN, or the driver's +-inf)
    tolerance = 0.0005 if layout.depth_encoding == "16UC1" else 0.0  # millimetres
    assert np.abs(frame.depth[valid] - depth[valid]).max() <= tolerance + 1e-6
    assert np.allclose(frame.T_base_camera, pose_to_matrix(*CAMERA_IN_BASE), atol=1e-6)
    assert frame.base_frame_id == layout.base_frame and frame.frame_id == layout.optical_frame
    state_t = (streams.obs_ns[3] - Episode().start_ns) / 1e9
    assert np.abs(streams.ee_position[3] - measured_pose(state_t, layout)[0]).max() < 0.01  # the latest state, <= 20 ms older


def test_joint_states_from_two_publishers(tmp_path):
    """/joint_states with the arm's broadcaster (pose rate, no finger joints) and the gripper's
    node (30 Hz, finger joints only): each pose takes the newest message with the fingers."""
    from kil.data.builder import recording_graph
    from kil.data.episode_streams import read_streams
    from real_rig_bags import measured_gripper

    layout = replace(FRANKA, split_joint_states=True)
    episode = tmp_path / "episode_0000"
    write_episode(episode, layout, Episode(seed=4))
    streams = read_streams(episode, recording_graph("franka"))
    t = (streams.obs_ns - Episode().start_ns) / 1e9
    assert len(t) > 30
    far_from_the_change = np.abs(t - 2.1) > 0.05  # the 30 Hz gripper message may be up to 33 ms old
    expected = np.array([measured_gripper(x) for x in t])
    assert np.allclose(streams.gripper[far_from_the_change], expected[far_from_the_change])


def test_a_rig_file_naming_other_gripper_joints_says_so(tmp_path):
    """A Panda's joint names read with the FR3 rig file: the message names the joints it needs."""
    from kil.data.builder import recording_graph
    from kil.data.episode_streams import read_streams
    from kil.errors import BagError

    layout = replace(FRANKA, gripper_joints=("panda_finger_joint1", "panda_finger_joint2"))
    write_episode(tmp_path / "episode_0000", layout, Episode(seed=5))
    with pytest.raises(BagError, match=r"no complete robot state messages on /franka_robot_state_broadcaster/current_pose \+ /joint_states "
                                       r"\(each pose needs a /joint_states message with the gripper joints \['fr3_finger_joint1', 'fr3_finger_joint2'\]"):
        read_streams(tmp_path / "episode_0000", recording_graph("franka"))
