"""`kil bag`: inspect or recover rosbag2 episodes."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("info", "recover", "preview"),
        help="info: topics and episode metadata; recover: rebuild a killed or cut recording from its complete chunks; preview: PNG of camera frames",
    )
    parser.add_argument("episodes", nargs="+", help="episode (rosbag2) directories")
    parser.add_argument("--out", default=None, help="preview: PNG path (default: <episode>/preview.png)")


def main(args: argparse.Namespace) -> int:
    from kil.config import to_plain
    from kil.data.bag import EpisodeReader, needs_recovery, recover_episode
    from kil.data.preview import episode_preview

    console = Console()
    for path in args.episodes:
        if args.action == "preview":
            out = args.out if args.out and len(args.episodes) == 1 else f"{path}/preview.png"
            console.print(f"{path}: wrote {episode_preview(path, out)}")
            continue
        if args.action == "recover":
            if not needs_recovery(path):
                recover_episode(path)  # a one-line error for what recovery cannot fix
                console.print(f"{path}: complete, nothing to recover")
            else:
                console.print(f"{path}: recovered {recover_episode(path)} messages (the damaged file is kept beside them as *.partial)")
            continue
        reader = EpisodeReader(path, recover=False)
        table = Table(title=str(path))
        table.add_column("topic")
        table.add_column("type")
        table.add_column("messages", justify="right")
        for topic, (msgtype, count) in sorted(reader.topics().items()):
            table.add_row(topic, msgtype, str(count))
        console.print(table)
        if reader.metadata is not None:
            console.print(to_plain(reader.metadata))
    return 0
