"""`kil run`: run a graph description in the local runtime and summarise what it did; with
`--policy`, the whole live graph of a trained policy on the simulated rig (camera, features,
keypoints, policy, interpolator, safety, visualisation), writing an MP4 and printing success."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from kil.graph import load_graph, parse_overrides
from kil.paths import graph_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph", default=None, help="graph name under config/graphs/ or a YAML path (default with --policy: the policy's sim graph)")
    parser.add_argument("--rig", default="sim", help="with --policy: the rig (only the simulated rig runs in the local runtime)")
    parser.add_argument("--policy", default=None, help="run directory of a trained policy: run it closed loop on the simulated rig")
    parser.add_argument("--task", default=None, help="with --policy: task (default: the policy's)")
    parser.add_argument("--robot", default=None, help="with --policy: simulated robot (default: the rig's)")
    parser.add_argument("--variation", default="in", help="with --policy: in, obj or scene")
    parser.add_argument("--seed", type=int, default=1000, help="with --policy: episode seed")
    parser.add_argument("--video", default=None, help="with --policy: MP4 path (default: <policy>/rollouts/<task>_<variation>_<seed>.mp4)")
    parser.add_argument("--clock", choices=("stepped", "realtime"), default="stepped", help="simulated (fast, deterministic) or wall-clock time")
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S",
        help="stop after S seconds of clock time (required with the stepped clock, which runs as fast as it can)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a node parameter (YAML value); repeatable")


def main(args: argparse.Namespace) -> int:
    from kil.errors import ConfigError
    from kil.runtimes.local import LocalRuntime

    if args.policy is not None:
        return _run_policy(args)
    if args.graph is None:
        raise ConfigError("--graph: required (or --policy RUN to run a trained policy on the simulated rig)")
    if args.clock == "stepped" and args.duration is None:
        raise ConfigError("--duration: required with the stepped clock (a timer-driven graph would never stop)")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration: must be > 0 seconds, got {args.duration:g}")

    graph = load_graph(graph_path(args.graph), parse_overrides(args.set))
    runtime = LocalRuntime(graph, clock=args.clock)
    console = Console(stderr=True)
    with console.status(f"running graph {graph.name} ({args.clock} clock)"):
        stats = runtime.run(args.duration)
    table = Table(title=f"graph {graph.name}: {(stats.end_ns - stats.start_ns) / 1e9:.2f} s, stopped: {stats.stop_reason}")
    table.add_column("topic")
    table.add_column("type")
    table.add_column("messages", justify="right")
    for name, topic in graph.topics.items():
        table.add_row(name, topic.type.__name__, str(stats.published[name]))
    Console().print(table)
    for label, count in stats.skipped_ticks.items():
        console.print(f"[yellow]timer {label} skipped {count} ticks (could not keep up)[/yellow]")
    return 0


def _run_policy(args: argparse.Namespace) -> int:
    """One closed-loop episode of a trained policy on the simulated rig."""
    from pathlib import Path

    from kil.errors import ConfigError
    from kil.rigs import load_rig
    from kil.runtimes.local import LocalRuntime
    from kil.sim.rollouts import policy_graph, trained_task
    from kil.sim.tasks import task_config

    rig = load_rig(args.rig)
    if rig.camera.driver != "sim":
        raise ConfigError(f"--rig: {args.rig} is a real rig; on a robot run: ros2 launch kil bringup.launch.py rig:={args.rig} policy:={args.policy}")
    task = args.task or trained_task(args.policy)
    video = Path(args.video) if args.video else Path(args.policy) / "rollouts" / f"{task}_{args.variation}_{args.seed}.mp4"
    graph = policy_graph(args.policy, task, args.robot or rig.robot, args.variation, args.seed, graph=args.graph, video=video)
    duration = args.duration or task_config(task).time_limit_s
    runtime = LocalRuntime(graph, clock=args.clock)
    console = Console(stderr=True)
    with console.status(f"{task} ({args.variation}, seed {args.seed}) on the simulated {args.robot or rig.robot}, {args.clock} clock"):
        stats = runtime.run(duration)
    completion = runtime.stages["rig"].completion
    seconds = (stats.end_ns - stats.start_ns) / 1e9
    verdict = "[green]success[/green]" if completion >= 1.0 else "[red]failure[/red]"
    Console().print(f"{verdict}: completion {completion:.2f} after {seconds:.1f} s ({stats.stop_reason}); video {video}")
    for label, count in stats.skipped_ticks.items():
        console.print(f"[yellow]timer {label} skipped {count} ticks (could not keep up)[/yellow]")
    return 0 if completion >= 1.0 else 1
