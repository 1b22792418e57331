"""`kil train --config C --dataset DS --out RUN`: train a policy (preset or YAML config);
`kil train --resume RUN` continues a run from its newest checkpoint.

Multi-GPU: `torchrun --nproc_per_node=G -m kil train ...` trains one DDP replica per GPU."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="preset (paper, cpu-small) or YAML file with policy/training sections")
    parser.add_argument("--dataset", default=None, help="training store (kil build-dataset)")
    parser.add_argument("--out", default=None, help="run directory to create")
    parser.add_argument("--resume", default=None, metavar="RUN", help="continue this run from its newest checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--seed", type=int, default=None, help="override the training seed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def main(args: argparse.Namespace) -> int:
    import torch

    from kil.errors import ConfigError
    from kil.policy.configuration import load_run_config
    from kil.training.policy import resume, train

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda requested but no GPU is available")
    if device == "cuda" and "LOCAL_RANK" in __import__("os").environ:
        device = f"cuda:{int(__import__('os').environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if args.resume:
        result = resume(args.resume, args.dataset, device, args.steps)
    else:
        missing = [f"--{k}" for k in ("config", "dataset", "out") if getattr(args, k) is None]
        if missing:
            raise ConfigError(f"kil train: {', '.join(missing)} required (or --resume RUN)")
        training = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
        run = load_run_config(args.config, {"training": training} if training else None)
        result = train(run, args.dataset, args.out, device)
    print(f"{result.run}: {result.steps} steps, final loss {result.final_loss:.4f}, {result.seconds / 60:.1f} min training")
    return 0
