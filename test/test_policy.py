"""The keypoint diffusion policy: shapes, normalisation, augmentation consistency, training
on a tiny store (overfitting, checkpoints, exact resume), inference options, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kil.data.store import EpisodeData, Store
from kil.errors import ConfigError
from kil.policy.augment import augment, rigid_transform, yaw_matrices
from kil.policy.batch import Codec, Encoded, SampleBank
from kil.policy.configuration import AugmentConfig, EncoderConfig, PolicyConfig, RunConfig, TrainingConfig, load_run_config
from kil.policy.modeling import build_policy
from kil.policy.rotation import quat_to_rot6d

N_KEYPOINTS = 3
NO_AUGMENT = AugmentConfig(keypoint_noise_m=0, ee_noise_m=0, ee_noise_rad=0, shift_m=0, yaw_rad=0)
TINY_POLICY = PolicyConfig(encoder=EncoderConfig(d_model=32, layers=1, heads=2, mlp=64), unet_channels=(64, 128),
                           diffusion_step_embed=32, horizon=8, n_action_steps=4, inference_steps=10)


def synthetic_episode(name: str, seed: int, T: int = 30, horizon: int = 8) -> EpisodeData:
    """An EE moving in a straight line from its start towards the first keypoint (the
    object), gripper closing at the end: actions are a function of the observation."""
    rng = np.random.default_rng(seed)
    target = np.array([0.45, 0.0, 0.0]) + rng.uniform(-0.1, 0.1, 3) * [1, 1, 0]
    start = np.array([0.5, 0.0, 0.25])
    s = np.linspace(0, 1, T + horizon)
    path = start + (target - start) * s[:, None]
    grip = np.where(s > 0.8, 0.0, 0.08)
    down = np.array([1.0, 0.0, 0.0, 0.0])  # 180° about x: the gripper points down
    keypoints = np.stack([target, target + [0.03, 0, 0], [0.6, 0.2, 0.0]])
    action = np.stack([np.concatenate([path[t: t + horizon], np.tile(quat_to_rot6d(down), (horizon, 1)), grip[t: t + horizon, None]], -1)
                       for t in range(T)])
    visible = np.ones((T, N_KEYPOINTS), bool)
    visible[::7, 2] = False  # now and then a keypoint is not seen
    kp = np.where(visible[..., None], np.broadcast_to(keypoints, (T, N_KEYPOINTS, 3)), np.nan)
    return EpisodeData(
        name=name, stamp_ns=np.arange(T, dtype=np.int64) * 100_000_000, keypoints=kp.astype(np.float32), visible=visible,
        score=np.ones((T, N_KEYPOINTS), np.float32), ee_position=path[:T].astype(np.float32),
        ee_orientation=np.tile(down, (T, 1)).astype(np.float32), gripper=grip[:T].astype(np.float32), action=action.astype(np.float32),
    )


def make_store(path, episodes: int):
    from kil.data.store import field_stats

    store = Store.create(path, {"task": "pick_place", "keypoint_names": ["block/a", "block/b", "tray/c"],
                                "keypoint_instance": [0, 0, 1], "keypoint_source": "oracle", "feature_model": None,
                                "rate_hz": 10.0, "horizon": 8, "episodes": []})
    for i in range(episodes):
        store.write_episode(synthetic_episode(f"episode_{i:04d}", i))
    if episodes:
        store.set_stats(field_stats(store.episodes()))
    return path


@pytest.fixture
def tiny_store(tmp_path):
    return make_store(tmp_path / "ds", 3)


def _bank_and_codec(store_path, config=TINY_POLICY):
    bank = SampleBank(Store.open(store_path).episodes(), config.n_obs_steps, config.horizon)
    return bank, Codec.fit(config, [bank.batch(torch.arange(len(bank)))])


def test_store_round_trip_and_stats(tiny_store):
    store = Store.open(tiny_store)
    assert store.episode_names == ["episode_0000", "episode_0001", "episode_0002"]
    e = store.read_episode("episode_0001")
    ref = synthetic_episode("episode_0001", 1)
    np.testing.assert_array_equal(e.action, ref.action)
    np.testing.assert_array_equal(np.isnan(e.keypoints), ~ref.visible[..., None].repeat(3, -1))
    stats = store.stats
    assert set(stats) == {"keypoints", "ee_position", "ee_euler", "ee_rot6d", "gripper", "action"}
    assert len(stats["action"]["min"]) == 10 and stats["gripper"]["max"] == [pytest.approx(0.08)]
    with pytest.raises(ConfigError, match="exists already"):
        Store.create(tiny_store, {})


def test_shapes_and_normalisation_round_trip(tiny_store):
    bank, codec = _bank_and_codec(tiny_store)
    raw = bank.batch(torch.arange(len(bank)))
    enc = codec.encode(raw)
    B = len(bank)
    assert enc.keypoints.shape == (B, 2, N_KEYPOINTS, 3) and enc.mask.shape == (B, 2, N_KEYPOINTS)
    assert enc.proprio.shape == (B, 2, 10) and enc.action.shape == (B, 8, 10)
    assert enc.action.min() >= -1 - 1e-5 and enc.action.max() <= 1 + 1e-5
    assert (enc.keypoints[~enc.mask] == 0).all()  # invisible keypoints carry nothing
    decoded = codec.decode_actions(enc.action, raw)
    torch.testing.assert_close(decoded["position"], raw["action_position"], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded["rotation"], raw["action_rotation"], atol=1e-5, rtol=0)
    torch.testing.assert_close(decoded["gripper"], raw["action_gripper"], atol=1e-6, rtol=0)
    # The first sample's history repeats the episode's first observation.
    torch.testing.assert_close(raw["ee_position"][0, 0], raw["ee_position"][0, 1])
    model = build_policy(TINY_POLICY, N_KEYPOINTS, codec.proprio_dim)
    cond = model.condition(enc.rows(slice(0, 4)))
    assert model.sample(cond, torch.Generator().manual_seed(0)).shape == (4, 8, 10)
    euler = Codec(PolicyConfig(proprio_rotation="euler"), codec.normalizer)
    assert euler.proprio_dim == 7 and euler.raw_fields(raw)["proprio"].shape == (B, 2, 7)


@pytest.mark.parametrize("pooling", ["mean", "cls_max"])
def test_encoder_ignores_masked_keypoints(pooling):
    config = PolicyConfig(encoder=EncoderConfig(d_model=32, layers=2, heads=2, mlp=64, pooling=pooling))
    model = build_policy(config, 4, 10).eval()
    kp, proprio = torch.randn(1, 4, 3), torch.randn(1, 10)
    mask = torch.tensor([[True, True, False, True]])
    other = kp.clone()
    other[0, 2] = 100.0  # whatever a hidden keypoint holds does not matter
    a, b = model.encoder(Encoded(kp, mask, proprio)), model.encoder(Encoded(other, mask, proprio))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, model.encoder(Encoded(kp, torch.ones_like(mask), proprio)))


def test_no_encoder_ablation_concatenates_keypoints_and_state():
    config = PolicyConfig(encoder=EncoderConfig(use=False), unet_channels=(32, 64), horizon=8)
    model = build_policy(config, 5, 10)
    assert model.encoder.out_dim == 5 * 4 + 10
    cond = model.condition(Encoded(torch.randn(2, 2, 5, 3), torch.ones(2, 2, 5, dtype=torch.bool), torch.randn(2, 2, 10)))
    assert cond.shape == (2, 2 * 30)


def _relative_geometry(raw):
    """Everything a rigid motion preserves: actions and keypoints seen from the newest EE pose."""
    R = raw["ee_rotation"][:, -1]
    p = raw["ee_position"][:, -1]
    Rt = R.transpose(-1, -2)
    return {
        "action_position": ((raw["action_position"] - p[:, None]) @ R),
        "action_rotation": Rt[:, None] @ raw["action_rotation"],
        "keypoints": ((raw["keypoints"] - p[:, None, None]) @ R[:, None]) * raw["visible"][..., None],
        "older_ee": (raw["ee_position"] - p[:, None]) @ R,
    }


def test_augmentation_moves_observations_and_actions_consistently(tiny_store):
    bank, _ = _bank_and_codec(tiny_store)
    raw = bank.batch(torch.arange(len(bank)))
    raw = {k: v.double() if v.is_floating_point() else v for k, v in raw.items()}
    spatial = AugmentConfig(keypoint_noise_m=0, ee_noise_m=0, ee_noise_rad=0, shift_m=0.1, yaw_rad=0.5)
    moved = augment(raw, spatial, torch.Generator().manual_seed(3))
    assert (moved["ee_position"] - raw["ee_position"]).norm(dim=-1).min() > 1e-4  # it did move every sample
    before, after = _relative_geometry(raw), _relative_geometry(moved)
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-9, rtol=0)
    # Rotations stay rotations, and only about z: the gripper's tilt is unchanged.
    R = moved["action_rotation"]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-9, rtol=0)
    torch.testing.assert_close(R[..., 2, :], raw["action_rotation"][..., 2, :], atol=1e-9, rtol=0)
    assert (moved["keypoints"][~moved["visible"]] == 0).all()
    # An explicit yaw of 90° about the centre maps (c + d) to (c + Rz d), plus the shift.
    centre = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    one = {k: v[:1] for k, v in raw.items()}
    turned = rigid_transform(one, yaw_matrices(torch.tensor([np.pi / 2], dtype=torch.float64)), centre, torch.tensor([[0.0, 0.0, 0.1]], dtype=torch.float64))
    d = one["ee_position"][0, -1] - centre
    torch.testing.assert_close(turned["ee_position"][0, -1], centre + torch.stack([-d[1], d[0], d[2]]) + torch.tensor([0, 0, 0.1], dtype=torch.float64))
    # Noise touches observations only, never the actions.
    noisy = augment(raw, AugmentConfig(shift_m=0, yaw_rad=0, keypoint_dropout=0.3), torch.Generator().manual_seed(4))
    assert torch.equal(noisy["action_position"], raw["action_position"]) and torch.equal(noisy["action_rotation"], raw["action_rotation"])
    assert not torch.equal(noisy["ee_position"], raw["ee_position"])
    assert (noisy["visible"] <= raw["visible"]).all() and (noisy["visible"] < raw["visible"]).any()


def _run_config(steps: int, **training) -> RunConfig:
    return RunConfig(policy=TINY_POLICY, training=TrainingConfig(steps=steps, batch_size=32, lr=2e-3, warmup_steps=20,
                                                                 checkpoint_every=steps, log_every=10, augment=NO_AUGMENT, **training))


def test_policy_overfits_a_tiny_dataset(tmp_path):
    from dataclasses import replace

    from kil.policy.inference import Policy
    from kil.training.policy import train

    torch.set_num_threads(2)
    store = make_store(tmp_path / "ds", 2)
    run = _run_config(1000)
    result = train(replace(run, training=replace(run.training, batch_size=64)), store, tmp_path / "run")
    assert result.final_loss < 0.03
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "loss.csv").read_text().count("\n") == 1001
    assert any((tmp_path / "run" / "tb").iterdir())
    policy = Policy.load(tmp_path / "run")
    bank, _ = _bank_and_codec(store)
    T = len(bank) // 2
    position_error, gripper_error, own_episode = [], [], []
    for index in range(len(bank)):
        raw = bank.batch(torch.tensor([index]))
        predicted = policy.predict_raw({k: v for k, v in raw.items() if not k.startswith("action")}, seed=index)
        position_error.append(float((predicted["position"] - raw["action_position"][0]).norm(dim=-1).max()))
        gripper_error.append(float((predicted["gripper"] - raw["action_gripper"][0]).abs().median()))
        # The same moment of the other demonstration (another object position): the policy
        # must follow the keypoints, not an average of the demonstrations.
        other = bank.batch(torch.tensor([(index + T) % len(bank)]))["action_position"][0]
        own_episode.append(float((predicted["position"] - raw["action_position"][0]).norm(dim=-1).mean())
                           < float((predicted["position"] - other).norm(dim=-1).mean()))
    assert np.median(position_error) < 0.02, np.median(position_error)  # metres, worst waypoint of a chunk
    assert np.median(gripper_error) < 0.01
    assert np.mean(own_episode) > 0.9


def test_checkpoint_reload_and_resume_are_exact(tiny_store, tmp_path):
    from dataclasses import replace

    from kil.policy.inference import Policy
    from kil.training.policy import resume, train

    import shutil

    run = _run_config(40)
    train(replace(run, training=replace(run.training, checkpoint_every=20)), tiny_store, tmp_path / "straight")
    # A run stopped after its step-20 checkpoint (as if killed), then resumed.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "0000040")
    (tmp_path / "resumed" / "latest").write_text("checkpoints/0000020\n")
    resume(tmp_path / "resumed")
    a, b = Policy.load(tmp_path / "straight"), Policy.load(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    bank, _ = _bank_and_codec(tiny_store)
    raw = {k: v for k, v in bank.batch(torch.tensor([5])).items() if not k.startswith("action")}
    for policy in (a.with_options(ensemble=4), a):
        again = Policy.load(tmp_path / "straight").with_options(ensemble=policy.config.ensemble)
        first, second = policy.predict_raw(raw, seed=7), again.predict_raw(raw, seed=7)
        for key in first:
            assert torch.equal(first[key], second[key])
    assert not torch.equal(a.predict_raw(raw, seed=7)["position"], a.predict_raw(raw, seed=8)["position"])
    with pytest.raises(ConfigError, match="not empty"):
        train(_run_config(20), tiny_store, tmp_path / "straight")


def test_the_policy_is_saved_with_averaged_weights(tiny_store, tmp_path):
    """The checkpoint's policy holds the moving average; the weights training goes on from are
    in the training state and are those of a run without an average, step for step."""
    from dataclasses import replace

    from kil.policy.inference import Policy
    from kil.training.policy import STATE_FILE, train

    run = _run_config(30)
    train(replace(run, training=replace(run.training, ema=False)), tiny_store, tmp_path / "plain")
    train(run, tiny_store, tmp_path / "averaged")
    plain, averaged = Policy.load(tmp_path / "plain").model.state_dict(), Policy.load(tmp_path / "averaged").model.state_dict()
    trained = torch.load(tmp_path / "averaged" / "checkpoints" / "0000030" / STATE_FILE, weights_only=True)["model"]
    for name, weights in plain.items():
        assert torch.equal(trained[name], weights), name
    moved = [name for name, weights in plain.items() if weights.is_floating_point() and not torch.equal(averaged[name], weights)]
    assert len(moved) > len(plain) // 2


def test_fast_inference_matches_the_reference_loop(tiny_store, tmp_path):
    from kil.bench.policy import reference_predict
    from kil.policy.inference import Policy
    from kil.training.policy import train

    train(_run_config(10), tiny_store, tmp_path / "run")
    bank, _ = _bank_and_codec(tiny_store)
    raw = {k: v for k, v in bank.batch(torch.tensor([3])).items() if not k.startswith("action")}
    for ensemble in (1, 5):
        policy = Policy.load(tmp_path / "run").with_options(ensemble=ensemble)
        fast = policy.predict_raw(raw, seed=2)["position"]
        slow = policy.codec.decode_actions(reference_predict(policy, raw, seed=2).detach(), raw)["position"][0]
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_predict_returns_a_stamped_chunk(tiny_store, tmp_path):
    from kil.msgs import Keypoints, RobotState
    from kil.policy.inference import Observation, Policy
    from kil.training.policy import train

    train(_run_config(10), tiny_store, tmp_path / "run")
    policy = Policy.load(tmp_path / "run")
    e = synthetic_episode("x", 0)
    names = ("block/a", "block/b", "tray/c")

    def observation(t):
        kp = Keypoints(stamp_ns=int(e.stamp_ns[t]) + 5, frame_id="base_link", names=names, uv=np.zeros((3, 2)),
                       xyz=np.nan_to_num(e.keypoints[t]), score=e.score[t], visible=e.visible[t])
        state = RobotState(stamp_ns=int(e.stamp_ns[t]), frame_id="base_link", position=e.ee_position[t],
                           orientation=e.ee_orientation[t], gripper=float(e.gripper[t]))
        return Observation(kp, state)

    chunk = policy.predict([observation(0), observation(1)], seed=0)
    assert chunk.stamp_ns == int(e.stamp_ns[1]) + 5 and chunk.dt == pytest.approx(0.1) and chunk.frame_id == "base_link"
    assert chunk.positions.shape == (4, 3) and chunk.orientations.shape == (4, 4)
    assert len(policy.predict([observation(0)], steps=8).positions) == 8  # a short history is padded
    wrong = Observation(Keypoints(stamp_ns=1, frame_id="base_link", names=("a", "b", "c"), uv=np.zeros((3, 2)), xyz=np.zeros((3, 3)),
                                  score=np.ones(3), visible=np.ones(3, bool)), observation(0).state)
    with pytest.raises(ValueError, match="not the ones the policy was trained on"):
        policy.predict([wrong])


def test_run_configs_and_presets(tmp_path):
    small = load_run_config("cpu-small")
    assert small.policy.unet_channels != PolicyConfig().unet_channels and small.training.batch_size == 128
    paper = load_run_config("paper")
    assert paper.policy.unet_channels == (128, 256, 512) and paper.policy.kernel_size == 5
    assert (paper.policy.train_steps, paper.policy.inference_steps, paper.policy.horizon, paper.policy.n_action_steps) == (100, 14, 16, 8)
    path = tmp_path / "c.yaml"
    path.write_text("preset: cpu-small\ntraining: {steps: 10, augment: {yaw_rad: 0.1}}\n")
    config = load_run_config(path)
    assert config.training.steps == 10 and config.training.augment.yaw_rad == 0.1 and config.policy == small.policy
    path.write_text("preset: cpu-small\ntraining: {stepz: 10}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: training.*stepz"):
        load_run_config(path)
    path.write_text("policy: {horizon: 10}\n")
    with pytest.raises(ConfigError, match="horizon"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_run_config("gpu-huge")


def _tiny_spec(directory):
    """A spec naming the tiny store's keypoints (block/a, block/b, tray/c) on a blank image,
    block/a also on a view."""
    from PIL import Image

    from kil.perception.spec import Category, KeypointSpec, Reference, View, save_spec

    directory.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48)).save(directory / "ref.png")
    Image.new("RGB", (64, 48), (9, 9, 9)).save(directory / "view.png")
    return save_spec(KeypointSpec("pick_place", [
        Category("block", "block", [Reference("ref.png", {"a": (10.0, 10.0), "b": (20.0, 10.0)}, [View("view.png", {"a": (30.0, 20.0)})])]),
        Category("tray", "tray", [Reference("ref.png", {"c": (40.0, 30.0)})]),
    ]), directory)


def test_gumbel_gate_learns_which_keypoints_matter():
    from kil.policy.selection import KeypointGate

    gate = KeypointGate(3, tau=1.0, init_keep=0.0)
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        m = gate.sample(64, generator)
        assert set(m.unique().tolist()) <= {0.0, 1.0}  # hard masks in the forward pass
        # Keypoint 0 is needed (dropping it costs), keypoint 1 hurts when kept, keypoint 2 is
        # irrelevant: only the sparsity penalty acts on it.
        task = ((1 - m[:, 0]) + m[:, 1]).mean()
        loss = task + 0.05 * gate.sparsity()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    p = gate.keep_probability()
    assert p[0] > 0.9 and p[1] < 0.1 and p[2] < 0.5
    assert gate.selected().tolist() == [True, False, False]


def test_atk_selection_trains_jointly_and_writes_the_spec(tmp_path):
    from kil.perception.spec import load_spec
    from kil.policy.inference import Policy
    from kil.training.selection import CANDIDATES_FILE, select_keypoints

    spec_file = _tiny_spec(tmp_path / "spec")
    before = spec_file.read_bytes()
    store = make_store(tmp_path / "ds", 2)
    Store(__import__("zarr").open_group(str(store), mode="r+"), store).root.attrs["spec"] = str(spec_file)
    config = tmp_path / "select.yaml"
    config.write_text(
        "policy: {encoder: {d_model: 32, layers: 1, heads: 2, mlp: 64}, unet_channels: [32, 64], diffusion_step_embed: 32,\n"
        "         horizon: 8, n_action_steps: 4, inference_steps: 5, selection: {enabled: true, init_keep: 4.0}}\n"
        "training: {steps: 30, batch_size: 16, warmup_steps: 5, checkpoint_every: 30}\n")
    # Far too strong a penalty: every keypoint goes, which is refused; the spec is untouched.
    with pytest.raises(ConfigError, match="dropped every keypoint"):
        select_keypoints(config, store, tmp_path / "run_strong", {"policy": {"selection": {"sparsity": 50.0, "init_keep": 0.5}},
                                                                   "training": {"lr": 0.05}})
    assert spec_file.read_bytes() == before and not (tmp_path / "spec" / CANDIDATES_FILE).exists()

    result = select_keypoints(config, store, tmp_path / "run", {"policy": {"selection": {"sparsity": 0.0}}})
    assert result.selected == ["block/a", "block/b", "tray/c"] and min(result.keep_probability.values()) > 0.9
    assert load_spec(tmp_path / "spec").layout().names == tuple(result.selected)
    assert (tmp_path / "spec" / CANDIDATES_FILE).read_bytes() == before  # the candidates are kept

    # Written elsewhere, with the reference image beside it; a subset keeps only its points.
    loaded = load_spec(tmp_path / "spec")
    subset = loaded.subset(["block/b"])
    assert [c.name for c in subset.categories] == ["block"] and list(subset.categories[0].references[0].keypoints) == ["b"]
    with pytest.raises(ConfigError, match="no keypoint of the spec is selected"):
        loaded.subset([])

    # At inference the policy sees exactly its selected keypoints: with one deselected, moving
    # that keypoint changes nothing.
    policy = Policy.load(tmp_path / "run")
    with torch.no_grad():
        policy.model.gate.logits[2] = torch.tensor([-5.0, 5.0])
    bank, _ = _bank_and_codec(store)
    raw = {k: v for k, v in bank.batch(torch.tensor([4])).items() if not k.startswith("action")}
    moved = dict(raw, keypoints=raw["keypoints"].clone())
    moved["keypoints"][..., 2, :] += 0.3
    assert torch.equal(policy.predict_raw(raw, seed=1)["position"], policy.predict_raw(moved, seed=1)["position"])
    moved["keypoints"][..., 0, :] += 0.3
    assert not torch.equal(policy.predict_raw(raw, seed=1)["position"], policy.predict_raw(moved, seed=1)["position"])


def test_atk_selection_never_writes_a_task_spec_installed_with_kil(tmp_path, monkeypatch):
    """A dataset built with a task's installed spec (recorded by task name): the selected
    spec goes to the run directory, and the installed spec is left as it was, with no
    candidates file beside it."""
    import kil.perception.spec as spec_module
    from kil.perception.spec import load_spec
    from kil.training.selection import CANDIDATES_FILE, select_keypoints

    monkeypatch.setattr(spec_module, "share_dir", lambda: tmp_path / "share")
    installed = _tiny_spec(tmp_path / "share" / "config" / "tasks" / "tiny")
    before = installed.read_bytes()
    store = make_store(tmp_path / "ds", 2)
    Store(__import__("zarr").open_group(str(store), mode="r+"), store).root.attrs["spec"] = "tiny"
    config = tmp_path / "select.yaml"
    config.write_text(
        "policy: {encoder: {d_model: 32, layers: 1, heads: 2, mlp: 64}, unet_channels: [32, 64], diffusion_step_embed: 32,\n"
        "         horizon: 8, n_action_steps: 4, inference_steps: 5, selection: {enabled: true, init_keep: 4.0}}\n"
        "training: {steps: 10, batch_size: 16, warmup_steps: 2, checkpoint_every: 10}\n")
    result = select_keypoints(config, store, tmp_path / "run", {"policy": {"selection": {"sparsity": 0.0}}})
    assert result.spec_path == tmp_path / "run" / "spec" / "keypoints.yaml"
    selected = load_spec(tmp_path / "run" / "spec")  # its images, the view's too, copied beside it
    assert selected.layout().names == tuple(result.selected)
    assert "block/a" in result.selected  # no sparsity: every keypoint kept
    assert [v.image for v in selected.spec.categories[0].references[0].views] == ["view.png"]
    assert installed.read_bytes() == before and not (installed.parent / CANDIDATES_FILE).exists()


def test_rgb_baseline_trains_and_predicts_from_images(tmp_path):
    from kil.data.store import field_stats
    from kil.msgs import RobotState
    from kil.policy.inference import Observation, Policy
    from kil.policy.rgb_baseline import ResNet18
    from kil.training.policy import train

    assert sum(p.numel() for p in ResNet18().parameters()) == pytest.approx(11.17e6, rel=0.01)  # ResNet-18 without its classifier
    store = Store.create(tmp_path / "ds", {"task": "pick_place", "keypoint_names": ["block/a", "block/b", "tray/c"],
                                           "keypoint_instance": [0, 0, 1], "rate_hz": 10.0, "horizon": 8, "episodes": []})
    for i in range(2):
        e = synthetic_episode(f"episode_{i:04d}", i)
        rgb = np.zeros((len(e), 32, 48, 3), np.uint8)
        rgb[:, 8 + 8 * i: 16 + 8 * i, 10:20] = 255  # the object, where it lies
        e.rgb = rgb
        store.write_episode(e)
    store.set_stats(field_stats(store.episodes()))
    config = tmp_path / "rgb.yaml"
    config.write_text("preset: rgb\npolicy: {unet_channels: [32, 64], diffusion_step_embed: 32, horizon: 8, n_action_steps: 4,\n"
                      "         inference_steps: 5, image_size: [32, 48]}\n"
                      "training: {steps: 6, batch_size: 4, checkpoint_every: 6, log_every: 2}\n")
    from kil.policy.configuration import load_run_config

    train(load_run_config(config), tmp_path / "ds", tmp_path / "run")
    policy = Policy.load(tmp_path / "run")
    assert policy.config.kind == "rgb"
    state = RobotState(stamp_ns=7, frame_id="base_link", position=[0.5, 0, 0.2], orientation=[1, 0, 0, 0], gripper=0.08)
    image = np.zeros((480, 640, 3), np.uint8)  # a camera frame: resized to the policy's input
    chunk = policy.predict([Observation(None, state, image)], seed=3)
    assert chunk.stamp_ns == 7 and chunk.positions.shape == (4, 3) and np.isfinite(chunk.positions).all()
    again = Policy.load(tmp_path / "run").predict([Observation(None, state, image)], seed=3)
    np.testing.assert_array_equal(chunk.positions, again.positions)
    with pytest.raises(ValueError, match="needs each observation's image"):
        policy.predict([Observation(None, state)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: rgb\npolicy: {unet_channels: [32, 64], horizon: 8, n_action_steps: 4, image_size: [64, 64]}\n")
    with pytest.raises(ConfigError, match=r"policy.image_size: \(64, 64\) but the store's images are \(32, 48\)"):
        train(load_run_config(bad), tmp_path / "ds", tmp_path / "run2")


def test_distributed_training_under_torchrun(tiny_store, tmp_path):
    """Two DDP processes (gloo on the CPU) through torchrun: each trains on its own batches,
    gradients are averaged, rank 0 writes the run."""
    import subprocess
    import sys

    from kil.policy.inference import Policy

    config = tmp_path / "tiny.yaml"
    config.write_text("policy: {encoder: {d_model: 32, layers: 1, heads: 2, mlp: 64}, unet_channels: [32, 64], diffusion_step_embed: 32,\n"
                      "         horizon: 8, n_action_steps: 4, inference_steps: 5}\n"
                      "training: {steps: 6, batch_size: 16, warmup_steps: 1, checkpoint_every: 6, log_every: 2}\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kil", "train",
               "--config", str(config), "--dataset", str(tiny_store), "--out", str(tmp_path / "run"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("6 steps") == 2  # both ranks finished
    policy = Policy.load(tmp_path / "run")
    assert (tmp_path / "run" / "loss.csv").read_text().count("\n") == 7
    bank, _ = _bank_and_codec(tiny_store)
    raw = {k: v for k, v in bank.batch(torch.tensor([3])).items() if not k.startswith("action")}
    assert torch.isfinite(policy.predict_raw(raw)["position"]).all()


def test_a_keypoint_centred_frame_remembers_its_anchor_over_the_episode():
    """Training samples carry the anchor's last sighting in the episode (not only in the
    observation history); the node's KeypointMemory does the same over its stream."""
    from kil.msgs import Keypoints
    from kil.policy.batch import last_seen
    from kil.policy.inference import KeypointMemory

    xyz = np.arange(18, dtype=float).reshape(6, 3)
    visible = np.array([False, True, False, False, True, False])
    position, known = last_seen(xyz, visible)
    np.testing.assert_array_equal(known, [False, True, True, True, True, True])
    np.testing.assert_array_equal(position[[0, 1, 2, 3, 4, 5]], [[0, 0, 0], xyz[1], xyz[1], xyz[1], xyz[4], xyz[4]])

    episode = synthetic_episode("episode_0000", 0)
    episode.visible[5:20, 0] = False  # the gripper hides block/a for 15 steps
    episode.keypoints[5:20, 0] = np.nan
    bank = SampleBank([episode], 2, 8, anchor=0)
    batch = bank.batch(torch.arange(len(bank)))
    assert batch["anchor_known"].all()
    torch.testing.assert_close(batch["anchor_position"][15], torch.as_tensor(episode.keypoints[4, 0]).float())
    torch.testing.assert_close(batch["anchor_position"][25], torch.as_tensor(episode.keypoints[25, 0]).float())

    def keypoints(stamp_s: float, seen: bool) -> Keypoints:
        return Keypoints(int(stamp_s * 1e9), "base", ("block/a", "tray/c"), np.zeros((2, 2)),
                         np.array([[0.4, 0.1, 0.0], [0.6, -0.2, 0.0]]) + stamp_s, np.ones(2, np.float32),
                         np.array([seen, True]), np.array([0, 1], np.int32))

    memory = KeypointMemory(0)
    assert memory.position is None
    memory.update(keypoints(1.0, True))
    memory.update(keypoints(1.1, False))
    np.testing.assert_allclose(memory.position, [1.4, 1.1, 1.0])
    memory.update(keypoints(0.5, False))  # a new episode: forgotten
    assert memory.position is None
    base_frame = KeypointMemory(None)
    base_frame.update(keypoints(2.0, True))
    assert base_frame.position is None  # base frame: no anchor


