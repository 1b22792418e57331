"""`kil models list`: every feature backend config, where it looks for weights, and whether
they are present (nothing is loaded or downloaded)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list",), help="list: backends and their weights")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kil.errors import ConfigError
    from kil.paths import share_dir
    from kil.perception.features.base import describe

    table = Table("config", "backend", "weights", "present")
    for path in sorted((share_dir() / "config" / "features").glob("*.yaml")):
        try:
            backend, status = describe(path)
            table.add_row(path.stem, backend, status.location, "yes" if status.present else f"no ({status.detail})")
        except ConfigError as err:
            table.add_row(path.stem, "?", str(err), "no")
    Console(width=160).print(table)
    return 0
