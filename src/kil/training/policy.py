"""Policy training: AdamW, cosine schedule with warmup, seeded batches drawn from the
in-memory sample bank, augmentation, an exponential moving average of the weights (diffusers'
`EMAModel`, as Diffusion Policy), checkpoints that resume exactly.

A run directory holds `config.yaml` (the run configuration as trained), `checkpoints/<step>/`
(a loadable policy with the averaged weights plus `training_state.pt`: the trained weights,
the average, optimiser, schedule and random state),
`latest` (the newest checkpoint's name), `loss.csv`, `loss.png` and tensorboard logs in `tb/`.
Under torchrun (WORLD_SIZE > 1) every process trains a DistributedDataParallel replica on its
own batches; rank 0 writes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from kil.config import load_dataclass, load_yaml
from kil.data.episode import NOT_TO_IMITATE
from kil.data.store import Store
from kil.errors import ConfigError
from kil.paths import check_creatable
from kil.policy.augment import augment
from kil.policy.batch import Codec, SampleBank
from kil.policy.configuration import RunConfig, TrainingConfig
from kil.policy.inference import LATEST_FILE, Policy, TrainedOn, checkpoint_dir
from kil.training.plots import loss_curve

STATE_FILE = "training_state.pt"
NORMALISER_AUGMENTED_PASSES = 2  # the normaliser also covers this many augmented copies of the data


@dataclass(frozen=True)
class TrainResult:
    run: Path
    steps: int
    final_loss: float
    seconds: float


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    warmup = min(warmup, total - 1)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _anchor_index(run: RunConfig, names: list[str]) -> int | None:
    if run.policy.action_frame != "keypoint":
        return None
    if run.policy.action_frame_keypoint not in names:
        raise ConfigError(f"policy.action_frame_keypoint: {run.policy.action_frame_keypoint!r} is not a keypoint of the dataset ({', '.join(names)})")
    return names.index(run.policy.action_frame_keypoint)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def _average(model: torch.nn.Module, t: TrainingConfig):
    """An exponential moving average of `model`'s weights (Diffusion Policy's schedule)."""
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=t.ema_max_decay, use_ema_warmup=True, power=t.ema_power)


class Trainer:
    def __init__(self, run: RunConfig, dataset: str | Path, out: str | Path, device: str = "cpu") -> None:
        self.run, self.out, self.device = run, Path(out), torch.device(device)
        store = Store.open(dataset).require_complete()
        attrs = store.attrs
        names = list(attrs["keypoint_names"])
        p = run.policy
        anchor = _anchor_index(run, names)
        self.bank = SampleBank(store.episodes(), p.n_obs_steps, p.horizon, p.similarity, images=p.kind == "rgb", anchor=anchor,
                               hold_hidden=p.hidden_keypoints == "last_seen")
        if self.bank.images is not None and tuple(self.bank.images.shape[-3:-1]) != tuple(p.image_size):
            raise ConfigError(f"policy.image_size: {tuple(p.image_size)} but the store's images are {tuple(self.bank.images.shape[-3:-1])}")
        self.trained_on = TrainedOn(task=attrs["task"], keypoint_names=tuple(names), rate_hz=float(attrs["rate_hz"]),
                                    keypoint_source=attrs.get("keypoint_source", "image"), feature_model=attrs.get("feature_model"),
                                    spec=attrs.get("spec"), extraction=attrs.get("extraction"), segmenter=attrs.get("segmenter"),
                                    tracker=attrs.get("tracker"), track_init=attrs.get("track_init"),
                                    rigid_objects_m=attrs.get("rigid_objects_m"))
        self.rank, self.world = _distributed()
        t = run.training
        # Every rank draws its own batches; rank r's stream is seeded (seed, r).
        self.generator = torch.Generator().manual_seed(t.seed * 1000 + self.rank)
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        everything = torch.arange(len(self.bank))
        fit_generator = torch.Generator().manual_seed(t.seed)
        whole = self.bank.batch(everything, images=False)  # images are not normalised by stats
        passes = NORMALISER_AUGMENTED_PASSES if p.kind == "keypoint" else 0  # images cannot be moved with the scene
        samples = [whole] + [augment(whole, t.augment, fit_generator, anchor) for _ in range(passes)]
        codec = Codec.fit(p, samples, anchor)
        # In a keypoint-centred frame a sample whose anchor was never seen has no target; a sample
        # whose actions the recording marks not to imitate (a demonstrator's injected error) is no target either.
        anchored = codec.anchor_visible(whole)
        self.usable = torch.nonzero(anchored & self.bank.imitate).flatten()
        if not anchored.any():
            raise ConfigError(f"policy.action_frame_keypoint: {run.policy.action_frame_keypoint} is never visible in the dataset")
        if len(self.usable) == 0:
            raise ConfigError(f"--dataset: every sample is marked not to imitate ({NOT_TO_IMITATE} in the episodes' metadata)")
        self.policy = Policy.create(run, self.trained_on, codec)
        self.model = self.policy.model.to(self.device).train()
        self.module = self.model
        if self.world > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(self.model)
        # The selection gate's logits are not decayed: decay would pull every keep probability to 1/2.
        groups = [{"params": [p for n, p in self.model.named_parameters() if not n.startswith("gate.")]}]
        if self.model.gate is not None:
            groups.append({"params": list(self.model.gate.parameters()), "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, betas=(0.95, 0.999))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cosine_with_warmup(s, t.warmup_steps, t.steps))
        self.ema = _average(self.model, t) if t.ema else None
        self.step = 0
        self.losses: list[float] = []
        self.seconds_before = 0.0  # training time of the run before a resume
        self.started = time.perf_counter()

    # -- state ------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint (every rank calls this: each rank's random state is kept, so a
        resumed DDP run draws what it would have drawn); rank 0 writes."""
        generators = [self.generator.get_state()]
        if self.world > 1:
            generators = [None] * self.world
            torch.distributed.all_gather_object(generators, self.generator.get_state())
        if self.rank != 0:
            return None
        name = f"{self.step:07d}"
        seconds = round(self.seconds_before + time.perf_counter() - self.started, 1)
        state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(), "step": self.step,
                 "generators": generators, "losses": torch.tensor(self.losses)}
        if self.ema is not None:  # the policy gets the average; training goes on from the trained weights
            state["model"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            state["ema"] = self.ema.state_dict()
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        try:
            directory = self.policy.save(self.out / "checkpoints" / name, {"step": self.step, "train_seconds": seconds})
        finally:
            if self.ema is not None:
                self.ema.restore(self.model.parameters())
        torch.save(state, directory / STATE_FILE)
        (self.out / LATEST_FILE).write_text(f"checkpoints/{name}\n")
        self._write_curve()
        return directory

    def restore(self, checkpoint: Path) -> None:
        loaded = Policy.load(checkpoint)
        self.model.load_state_dict(loaded.model.state_dict())
        self.policy.codec = loaded.codec  # the normaliser it was trained with, not a refit
        state = torch.load(checkpoint / STATE_FILE, weights_only=True, map_location="cpu")
        if "model" in state:  # the policy holds the average; the trained weights are here
            self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
                self.ema.to(self.device)
            else:  # a run trained without an average starts one from its weights
                self.ema = _average(self.model, self.run.training)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if len(state["generators"]) != self.world:
            raise ConfigError(f"--resume: {checkpoint} was written by {len(state['generators'])} training processes; "
                              f"resume it with as many (got {self.world})")
        self.generator.set_state(state["generators"][self.rank])
        self.step = int(state["step"])
        self.losses = state["losses"].tolist()
        self.seconds_before = float(load_yaml(checkpoint / "policy.yaml").get("train_seconds", 0.0))

    # -- loop -------------------------------------------------------------------------------
    def train_step(self) -> float:
        t = self.run.training
        index = self.usable[torch.randint(0, len(self.usable), (t.batch_size // self.world,), generator=self.generator)]
        raw = augment(self.bank.batch(index), t.augment, self.generator, self.policy.codec.anchor)
        enc = self.policy.codec.encode(raw)
        # The module's forward is the loss, so under DDP the gradients are averaged across ranks.
        loss = self.module(enc.to(self.device), generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step += 1
        return float(loss.detach())

    def fit(self) -> TrainResult:
        t = self.run.training
        writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step)
        self.started = start = time.perf_counter()
        bar = tqdm(total=t.steps, initial=self.step, desc="train", unit="step", disable=self.rank != 0)
        while self.step < t.steps:
            loss = self.train_step()
            self.losses.append(loss)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == t.steps:
                recent = sum(self.losses[-t.log_every:]) / len(self.losses[-t.log_every:])
                bar.set_postfix(loss=f"{recent:.4f}")
                if writer is not None:
                    writer.add_scalar("train/loss", recent, self.step)
                    writer.add_scalar("train/lr", self.schedule.get_last_lr()[0], self.step)
            if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                self.save()
        bar.close()
        if writer is not None:
            writer.close()
        tail = self.losses[-t.log_every:] or [float("nan")]
        return TrainResult(self.out, self.step, sum(tail) / len(tail), time.perf_counter() - start)

    def _write_curve(self) -> None:
        (self.out / "loss.csv").write_text("step,loss\n" + "".join(f"{i + 1},{v:.6g}\n" for i, v in enumerate(self.losses)))
        loss_curve(self.losses, self.out / "loss.png", f"policy training loss ({self.trained_on.task})")


def train(run: RunConfig, dataset: str | Path, out: str | Path, device: str = "cpu") -> TrainResult:
    out = Path(out)
    rank, world = _distributed()
    # Every rank checks (so all stop together), then rank 0 alone writes the run.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not empty" if out.is_dir() else "is a file"
        raise ConfigError(f"--out: {out} exists and {what} (runs are never overwritten; use --resume to continue one)")
    check_creatable(out, "--out")
    Store.open(dataset).require_complete()  # before anything is written
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump({**run.to_dict(), "dataset": str(Path(dataset).resolve())}, sort_keys=False))
    trainer = Trainer(run, dataset, out, device)
    return trainer.fit()


def resume(run_dir: str | Path, dataset: str | Path | None = None, device: str = "cpu", steps: int | None = None) -> TrainResult:
    """Continue a run from its newest checkpoint, with its own configuration and dataset
    (`steps` raises the total)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"--resume: {run_dir} has no config.yaml (not a kil run directory)")
    data = load_yaml(config_file)
    recorded_dataset = data.pop("dataset", None)
    dataset = dataset or recorded_dataset
    run = load_dataclass(RunConfig, data, f"{config_file}:")
    if steps is not None:
        from dataclasses import replace

        run = replace(run, training=replace(run.training, steps=steps))
    trainer = Trainer(run, dataset, run_dir, device)
    trainer.restore(checkpoint_dir(run_dir))
    return trainer.fit()
