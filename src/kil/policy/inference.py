"""A trained policy as used at run time: `Policy.load(RUN)` and `predict(history)`.

A checkpoint is a directory with `model.safetensors` (network weights and the normaliser,
as `model.*` and `normalizer.*` tensors) and `policy.yaml` (the full run configuration and
what the policy was trained on: keypoint names, rate, task). A run directory points to its
newest checkpoint; loading a run loads that one.

`predict` runs under `torch.inference_mode`: the observation encoder once per call (not
once per denoising step), the ensemble of SKIL (paper 000) as one batch, and a seeded
generator, so equal inputs and seed give equal chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from kil.config import load_dataclass, load_yaml, to_plain
from kil.errors import ConfigError
from kil.msgs import ActionChunk, Keypoints, RobotState
from kil.policy.batch import Batch, Codec, quat_to_matrix_torch
from kil.policy.configuration import RunConfig
from kil.policy.modeling import DiffusionPolicy, build_policy
from kil.policy.normalizer import Normalizer

WEIGHTS_FILE = "model.safetensors"
POLICY_FILE = "policy.yaml"
LATEST_FILE = "latest"  # in a run directory: the name of the newest checkpoint directory


@dataclass(frozen=True)
class TrainedOn:
    """What the policy's inputs mean: the dataset it was trained on."""

    task: str
    keypoint_names: tuple[str, ...]
    rate_hz: float
    keypoint_source: str = "image"
    feature_model: str | None = None
    spec: str | None = None  # the keypoint spec the dataset was built with
    extraction: str | None = None  # im, in or t (None: a dataset from before the choice, im)
    segmenter: str | None = None  # instance matching's segmentation backend config
    tracker: str | None = None  # extraction t: the point tracker config
    track_init: str | None = None  # extraction t: im or in
    rigid_objects_m: float | None = None  # objects followed as rigid bodies within this many metres (None: off)
    base_frame: str = "base_link"


@dataclass(frozen=True)
class Observation:
    """One observation step: the task's keypoints and the robot state of one camera frame
    (and, for the RGB baseline, the frame's colour image (H, W, 3) uint8; keypoints unused)."""

    keypoints: Keypoints | None
    state: RobotState
    image: np.ndarray | None = None
    image_stamp_ns: int | None = None  # the frame's stamp, with `image`

    @property
    def stamp_ns(self) -> int:
        """The camera frame's time (what chunks are stamped with)."""
        if self.keypoints is not None:
            return self.keypoints.stamp_ns
        return self.image_stamp_ns if self.image_stamp_ns is not None else self.state.stamp_ns


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory, given it or a run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / WEIGHTS_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        return path / latest.read_text().strip()
    raise ConfigError(f"--policy: {path} is neither a checkpoint ({WEIGHTS_FILE}) nor a run directory with one ({LATEST_FILE})")


def trained_perception(policy_path: str | Path) -> tuple[str, str, dict[str, str]]:
    """(feature backend, keypoint spec, the keypoints node's extraction settings) the
    policy's keypoints were extracted with, from its checkpoint's policy.yaml."""
    trained_on = load_yaml(checkpoint_dir(policy_path) / POLICY_FILE)["trained_on"]
    extraction = {"extraction": trained_on.get("extraction") or "im"}
    extraction.update({key: trained_on[key] for key in ("segmenter", "tracker", "track_init", "rigid_objects_m") if trained_on.get(key)})
    return trained_on.get("feature_model") or "descriptor_net", trained_on.get("spec") or trained_on["task"], extraction


