"""Backends found by name, and the weights they load: a module ``kil.perception.<kind>.<name>`` whose ``BACKEND`` class
derives from the kind's base class, configured by ``config/<kind>/<name>.yaml`` (or any YAML
file) that names it in ``backend:``. Feature extractors and segmenters are both found so."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from kil.config import load_dataclass, load_yaml
from kil.errors import ConfigError
from kil.paths import share_dir


@dataclass(frozen=True)
class BackendKind:
    """package: the subpackage of kil.perception holding the backends (also the config
    directory's name); base: the class every BACKEND derives from; title: how errors name
    it ("feature backend"); helpers: modules of the package that are not backends."""

    package: str
    base: type
    title: str
    helpers: tuple[str, ...] = ("__init__", "base")

    def names(self) -> list[str]:
        here = Path(__file__).parent / self.package
        return sorted(p.stem for p in here.glob("*.py") if p.stem not in self.helpers)

    def config_path(self, name_or_path: str | Path) -> Path:
        """An existing YAML path, or a name under config/<package>/."""
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml"):
            return path
        return share_dir() / "config" / self.package / f"{name_or_path}.yaml"

    def backend_class(self, name: str, where: str) -> type:
        """The BACKEND class of module kil.perception.<package>.<name>."""
        module_name = f"kil.perception.{self.package}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                raise ConfigError(f"{where}backend: unknown {self.title} {name!r} (known: {', '.join(self.names())})") from None
            raise ConfigError(f"{where}backend: {name} needs the Python package {err.name!r}, which is not installed") from None
        cls = getattr(module, "BACKEND", None)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ConfigError(f"{where}backend: {module_name} has no BACKEND class deriving from {self.base.__name__}")
        return cls

    def load_config(self, name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[type, Any, Path]:
        """The backend class, its validated config (the class's `Config`) and the YAML path."""
        path = self.config_path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"{path}: no {self.title} config (known: {', '.join(p.stem for p in sorted(path.parent.glob('*.yaml')))})")
        data = load_yaml(path) or {}
        if not isinstance(data, dict) or "backend" not in data:
            raise ConfigError(f"{path}: backend: required key is missing")
        data = {**data, **(overrides or {})}
        cls = self.backend_class(str(data["backend"]), f"{path}: ")
        return cls, load_dataclass(cls.Config, data, f"{path}:"), path


@dataclass(frozen=True)
class WeightsStatus:
    """Where a backend looks for its weights and whether they are there."""

    location: str
    present: bool
    detail: str = ""


class WeightedBackend:
    """What every backend shares: its config (with `backend`, `weights`, `device`), the YAML
    it came from, the device, and a checked weights location. Subclasses set `title`,
    `needs_weights`, `weights_expect`."""

    title: ClassVar[str] = "model"
    needs_weights: ClassVar[bool] = True
    weights_expect: ClassVar[str | None] = "config.json"  # file a checkpoint directory must hold

    def _open(self, config: Any, source: Path | None) -> None:
        """Keep the config; choose the device ("auto": the GPU where present); fail on missing
        weights with one line naming the key and the path tried. `source`: the YAML file."""
        self.config = config
        self.source = source
        self.where = f"{source}: " if source else ""
        self.device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if config.device == "auto" else config.device))
        status = self.check_weights(config, source)
        if not status.present:
            raise ConfigError(f"{self.where}weights: no {self.title} checkpoint at {status.location} ({status.detail})")

    @property
    def name(self) -> str:
        return self.config.backend

    @classmethod
    def check_weights(cls, config: Any, source: Path | None) -> WeightsStatus:
        """Where this backend looks for its weights and whether they are there."""
        if not cls.needs_weights:
            return WeightsStatus("(none: computed)", True, "no weights needed")
        return weights_status(resolve_weights(config.weights, source), cls.weights_expect)

    def weights_path(self) -> Path | str:
        """The weights as a local Path, or the hub id string when it is not a local path."""
        return resolve_weights(self.config.weights, self.source)


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "/", "~")) and " " not in value


def resolve_weights(value: str, source: Path | None) -> Path | str:
    """A config's `weights` value as a local Path (relative to the YAML file, `~` expanded), or
    the string itself when it is a hub id ("org/name") that is not a local path."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = ((source.parent if source else Path.cwd()) / path).resolve()
    if not path.exists() and _looks_like_hub_id(value):
        return value
    return path


def weights_status(weights: Path | str, expect: str | None) -> WeightsStatus:
    """Present when the local path exists (with `expect` inside, for a directory), or when a
    hub id is already in the local hub cache."""
    if isinstance(weights, str):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(weights, expect or "config.json")
        except Exception:  # noqa: BLE001 - any hub error means "not available offline"
            cached = None
        present = isinstance(cached, str)
        return WeightsStatus(f"hub id {weights}", present, "in the hub cache" if present else "not in the local hub cache")
    if not weights.exists():
        return WeightsStatus(str(weights), False, "no such file or directory")
    if weights.is_dir() and expect and not (weights / expect).is_file():
        return WeightsStatus(str(weights), False, f"{expect} missing")
    return WeightsStatus(str(weights), True, "found")