def test_hidden_keypoints_held_at_their_last_sighting_alike_in_training_and_in_the_node():
    """hidden_keypoints last_seen: a training sample observes a hidden keypoint where it was
    last seen in the episode (masked before its first sighting); the node's memory gives
    the policy exactly the same inputs frame by frame."""
    from kil.msgs import Keypoints
    from kil.policy.inference import KeypointMemory

    episode = synthetic_episode("episode_0000", 0)
    episode.visible[5:20, 0] = False  # the gripper hides block/a for 15 steps
    episode.keypoints[5:20, 0] = np.nan
    episode.visible[:3, 2] = False  # tray/c unseen at first
    episode.keypoints[:3, 2] = np.nan
    held = SampleBank([episode], 2, 8, hold_hidden=True).batch(torch.arange(len(episode)))
    masked = SampleBank([episode], 2, 8).batch(torch.arange(len(episode)))
    newest_held, newest_masked = held["keypoints"][:, -1], masked["keypoints"][:, -1]
    assert held["visible"][5:20, -1, 0].all() and not masked["visible"][5:20, -1, 0].any()
    torch.testing.assert_close(newest_held[5:20, 0], torch.as_tensor(episode.keypoints[4, 0]).expand(15, 3).float())
    assert not held["visible"][:3, -1, 2].any() and (newest_held[:3, 2] == 0).all()  # never seen yet: masked
    seen_again = slice(20, None)  # block/a in view again: its newest observation is what the detector saw
    assert torch.equal(held["visible"][seen_again, -1, :2], masked["visible"][seen_again, -1, :2])
    assert torch.equal(newest_held[seen_again, :2], newest_masked[seen_again, :2])

    memory = KeypointMemory(None)
    for t in range(len(episode)):
        frame = Keypoints(t * 100_000_000, "base", ("block/a", "block/b", "tray/c"), np.zeros((3, 2)), episode.keypoints[t],
                          np.ones(3, np.float32), episode.visible[t], np.array([0, 0, 1], np.int32))
        memory.update(frame)
        seen = memory.held(frame)
        np.testing.assert_array_equal(seen.visible, held["visible"][t, -1].numpy())
        np.testing.assert_allclose(np.where(seen.visible[:, None], seen.xyz, 0.0), newest_held[t].numpy(), atol=1e-6)


