"""`kil features train --out FILE`: train the dense descriptor net on simulated views (CPU,
minutes) and write it as one safetensors file, with a PNG of the loss curve beside it."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("train",), help="train: the dense descriptor net")
    parser.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    parser.add_argument("--scenes", type=int, default=None, help="simulated scenes to render (default 96)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default=None, metavar="FILE", help="continue from this descriptor net (its architecture)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering scenes")
    parser.add_argument("--recolour-share", type=float, default=None, help="share of scenes with objects in random colours (default 0.5)")
    parser.add_argument("--manipulated-share", type=float, default=None,
                        help="share of scenes seen along a scripted demonstration: objects in the fingers and put down (default 0)")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from kil.errors import ConfigError
    from kil.perception.features.descriptor_net import save_net
    from kil.training.descriptor_net import DescriptorTrainConfig, train, training_facts
    from kil.training.descriptor_views import render_scenes, scene_requests
    from kil.training.plots import loss_curve

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out: expected a .safetensors file, got {out}")
    overrides = {k: v for k, v in (("scenes", args.scenes), ("steps", args.steps), ("init", args.init), ("lr", args.lr),
                                              ("recolour_share", args.recolour_share),
                                              ("manipulated_share", args.manipulated_share)) if v is not None}
    try:
        config = dataclasses.replace(DescriptorTrainConfig(), seed=args.seed, workers=args.workers, **overrides)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console) as progress:
        requests = scene_requests(config.tasks, config.robots, config.variations, config.scenes, config.views_per_scene, config.image_size, config.seed,
                                  config.recolour_share, config.manipulated_share)
        bar = progress.add_task("rendering training views", total=len(requests), info="")
        scenes = render_scenes(requests, config.workers, lambda: progress.advance(bar))
        bar = progress.add_task("training descriptor net", total=config.steps, info="")

        def step(i: int, record: dict) -> None:
            progress.update(bar, completed=i + 1, info=f"loss {record['loss']:.3f}")

        net, history = train(scenes, config, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_net(net, out, training_facts(config, history))
    curve = loss_curve([h["loss"] for h in history], out.with_suffix(".loss.png"), "descriptor net: contrastive loss")
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {curve}; final loss {training_facts(config, history)['training']['final_loss']:.4f}")
    return 0
