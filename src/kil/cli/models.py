"""`kil models list`: every feature, segmentation and tracker backend config, where it looks for
weights, and whether they are present (nothing is loaded or downloaded)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list",), help="list: backends and their weights")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kil.errors import ConfigError
    from kil.paths import share_dir
    from kil.perception.features.base import FEATURES
    from kil.perception.segmentation.base import SEGMENTERS
    from kil.perception.trackers.base import TRACKERS

    for kind in (FEATURES, SEGMENTERS, TRACKERS):
        table = Table("config", "backend", "weights", "present", title=f"{kind.title}s (config/{kind.package}/)")
        for path in sorted((share_dir() / "config" / kind.package).glob("*.yaml")):
            try:
                cls, config, source = kind.load_config(path)
                status = cls.check_weights(config, source)
                table.add_row(path.stem, config.backend, status.location, "yes" if status.present else f"no ({status.detail})")
            except ConfigError as err:
                table.add_row(path.stem, "?", str(err), "no")
        Console(width=160).print(table)
    return 0
