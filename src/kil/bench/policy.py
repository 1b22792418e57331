"""Policy benchmarks.

closed_loop: a trained policy run closed loop in the sim through the sim_policy graph
(descriptor-net keypoints, the same stages as the live graph), success per variation with
95% Clopper-Pearson intervals, and the run's training time.

latency: `Policy.predict_raw` (encoder once per call, ensemble batched, inference mode)
against a straightforward loop of the same math (encoder re-run at every denoising step,
ensemble members one after another, autograd on), batch 1, median and p99, their ratio,
and the largest difference between their actions for the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from kil.policy.inference import Policy


def reference_predict(policy: Policy, raw: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    """The same chunk as Policy.predict_raw, computed the plain way: normalised actions (1, H, 10)."""
    config = policy.config
    generator = torch.Generator().manual_seed(seed)
    inputs = policy._ensemble_inputs(raw, generator) if config.ensemble > 1 else raw
    E = inputs["ee_position"].shape[0]
    x_all = torch.randn((E, config.horizon, 10), generator=generator).to(policy.device)
    chunks = []
    for e in range(E):
        member = {k: v[e: e + 1] for k, v in inputs.items()}
        x = x_all[e: e + 1]
        for t in policy.model.sample_scheduler.timesteps:
            cond = policy.model.condition(policy.codec.encode(member).to(policy.device))
            x = policy.model.sample_scheduler.step(policy.model.unet(x, t, cond), t, x).prev_sample
        chunks.append(x)
    out = torch.cat(chunks)
    return out.median(dim=0, keepdim=True).values if E > 1 else out


def _random_observation(policy: Policy, generator: torch.Generator) -> dict[str, torch.Tensor]:
    To, N = policy.config.n_obs_steps, len(policy.trained_on.keypoint_names)
    from kil.policy.augment import yaw_matrices

    return {
        "keypoints": torch.rand(1, To, N, 3, generator=generator) * torch.tensor([0.4, 0.6, 0.1]) + torch.tensor([0.35, -0.3, -0.1]),
        "visible": torch.ones(1, To, N, dtype=torch.bool),
        "ee_position": torch.tensor([[[0.5, 0.0, 0.1]] * To]),
        "ee_rotation": yaw_matrices(torch.zeros(To))[None] @ torch.diag(torch.tensor([1.0, -1.0, -1.0])),
        "gripper": torch.full((1, To), 0.07),
    }


def _time(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.array(out) * 1e3


def random_policy(preset: str, keypoints: int = 7) -> Policy:
    """An untrained policy of a preset's sizes (for timing: the compute is the real compute)."""
    from kil.policy.batch import Codec
    from kil.policy.configuration import load_run_config
    from kil.policy.inference import TrainedOn
    from kil.policy.normalizer import MinMax, Normalizer

    run = load_run_config(preset)
    names = tuple(f"object/kp{i}" for i in range(keypoints))
    proprio = Codec(run.policy, Normalizer({})).proprio_dim
    unit = lambda d: MinMax(-torch.ones(d), torch.ones(d))  # noqa: E731
    codec = Codec(run.policy, Normalizer({"keypoints": unit(3), "proprio": unit(proprio), "action": unit(10)}))
    torch.manual_seed(0)
    return Policy.create(run, TrainedOn(task="bench", keypoint_names=names, rate_hz=10.0), codec)


def latency(policy_path: str | Path | None, repeats: int = 50, threads: int = 2, ensembles: tuple[int, ...] = (1, 8),
            preset: str | None = None) -> int:
    console = Console(width=160)
    torch.set_num_threads(threads)
    what = f"trained policy {policy_path}" if policy_path else f"untrained {preset} preset"
    table = Table(title=f"policy inference latency ({what}), batch 1, {threads} CPU threads ({repeats} runs)")
    for col in ("device", "ensemble", "DDIM steps", "fast median ms", "fast p99 ms", "reference median ms", "reference p99 ms",
                "speed-up", "max |action diff|"):
        table.add_column(col)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for ensemble in ensembles:
            base = Policy.load(policy_path) if policy_path else random_policy(preset)
            base.model.to(device)
            policy = base.with_options(ensemble=ensemble)
            raw = _random_observation(policy, torch.Generator().manual_seed(0))  # inputs arrive on the CPU
            fast = _time(lambda: policy.predict_raw(raw, seed=1), repeats)
            ref = _time(lambda: reference_predict(policy, raw, seed=1), max(5, repeats // 5))
            fast_actions = policy.predict_raw(raw, seed=1)["position"]
            ref_actions = policy.codec.decode_actions(reference_predict(policy, raw, seed=1).detach(), raw)["position"]
            diff = float((fast_actions - ref_actions[0]).abs().max())
            table.add_row(device, str(ensemble), str(policy.config.inference_steps), f"{np.median(fast):.1f}", f"{np.percentile(fast, 99):.1f}",
                          f"{np.median(ref):.1f}", f"{np.percentile(ref, 99):.1f}", f"{np.median(ref) / np.median(fast):.1f}x", f"{diff:.2e} m")
    console.print(table)
    return 0
