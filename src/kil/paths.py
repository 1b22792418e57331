"""Where kil's shared files (config/, launch/) are: the source tree or colcon's share/kil."""

from __future__ import annotations

from pathlib import Path

from kil.errors import ConfigError


def share_dir() -> Path:
    """The directory holding config/ and launch/.

    A source checkout (pip install -e) uses the repository root; a colcon install uses
    share/kil from the ament index.
    """
    repo = Path(__file__).resolve().parents[2]
    if (repo / "config").is_dir() and (repo / "package.xml").is_file():
        return repo
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("kil"))
    except Exception as err:  # ImportError, or PackageNotFoundError from ament_index
        raise ConfigError(f"cannot find kil's config/ beside {repo} or in the ament index ({err})") from err


def graph_path(name_or_path: str | Path) -> Path:
    """A graph description: an existing file path, or a name under config/graphs/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return share_dir() / "config" / "graphs" / f"{name_or_path}.yaml"


def check_creatable(path: str | Path, option: str) -> None:
    """A directory can be made at `path`: its nearest existing ancestor is a writable
    directory (tried with a temporary directory, not guessed from permission bits, which
    root and read-only mounts defeat). A one-line ConfigError naming `option` otherwise."""
    import tempfile

    parent = Path(path).absolute()
    if parent.is_dir():
        target = parent
    else:
        target = parent.parent
        while not target.exists() and target != target.parent:
            target = target.parent
    if not target.is_dir():
        raise ConfigError(f"{option}: cannot create {path}: {target} is not a directory")
    try:
        tempfile.TemporaryDirectory(dir=target, prefix=".kil-write-test-").cleanup()
    except OSError as err:
        raise ConfigError(f"{option}: cannot write to {target} ({err.strerror or err})") from None
