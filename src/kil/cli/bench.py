"""`kil bench`: benchmarks that print speed, memory and quality figures."""

from __future__ import annotations

import argparse

SUITES = ("sim",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=SUITES, help="sim: render/control throughput, real-time factor, expert success rates")
    parser.add_argument("--tasks", default="pick_place,place_upright,pick_place_two", help="comma-separated tasks")
    parser.add_argument("--robots", default="panda,ur5e", help="comma-separated robots")
    parser.add_argument("--variations", default="in,obj,scene,rot", help="comma-separated variations")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task, robot and variation")
    parser.add_argument("--seed", type=int, default=1000, help="batch seed (disjoint from the tests' seeds)")


def main(args: argparse.Namespace) -> int:
    from kil.bench import sim
    from kil.errors import ConfigError

    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    split = lambda text: [s for s in text.split(",") if s]  # noqa: E731
    return sim.run(split(args.tasks), split(args.robots), split(args.variations), args.episodes, args.seed)
