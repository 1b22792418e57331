"""`kil run`: run a graph description in the local runtime and summarise what it did."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from kil.graph import load_graph, parse_overrides
from kil.paths import graph_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph", required=True, help="graph name under config/graphs/ or a YAML path")
    parser.add_argument("--clock", choices=("stepped", "realtime"), default="stepped", help="simulated (fast, deterministic) or wall-clock time")
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S",
        help="stop after S seconds of clock time (required with the stepped clock, which runs as fast as it can)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a node parameter (YAML value); repeatable")


def main(args: argparse.Namespace) -> int:
    from kil.errors import ConfigError
    from kil.runtimes.local import LocalRuntime

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