class Policy:
    def __init__(self, run: RunConfig, trained_on: TrainedOn, model: DiffusionPolicy, codec: Codec) -> None:
        self.run = run
        self.config = run.policy
        self.trained_on = trained_on
        self.model = model.eval()
        self.codec = codec

    @classmethod
    def create(cls, run: RunConfig, trained_on: TrainedOn, codec: Codec) -> Policy:
        model = build_policy(run.policy, len(trained_on.keypoint_names), codec.proprio_dim)
        return cls(run, trained_on, model, codec)

    def with_options(self, **changes: Any) -> Policy:
        """The same trained network with other inference options (e.g. ensemble=8)."""
        run = replace(self.run, policy=replace(self.config, **changes))
        return Policy(run, self.trained_on, self.model, self.codec)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({f"normalizer.{k}": v for k, v in self.codec.normalizer.state_dict().items()})
        save_file(tensors, str(directory / WEIGHTS_FILE))
        meta = {"run": self.run.to_dict(), "trained_on": to_plain(self.trained_on), "anchor": self.codec.anchor, **(extra or {})}
        (directory / POLICY_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Policy:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = checkpoint_dir(path)
        meta = load_yaml(directory / POLICY_FILE)
        where = f"{directory / POLICY_FILE}:"
        run = load_dataclass(RunConfig, meta.get("run"), f"{where} run")
        trained_on = load_dataclass(TrainedOn, meta.get("trained_on"), f"{where} trained_on")
        weights = directory / WEIGHTS_FILE
        try:
            tensors = load_file(str(weights))
            normalizer = Normalizer.from_state_dict({k[len("normalizer."):]: v for k, v in tensors.items() if k.startswith("normalizer.")})
            codec = Codec(run.policy, normalizer, meta.get("anchor"))
            policy = cls.create(run, trained_on, codec)
            policy.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:  # a damaged or foreign file
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--policy: cannot load {weights} ({detail}); the checkpoint is damaged or not this policy's") from None
        policy.model.to(device)
        return policy

    # -- inference -----------------------------------------------------------------------
    def raw_history(self, history: list[Observation], anchor: np.ndarray | None = None) -> Batch:
        """The newest n_obs_steps observations as a raw batch of one (the oldest repeated
        when the history is shorter, as at the start of a training episode). anchor: (3,)
        base frame, the action frame's keypoint where the caller last saw it (`KeypointMemory`;
        None: where the history last shows it)."""
        if not history:
            raise ValueError("predict: empty observation history")
        names = self.trained_on.keypoint_names
        rgb = self.config.kind == "rgb"
        for o in history:
            if rgb and o.image is None:
                raise ValueError("predict: the RGB baseline needs each observation's image")
            if not rgb and (o.keypoints is None or tuple(o.keypoints.names) != names):
                got = None if o.keypoints is None else list(o.keypoints.names)
                raise ValueError(f"predict: keypoints {got} are not the ones the policy was trained on {list(names)}")
        To = self.config.n_obs_steps
        steps = [history[0]] * max(0, To - len(history)) + list(history[-To:])
        if rgb:  # the keypoint inputs are unused: all hidden
            visible = np.zeros((To, len(names)), bool)
            xyz = np.zeros((To, len(names), 3))
        else:
            visible = np.stack([o.keypoints.visible for o in steps])
            xyz = np.stack([np.where(o.keypoints.visible[:, None], o.keypoints.xyz, 0.0) for o in steps])
        raw = {
            "keypoints": torch.as_tensor(xyz, dtype=torch.float32)[None],
            "visible": torch.as_tensor(visible)[None],
            "ee_position": torch.as_tensor(np.stack([o.state.position for o in steps]), dtype=torch.float32)[None],
            "ee_rotation": quat_to_matrix_torch(torch.as_tensor(np.stack([o.state.orientation for o in steps]))).float()[None],
            "gripper": torch.as_tensor([o.state.gripper for o in steps], dtype=torch.float32)[None],
        }
        if rgb:
            from kil.data.builder import resize_images

            raw["images"] = torch.as_tensor(resize_images([o.image for o in steps], self.config.image_size))[None]
        if self.config.similarity:
            raw["similarity"] = torch.as_tensor(np.stack([o.keypoints.similarity for o in steps]), dtype=torch.float32)[None]
        if anchor is not None and self.codec.anchor is not None:
            raw["anchor_position"] = torch.as_tensor(np.asarray(anchor, np.float32).reshape(1, 3))
            raw["anchor_known"] = torch.ones(1, dtype=torch.bool)
        return raw

    def keypoint_memory(self) -> KeypointMemory:
        """A memory of where the keypoints were last seen, for one stream of observations
        (what training used: the last sighting in the episode)."""
        return KeypointMemory(self.codec.anchor)

    def _ensemble_inputs(self, raw: Batch, generator: torch.Generator) -> Batch:
        """The one observation repeated `ensemble` times, each copy with keypoint tokens
        dropped at random (the first copy keeps them all)."""
        E = self.config.ensemble
        out = {k: v.expand(E, *v.shape[1:]).clone() for k, v in raw.items()}
        keep = torch.rand(out["visible"].shape, generator=generator) >= self.config.ensemble_dropout
        keep[0] = True
        if self.codec.anchor is not None:
            keep[..., self.codec.anchor] = True  # the action frame stays defined
        out["visible"] = out["visible"] & keep
        return out

    @torch.inference_mode()
    def predict_raw(self, raw: Batch, seed: int = 0) -> dict[str, torch.Tensor]:
        """Decoded actions for a raw batch of one: position (H, 3), rotation (H, 3, 3), gripper (H,)."""
        if not bool(self.codec.anchor_visible(raw).all()):
            name = self.trained_on.keypoint_names[self.codec.anchor]
            raise ValueError(f"predict: {name} (the action frame's keypoint) is not visible in the observation history")
        generator = torch.Generator().manual_seed(seed)
        inputs = self._ensemble_inputs(raw, generator) if self.config.ensemble > 1 else raw
        encoded = self.codec.encode(inputs)
        cond = self.model.condition(encoded.to(self.device))
        actions = self.model.sample(cond, generator)
        if self.config.ensemble > 1:
            actions = actions.median(dim=0, keepdim=True).values
        decoded = self.codec.decode_actions(actions, raw)
        return {k: v[0].cpu() for k, v in decoded.items()}

    def predict(self, history: list[Observation], seed: int = 0, steps: int | None = None,
                anchor: np.ndarray | None = None) -> ActionChunk:
        """The next chunk of absolute EE targets, stamped with the newest observation's stamp
        (waypoint i is meant for stamp + i/rate); `steps` waypoints (default: the executed
        n_action_steps); anchor: see raw_history."""
        from kil.geometry import matrix_to_quat

        decoded = self.predict_raw(self.raw_history(history, anchor), seed)
        n = steps or self.config.n_action_steps
        newest = history[-1]
        return ActionChunk(
            stamp_ns=newest.stamp_ns,
            frame_id=newest.state.frame_id,
            dt=1.0 / self.trained_on.rate_hz,
            positions=decoded["position"][:n].double().numpy(),
            orientations=np.array([matrix_to_quat(R) for R in decoded["rotation"][:n].double().numpy()]),
            gripper=decoded["gripper"][:n].double().numpy(),
        )


class KeypointMemory:
    """Where each keypoint was last seen over a stream of observations, as training's samples
    have it (`last_seen` over the episode): the keypoint-centred action frame's origin stays
    defined while the gripper hides the object (paper 002), and a policy trained with
    hidden_keypoints last_seen observes hidden keypoints there. A stamp going backwards
    starts over (a new episode)."""

    def __init__(self, anchor: int | None) -> None:
        self.anchor = anchor
        self.xyz: np.ndarray | None = None  # (N, 3) base frame
        self.known: np.ndarray | None = None  # (N,) seen in this stream
        self._stamp_ns = -1

    @property
    def position(self) -> np.ndarray | None:
        """(3,) where the action frame's keypoint was last seen (None: base frame, or not yet)."""
        if self.anchor is None or self.known is None or not self.known[self.anchor]:
            return None
        return self.xyz[self.anchor].copy()

    def update(self, keypoints: Keypoints) -> None:
        n = len(keypoints.names)
        if keypoints.stamp_ns < self._stamp_ns or self.known is None or len(self.known) != n:
            self.xyz, self.known = np.zeros((n, 3)), np.zeros(n, bool)
        self._stamp_ns = keypoints.stamp_ns
        seen = keypoints.visible & np.isfinite(keypoints.xyz).all(axis=1)
        self.xyz[seen] = keypoints.xyz[seen]
        self.known |= seen

    def held(self, keypoints: Keypoints) -> Keypoints:
        """`keypoints` (after `update` with them) with each hidden one at its last sighting,
        visible once it has been seen in the stream."""
        return replace(keypoints, xyz=np.where(self.known[:, None], self.xyz, np.nan).astype(keypoints.xyz.dtype),
                       visible=self.known.copy())
