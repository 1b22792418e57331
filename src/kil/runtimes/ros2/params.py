"""Stage config dataclasses <-> flat ROS 2 parameters (pure Python; no rclpy needed).

Nested dataclasses flatten to dotted names (``camera.fx``). Fields of a type ROS
parameters can hold (bool, int, float, str, paths, enums, literals, homogeneous lists of
those) map one to one; anything else (optional values, mappings, nested lists), and empty
lists, which have no ROS parameter type, travel as YAML strings. Reading back always goes through `load_dataclass`, so a parameter set from a
launch file or ``ros2 param set`` is validated exactly like a graph YAML value.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from pathlib import Path
from typing import Any

import yaml

from kil.config import load_dataclass, to_plain

_SCALARS = (bool, int, float, str, Path)


def _is_scalar(tp: Any) -> bool:
    if tp in _SCALARS:
        return True
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return True
    return typing.get_origin(tp) is typing.Literal and all(isinstance(a, (str, int, float, bool)) for a in typing.get_args(tp))


def is_native(tp: Any) -> bool:
    """Whether a field type maps directly onto a ROS 2 parameter type."""
    if _is_scalar(tp):
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and args:
        items = [a for a in args if a is not Ellipsis]
        return len({a for a in items}) == 1 and _is_scalar(items[0])
    return False


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted name: ROS parameter value} for a config dataclass instance."""
    hints = typing.get_type_hints(type(config))
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        name = f"{prefix}{field.name}"
        value = getattr(config, field.name)
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            flat.update(flatten_config(value, f"{name}."))
        elif is_native(tp):
            plain = to_plain(value)
            if isinstance(plain, (list, tuple)):
                # An empty list has no ROS parameter type (launch_ros rejects it): send "[]".
                plain = list(plain) if plain else "[]"
            flat[name] = plain
        else:
            flat[name] = yaml.safe_dump(to_plain(value), default_flow_style=True).strip().removesuffix("...").strip()
    return flat


def config_from_parameters(config_class: type, flat: dict[str, Any], where: str) -> Any:
    """Rebuild and validate a config dataclass from flat parameter values."""
    return load_dataclass(config_class, _nest(config_class, flat, ""), where)


def _nest(config_class: type, flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(config_class)
    data: dict[str, Any] = {}
    for field in dataclasses.fields(config_class):
        name = f"{prefix}{field.name}"
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            data[field.name] = _nest(tp, flat, f"{name}.")
        elif name in flat:
            value = flat[name]
            if isinstance(value, str) and (not is_native(tp) or typing.get_origin(tp) in (list, tuple)):
                value = yaml.safe_load(value)
            elif isinstance(value, (list, tuple)):
                value = list(value)
            data[field.name] = value
    return data
