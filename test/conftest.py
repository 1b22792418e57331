"""Shared pytest setup.

ROS-only and simulator tests are skipped, with the reason, where rclpy (a sourced ROS 2) or
robosuite is missing; with KIL_REQUIRE_ROS=1 (CI) a missing ROS 2 is an error instead.

Every process these tests start that talks DDS inherits this environment: CycloneDDS on
loopback only (the project's config/dds/cyclonedds_loopback.xml) and a ROS domain of this
test run's own, so no traffic leaves the machine and parallel runs never meet.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_RCLPY = importlib.util.find_spec("rclpy") is not None
HAS_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None
HAS_ROBOSUITE = importlib.util.find_spec("robosuite") is not None
HAS_ROS = HAS_RCLPY and HAS_LAUNCH_ROS

os.environ["CYCLONEDDS_URI"] = f"file://{ROOT / 'config' / 'dds' / 'cyclonedds_loopback.xml'}"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = os.environ.get("KIL_TEST_ROS_DOMAIN_ID") or str(random.SystemRandom().randrange(100, 200))


def ros_skip_reason() -> str:
    return os.environ.get("KIL_ROS_SKIP") or "needs ROS 2 (rclpy, launch_ros): source one, or run scripts/test.sh, which finds one"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=ros_skip_reason())
    skip_sim = pytest.mark.skip(reason="needs the simulator: scripts/setup.sh installs kil[sim]")
    wants_ros = any("ros" in item.keywords for item in items)
    if wants_ros and not HAS_ROS and os.environ.get("KIL_REQUIRE_ROS") == "1":
        raise pytest.UsageError(f"KIL_REQUIRE_ROS=1 but the ros tests cannot run: {ros_skip_reason()}")
    for item in items:
        if "ros" in item.keywords and not HAS_ROS:
            item.add_marker(skip)
        if "sim" in item.keywords and not HAS_ROBOSUITE:
            item.add_marker(skip_sim)


# A scene the closed-loop tests replay: a policy overfitted to one demonstration of it drives
# the arm to the block and completes the task from the same start (a few minutes of
# training on 2 cores), which is what the ROS 2 graph tests need to see the loop close.
REPLAY_SEED = 777
REPLAY_TRAINING_STEPS = 3000


@pytest.fixture(scope="session")
def replay_policy(tmp_path_factory):
    """(keypoint policy run, RGB policy run, seed): trained on one scripted pick_place
    demonstration of scene REPLAY_SEED (the RGB one only a few steps: it is started, not judged)."""
    if not HAS_ROBOSUITE:
        pytest.skip("needs the simulator: scripts/setup.sh installs kil[sim]")
    from kil.data.builder import BuildConfig, build_dataset
    from kil.policy.configuration import load_run_config
    from kil.sim.demos import record_episode
    from kil.training.policy import train

    reuse = os.environ.get("KIL_TEST_REPLAY_DIR")  # a developer's shortcut: policies trained by an earlier run
    if reuse and (Path(reuse) / "keypoint_policy").is_dir() and (Path(reuse) / "rgb_policy").is_dir():
        return Path(reuse) / "keypoint_policy", Path(reuse) / "rgb_policy", REPLAY_SEED
    root = tmp_path_factory.mktemp("replay")
    result = record_episode("pick_place", "panda", "in", REPLAY_SEED, root / "demos")
    assert result.success, "the scripted expert failed its demonstration"
    build_dataset(root / "demos", root / "dataset", BuildConfig(task="pick_place", images=(24, 32)))
    keypoint = root / "keypoint.yaml"
    keypoint.write_text(f"preset: cpu-small\ntraining: {{steps: {REPLAY_TRAINING_STEPS}, batch_size: 64, lr: 1.0e-3, "
                        f"checkpoint_every: {REPLAY_TRAINING_STEPS}, warmup_steps: 20}}\n")
    train(load_run_config(keypoint), root / "dataset", root / "keypoint_policy")
    rgb = root / "rgb.yaml"
    rgb.write_text("preset: rgb\npolicy: {unet_channels: [16, 32], diffusion_step_embed: 16, image_size: [24, 32]}\n"
                   "training: {steps: 2, batch_size: 4, checkpoint_every: 2, warmup_steps: 1}\n")
    train(load_run_config(rgb), root / "dataset", root / "rgb_policy")
    return root / "keypoint_policy", root / "rgb_policy", REPLAY_SEED