def test_keypoint_centred_action_frame_and_similarity_inputs(tmp_path):
    from dataclasses import replace

    from kil.policy.inference import Policy
    from kil.training.policy import train

    store = make_store(tmp_path / "ds", 2)
    run = _run_config(4)
    centred = replace(run, policy=replace(TINY_POLICY, action_frame="keypoint", action_frame_keypoint="block/a"))
    train(centred, store, tmp_path / "run")
    policy = Policy.load(tmp_path / "run")
    assert policy.codec.anchor == 0
    bank, _ = _bank_and_codec(store)
    raw = bank.batch(torch.arange(len(bank)))
    fields = policy.codec.raw_fields(raw)
    # Action positions are relative to block/a at the newest observation, and decode back.
    torch.testing.assert_close(fields["action"][..., :3], raw["action_position"] - raw["keypoints"][:, -1, 0][:, None])
    decoded = policy.codec.decode_actions(policy.codec.encode(raw).action, raw)
    torch.testing.assert_close(decoded["position"], raw["action_position"], atol=1e-5, rtol=0)
    # The anchor hidden in the newest observation: the older sighting defines the frame; never
    # seen: no prediction (the node then sends nothing and the robot holds).
    one = {k: v[5:6].clone() for k, v in raw.items() if not k.startswith("action")}
    one["visible"][0, -1, 0] = False
    one["keypoints"][0, -1, 0] = 0.0
    torch.testing.assert_close(policy.codec.anchor_position(one)[0], raw["keypoints"][5, 0, 0])
    assert torch.isfinite(policy.predict_raw(one)["position"]).all()
    one["visible"][0, :, 0] = False
    with pytest.raises(ValueError, match="block/a .* is not visible in the observation history"):
        policy.predict_raw(one)
    with pytest.raises(ConfigError, match="action_frame_keypoint: 'lid/x' is not a keypoint"):
        train(replace(run, policy=replace(TINY_POLICY, action_frame="keypoint", action_frame_keypoint="lid/x")), store, tmp_path / "bad")
    # The caller's memory of the last sighting (the node's KeypointMemory) defines the frame
    # while the history has none, as the training samples' episode-long memory does.
    remembered = {**one, "anchor_position": raw["keypoints"][5, 0, 0][None], "anchor_known": torch.ones(1, dtype=torch.bool)}
    assert not remembered["visible"][0, :, 0].any()
    torch.testing.assert_close(policy.codec.anchor_position(remembered)[0], raw["keypoints"][5, 0, 0])
    assert torch.isfinite(policy.predict_raw(remembered)["position"]).all()

    # Similarity vectors (paper 000) widen each keypoint token by N; a store without them is refused.
    with pytest.raises(ConfigError, match="policy.similarity: the store was built without similarity vectors"):
        train(replace(run, policy=replace(TINY_POLICY, similarity=True)), store, tmp_path / "nosim")
    with_sim = make_store(tmp_path / "ds_sim", 0)
    created = Store.open(with_sim)
    writable = Store(__import__("zarr").open_group(str(with_sim), mode="r+"), with_sim)
    for i in range(2):
        e = synthetic_episode(f"episode_{i:04d}", i)
        e.similarity = np.broadcast_to(np.eye(N_KEYPOINTS, dtype=np.float32), (len(e), N_KEYPOINTS, N_KEYPOINTS)).copy()
        writable.write_episode(e)
    from kil.data.store import field_stats

    writable.set_stats(field_stats(writable.episodes()))
    assert created.path == with_sim
    train(replace(run, policy=replace(TINY_POLICY, similarity=True)), with_sim, tmp_path / "sim_run")
    sim_policy = Policy.load(tmp_path / "sim_run")
    assert sim_policy.model.encoder.keypoint_proj.in_features == 3 + N_KEYPOINTS
    bank = SampleBank(Store.open(with_sim).episodes(), 2, 8, similarity=True)
    sample = {k: v for k, v in bank.batch(torch.tensor([2])).items() if not k.startswith("action")}
    assert torch.isfinite(sim_policy.predict_raw(sample)["position"]).all()
