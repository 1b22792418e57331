"""The `kil` command line: one subcommand per job, each in its own module.

A subcommand module defines `add_arguments(parser)` and `main(args) -> int`. Modules import heavy dependencies (torch,
the simulator) inside `main`, so `kil --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kil import __version__
from kil.errors import KilError

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("kil.cli.run", "run a graph description in the local runtime"),
    "record": ("kil.cli.record", "record demonstration episodes through the local graph (scripted expert or keyboard teleop)"),
    "sim": ("kil.cli.sim", "simulated rig: scripted demonstrations, renders, ground truth"),
    "annotate": ("kil.cli.annotate", "click reference keypoints on a recorded frame in a local web page"),
    "build-dataset": ("kil.cli.dataset", "turn recorded episodes into a training store with keypoints"),
    "train": ("kil.cli.train", "train a keypoint diffusion policy"),
    "eval": ("kil.cli.eval", "run closed-loop episodes in the sim and report success rates"),
    "bench": ("kil.cli.bench", "benchmarks that print speed, memory and quality figures"),
    "models": ("kil.cli.models", "feature backends: where each looks for weights and whether they are present"),
    "features": ("kil.cli.features", "train the dense descriptor net on simulated views"),
    "keypoints": ("kil.cli.keypoints", "show the task's keypoints found in a recorded episode (PNG)"),
    "bag": ("kil.cli.bag", "inspect or recover rosbag2 episodes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kil", description="Keypoint imitation learning as a ROS 2 node graph.")
    parser.add_argument("--version", action="version", version=f"kil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        impl = importlib.import_module(module)
        impl.add_arguments(command)
        command.set_defaults(handler=impl.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KilError as err:
        print(f"kil {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a file the checks before could not foresee (disk full, a file vanished): one line, not a traceback
        print(f"kil {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kil {args.command}: interrupted", file=sys.stderr)
        return 130
