"""The `kil` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kil.cli import COMMANDS, main
from kil.data.bag import EpisodeReader

REQUIRED = ("run", "record", "sim", "annotate", "build-dataset", "train", "eval", "bench", "models")


def kil(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kil", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand():
    result = kil("--help")
    assert result.returncode == 0
    for name in REQUIRED:
        assert f"    {name}" in result.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert COMMANDS[name][1] in " ".join(capsys.readouterr().out.split())


def test_import_kil_does_not_import_rclpy():
    subprocess.run([sys.executable, "-c", "import kil, sys; assert 'rclpy' not in sys.modules"], check=True)


def test_run_records_an_episode(tmp_path):
    episode = tmp_path / "episode_0000"
    result = kil("run", "--graph", "synthetic_record", "--duration", "1", "--set", f"recorder.path={episode}", "--set", "rig.width=32", "--set", "rig.height=24")
    assert result.returncode == 0, result.stderr
    assert "/camera" in result.stdout and "ran for 1 s" in result.stdout
    topics = EpisodeReader(episode).topics()
    assert topics["/camera/image"] == ("sensor_msgs/msg/Image", 14)  # 15 Hz for 1 s, first frame after one period
    assert topics["/robot/ee_pose"] == ("geometry_msgs/msg/PoseStamped", 30)
    info = kil("bag", "info", str(episode))
    assert info.returncode == 0 and "/joint_states" in info.stdout and "'status': 'complete'" in info.stdout


def test_bad_input_is_one_line_with_exit_1(tmp_path):
    result = kil("run", "--graph", "synthetic_record", "--duration", "1", "--set", "rig.camera_rate_hz=fast")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "nodes.rig.params.camera_rate_hz: expected float, got 'fast'" in result.stderr
    endless = kil("run", "--graph", "synthetic_record")
    assert endless.returncode == 1 and "--duration: required with the stepped clock" in endless.stderr
    missing = kil("run", "--graph", str(tmp_path / "nope.yaml"), "--duration", "1")
    assert missing.returncode == 1 and "nope.yaml: cannot read" in missing.stderr


def test_models_list_shows_every_backend_and_its_weights():
    result = kil("models", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("descriptor_net", "dift", "dinov2", "dinov3", "radio", "sam", "sift"):
        assert any(line.startswith(f"│ {name} ") for line in lines), name
    assert any("descriptor_net_sim.safetensors" in line and "yes" in line for line in lines)  # shipped
    assert any(line.startswith("│ sift ") and "no weights" not in line and "yes" in line for line in lines)
    segmenters = lines[next(i for i, line in enumerate(lines) if "segmentation backends" in line):]
    for name in ("depth_colour", "sam", "sam2", "sam3"):
        assert any(line.startswith(f"│ {name} ") for line in segmenters), name
    assert any(line.startswith("│ depth_colour ") and "yes" in line for line in segmenters)  # needs no weights


def test_keypoints_show_writes_a_png(tmp_path):
    episode = tmp_path / "episode_0000"
    assert kil("run", "--graph", "synthetic_record", "--duration", "1", "--set", f"recorder.path={episode}").returncode == 0
    out = tmp_path / "kp.png"
    result = kil("keypoints", "show", "--episode", str(episode), "--spec", "pick_place", "--model", "sift", "--frames", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(out).size == (2 * 320, 240)  # the synthetic rig's 320x240 camera, two frames
    missing = kil("keypoints", "show", "--episode", str(tmp_path / "none"), "--out", str(out))
    assert missing.returncode == 1 and "--episode: " in missing.stderr and missing.stderr.count("\n") == 1


def test_features_train_refuses_a_wrong_output_name(tmp_path):
    result = kil("features", "train", "--out", str(tmp_path / "net.pt"))
    assert result.returncode == 1 and "--out: expected a .safetensors file" in result.stderr


def test_train_and_build_dataset_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("preset: cpu-small\ntraining: {stepz: 3}\n")
    assert main(["train", "--config", str(config), "--dataset", str(tmp_path), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "c.yaml: training.stepz: unknown key" in err
    assert main(["train", "--config", "cpu-small", "--dataset", str(tmp_path), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a kil training store" in err
    assert main(["train", "--config", "cpu-small"]) != 0
    assert "--dataset, --out required" in capsys.readouterr().err
    assert main(["build-dataset", str(tmp_path / "nowhere"), "--task", "pick_place", "--out", str(tmp_path / "ds")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nowhere is not a directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["build-dataset", str(tmp_path / "empty"), "--task", "pick_place", "--out", str(tmp_path / "ds")]) != 0
    assert "no rosbag2 episodes" in capsys.readouterr().err
    assert main(["build-dataset", str(tmp_path / "empty"), "--task", "pick_place", "--out", str(tmp_path / "ds"), "--images", "big"]) != 0
    assert "--images: expected HEIGHTxWIDTH" in capsys.readouterr().err


def test_keypoint_bench_and_calibration_on_simulated_frames(tmp_path):
    """`kil bench keypoints` prints per variation and keypoint the error tails and the
    visibility figures; `kil keypoints calibrate --write` stores a threshold in the model's
    config, which the bench then uses."""
    config = tmp_path / "net_copy.yaml"
    weights = Path(__file__).resolve().parents[1] / "config" / "models" / "descriptor_net_sim.safetensors"
    config.write_text(f"# a copy of the descriptor net\nbackend: descriptor_net\nweights: {weights}\ninput_size: [240, 320]\n")
    calibrate = kil("keypoints", "calibrate", "--model", str(config), "--tasks", "pick_place", "--variations", "in",
                    "--frames", "3", "--precision", "0.5", "--write")
    assert calibrate.returncode == 0, calibrate.stderr
    assert "hidden keypoints" in calibrate.stdout and "wrote min_score" in calibrate.stdout
    written = config.read_text()
    assert written.startswith("# a copy of the descriptor net") and "min_score: " in written
    assert float(written.split("min_score: ")[1].split()[0]) > -1  # a threshold that flags, not "nothing by score"
    bench = kil("bench", "keypoints", "--backends", str(config), "--tasks", "pick_place", "--variations", "in,scene", "--frames", "3")
    assert bench.returncode == 0, bench.stderr
    out = bench.stdout
    assert "px median / p90 / max" in out and "precision" in out and "block/top_center" in out and "tray/corner" in out
    threshold = float(written.split("min_score: ")[1].split()[0])
    assert f"min_score {threshold:.3f}" in " ".join(out.split())


def test_calibration_that_reaches_no_precision_leaves_the_model_config_as_it_was(tmp_path, monkeypatch, capsys):
    """Where no threshold reaches the asked precision, `--write` is a one-line error and the
    config keeps its min_score (writing -1 would switch the score rule off)."""
    import kil.perception.calibration as calibration

    config = tmp_path / "sift_copy.yaml"
    config.write_text("backend: sift\ninput_size: [240, 320]\nmin_score: 0.5  # as calibrated before\n")
    monkeypatch.setattr(calibration, "calibrate_min_score",
                        lambda *args: calibration.Calibration(-1.0, 0.6, 0.0, 10, 50, reached=False))
    code = main(["keypoints", "calibrate", "--model", str(config), "--tasks", "pick_place", "--variations", "in", "--frames", "1", "--write"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "no min_score reaches 90% precision" in err and str(config) in err
    assert config.read_text() == "backend: sift\ninput_size: [240, 320]\nmin_score: 0.5  # as calibrated before\n"


def test_keypoint_bench_runs_recorded_episodes_in_order(tmp_path):
    """`kil bench keypoints --episodes DIR` runs a recorded sim episode's frames in order
    against the ground truth recorded beside them, with object permanence and without, by
    image matching (also with rigid objects), instance matching and tracking, each timed;
    with a spec that has views, also by the reference images alone and with the views searched in every frame (not only
    for an object's first sighting); a directory without episodes is a one-line error."""
    episodes = tmp_path / "demos"
    assert main(["record", "--rig", "sim", "--teleop", "expert", "--variation", "scene", "--episodes", "1", "--camera-rate", "10",
                 "--seed", "5", "--out", str(episodes)]) == 0
    assert main(["sim", "reference", "--task", "pick_place", "--out", str(tmp_path / "spec"), "--views", "2"]) == 0
    bench = kil("bench", "keypoints", "--backends", "descriptor_net", "--episodes", str(episodes), "--extractions", "im,in,t",
                "--spec", str(tmp_path / "spec"), timeout=600)
    assert bench.returncode == 0, bench.stderr
    out = " ".join(bench.stdout.split())
    assert "image matching (IM), in order, object permanence" in out and "image matching (IM), each frame on its own" in out
    assert "instance matching (IN, depth_colour), in order" in out and "tracking (T, lucas_kanade from IM), in order" in out
    assert "image matching (IM), in order, object permanence, reference images alone (no views)" in out
    assert "image matching (IM), in order, object permanence, views searched in every frame" in out
    assert "image matching (IM), in order, object permanence, rigid objects (1.5 cm)" in out
    assert out.count("block/top_center") == 7 and "scene" in out and "recall" in out
    assert len(re.findall(r"detection per frame \d+ / \d+ / \d+ ms", out)) == 7
    shipped = kil("bench", "keypoints", "--backends", "descriptor_net", "--episodes", str(episodes), timeout=600)  # the task's spec: no views
    assert shipped.returncode == 0, shipped.stderr
    out = " ".join(shipped.stdout.split())
    assert "in order, object permanence;" in out and "each frame on its own" in out and "no views" not in out
    assert out.count("block/top_center") == 3 and "rigid objects" in out and "views searched" not in out
    (tmp_path / "empty").mkdir()
    empty = kil("bench", "keypoints", "--episodes", str(tmp_path / "empty"))
    assert empty.returncode != 0 and "--episodes: no episode_* directories" in empty.stderr


def test_match_bench_compares_thread_settings():
    result = kil("bench", "match", "--channels", "16", "--keypoints", "3", "--repeats", "3", "--no-backends")
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "1 (default)" in out or "2 (default)" in out
    assert out.count("fast") >= 6 and "naive" in out and "low-rank" in out


@pytest.mark.slow
def test_variations_bench_runs_both_policies_and_continues_where_it_stopped(tmp_path):
    """The central-result suite end to end at toy sizes, as two processes started together
    (one per policy, one thread each): the demonstrations and the dataset with keypoints and
    images are made once, a keypoint and an RGB policy trained for the same steps, closed
    loop on two variations; a later call reruns only an episode whose log line was cut, and
    prints the side-by-side table."""
    import os

    args = ("bench", "variations", "--out", str(tmp_path), "--demos", "1", "--episodes", "1", "--variations", "in,scene",
            "--steps", "4", "--time-limit", "1", "--demo-miss-rate", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {kind: subprocess.Popen([sys.executable, "-m", "kil", *args, "--policies", policies], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for kind, policies in (("keypoint", "keypoint"), ("rgb", "rgb,keypoint_t"))}
    outs = {}
    for kind, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
        outs[kind] = " ".join(stdout.split())
    both = outs["keypoint"] + outs["rgb"]
    assert both.count("$ kil sim demos") == 1 and both.count("$ kil build-dataset") == 2  # made once, waited for; and dataset_t
    assert "--miss-rate 1.0" in both and "samples of 1 marked not to imitate" in both  # the aimed-off pick is no label
    assert "kil train --config cpu-small" in outs["keypoint"] and "rgb-cpu-small" not in outs["keypoint"]
    assert "kil train --config rgb-cpu-small" in outs["rgb"]
    from kil.data.store import Store

    # Table II: a keypoint policy (cpu-small) on keypoints found by tracking, from its own dataset
    assert "--extraction t" in outs["rgb"] and f"--config cpu-small --dataset {tmp_path / 'dataset_t'}" in outs["rgb"]
    assert Store.open(tmp_path / "dataset_t").attrs["tracker"] == "lucas_kanade"

    store = Store.open(tmp_path / "dataset").require_complete()
    assert store.read_episode(store.episode_names[0]).rgb.shape[1:] == (72, 96, 3)  # the rgb-cpu-small input size
    log = tmp_path / "episodes_rgb.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and len((tmp_path / "episodes_keypoint.jsonl").read_text().splitlines()) == 2
    log.write_text(lines[0] + "\n" + lines[1][:10])  # stopped while the last episode's line was written
    again = subprocess.run([sys.executable, "-m", "kil", *args, "--policies", "rgb"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "$ kil" not in again.stdout
    again_out = " ".join(again.stdout.split())
    assert "rgb policy: 1 closed-loop episodes to run (1 done before)" in again_out and "keypoint policy:" not in again_out
    assert len(log.read_text().splitlines()) == 2 and all(json.loads(line)["seed"] for line in log.read_text().splitlines())
    table = again.stdout[again.stdout.index("keypoint success"):]
    assert "rgb success" in table and "keypoint T success" in table and "│ in " in table and "│ scene " in table
    assert "keypoint IN" not in table  # neither trained nor logged: no column
    assert table.count("/1 = ") == 6 and "so far" not in table and "(colour images)" in table
    assert "100% of first picks aimed off, then recovered" in again_out
    other = subprocess.run([sys.executable, "-m", "kil", *args[:-2], "--policies", "rgb"], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "recorded with demo_miss_rate 1.0" in other.stderr and "asks for 0.0" in other.stderr
