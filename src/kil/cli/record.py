"""`kil record`: record demonstration episodes through the local graph, as
``ros2 launch kil record_demos.launch.py`` does on a robot: the teleop node's targets go
through the interpolator and the safety node, and the recorder writes one rosbag2 (MCAP)
episode per demonstration, started and saved (or discarded) by the teleop.

    kil record --rig sim --teleop expert --task pick_place --episodes 30 --out demos/
    kil record --rig sim --teleop keyboard --task pick_place --episodes 5 --out demos/

With the keyboard, each episode is a fresh scene on the real-time clock: drive with
w/s a/d r/f q/e, space for the gripper, enter to start and again to save, backspace to
discard (a new scene follows). The sim judges success; failed episodes are kept, marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kil.errors import ConfigError

VARIATIONS = ("in", "obj", "scene", "rot")  # kil.sim.scene.VARIATIONS, without importing it here


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rig", default="sim", help="the rig (the local runtime drives the simulated one; on a robot: record_demos.launch.py)")
    parser.add_argument("--teleop", default="expert", choices=("expert", "keyboard"), help="who demonstrates: the scripted expert or you at the keyboard")
    add_episode_arguments(parser)


def add_episode_arguments(parser: argparse.ArgumentParser, robot: str | None = None,
                          out_help: str = "directory for the episodes (episode_NNNN inside)") -> None:
    """Arguments shared with `kil sim`."""
    parser.add_argument("--task", default="pick_place", help="task under config/sim/tasks.yaml (pick_place, place_upright, pick_place_two)")
    parser.add_argument("--robot", default=robot, help="panda or ur5e" + ("" if robot else " (default: the rig's)"))
    parser.add_argument("--variation", default="in", help=f"one of {', '.join(VARIATIONS)}")
    parser.add_argument("--episodes", type=int, default=1, help="episodes to record (saved ones, with the keyboard)")
    parser.add_argument("--seed", type=int, default=0, help="batch seed (episode i uses a seed derived from it)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--camera-rate", type=float, default=None, metavar="HZ", help="camera rate, 10-30 Hz (default from the graph: 15)")


def main(args: argparse.Namespace) -> int:
    from kil.rigs import load_rig

    rig = load_rig(args.rig)
    if rig.camera.driver != "sim":
        raise ConfigError(f"--rig: {args.rig} is a real rig; record on it with: ros2 launch kil record_demos.launch.py rig:={args.rig} teleop:=quest|spacemouse")
    return record_batch(args, args.teleop, args.robot or rig.robot)


def record_batch(args: argparse.Namespace, teleop: str, robot: str) -> int:
    """Record `args.episodes` episodes under `args.out`, one sim episode per graph run."""
    from kil.data.episodes import next_episode_dir
    from kil.sim.demos import demo_graph, episode_seed, record_episode, require_new_batch

    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    out = Path(args.out)
    if teleop == "expert":
        require_new_batch(out)  # episode i is seed (s, i): a batch starts at episode_0000
    miss_rate = getattr(args, "miss_rate", 0.0)  # kil sim demos only
    demo_graph(args.task, robot, args.variation, args.seed, out, teleop=teleop, miss_rate=miss_rate)  # validate the arguments first
    console = Console(stderr=True)
    results, discarded = [], 0
    attempt = int(next_episode_dir(out).name.split("_")[1])  # seeds continue where the directory left off
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{teleop}: {args.task}/{robot}/{args.variation}", total=args.episodes, rate="")
        while len(results) < args.episodes:
            if teleop == "keyboard":
                progress.console.print(f"episode {len(results) + 1}/{args.episodes}: press enter to start recording, enter again to save, backspace to discard")
            result = record_episode(args.task, robot, args.variation, episode_seed(args.seed, attempt), out, args.camera_rate, teleop,
                                    miss_rate)
            attempt += 1
            if result.path is None:
                discarded += 1
                continue
            results.append(result)
            progress.update(bar, advance=1, rate=f"success {sum(r.success for r in results)}/{len(results)}")
    successes = sum(r.success for r in results)
    mean = sum(r.completion for r in results) / len(results)
    Console().print(f"{out}: {len(results)} episodes ({teleop}), success {successes}/{len(results)}, mean completion {mean:.2f}"
                    + (f", {discarded} discarded" if discarded else ""))
    for r in results:
        if not r.success:
            Console().print(f"  {r.path.name}: completion {r.completion:.2f} (seed {r.seed}, {r.stop_reason}); kept, marked unsuccessful")
    return 0
