"""Typed dataclass configs, validated at load time with one-line errors.

Every config in the project is a dataclass. `load_dataclass` builds one from plain data
(YAML, ROS parameters, CLI overrides): unknown keys, wrong types and rule violations raise
`ConfigError` naming the file and key path, e.g.
``config/graphs/toy.yaml: nodes.source.params.rate_hz: expected float, got 'fast'``.
Rules spanning fields live in the dataclass's ``__post_init__`` and raise ``ValueError``
through `require`, whose message the loader prefixes with the key path.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kil.errors import ConfigError

T = TypeVar("T")

_UNION_TYPES = (typing.Union, types.UnionType)


def require(condition: bool, field: str, message: str) -> None:
    """Raise ValueError("field: message") unless condition holds (for __post_init__ rules)."""
    if not condition:
        raise ValueError(f"{field}: {message}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming one key twice (PyYAML keeps the last
    silently, which would hide a mistake such as two keypoints of one name)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file, a syntax error or a duplicate key is a one-line
    ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}:{line} invalid YAML: {problem}") from err


def load_dataclass(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively.

    `where` names the place the data came from (file and key path) for error messages.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return _convert(cls, {} if data is None else data, where)


def to_plain(obj: Any) -> Any:
    """A dataclass config as plain YAML-able data (tuples become lists, Paths strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def type_name(tp: Any) -> str:
    """Readable name of a type annotation for error messages."""
    origin = typing.get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", repr(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
    if origin in _UNION_TYPES:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    return f"{getattr(origin, '__name__', origin)}[{args}]"


def key_path(where: str, key: Any) -> str:
    """Join a location and a key: "file.yaml:" + "a" -> "file.yaml: a"; "x" + "a" -> "x.a"."""
    if not where:
        return str(key)
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _loc(where: str) -> str:
    return where.rstrip(":")


def _fail(where: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{_loc(where)}: expected {type_name(tp)}, got {value!r}")


def _convert(tp: Any, value: Any, where: str) -> Any:  # noqa: C901 - one branch per type form
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where)
    if origin in _UNION_TYPES:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError:
                continue
        raise _fail(where, tp, value)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{_loc(where)}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{_loc(where)}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _fail(where, tp, value)
        key_tp, val_tp = args or (Any, Any)
        return {
            _convert(key_tp, k, key_path(where, k)): _convert(val_tp, v, key_path(where, k))
            for k, v in value.items()
        }
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value in (member.value, member.name):
                return member
        choices = ", ".join(repr(m.value) for m in tp)
        raise ConfigError(f"{_loc(where)}: expected one of {choices}, got {value!r}")
    else:
        raise TypeError(f"{_loc(where)}: unsupported config annotation {tp!r}")
    raise _fail(where, tp, value)


def _convert_dataclass(cls: type, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_loc(where)}: expected a mapping for {cls.__name__}, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, value)) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ConfigError(f"{key_path(where, unknown[0])}: unknown key (known: {known})")
    kwargs = {}
    for name, field in fields.items():
        key_where = key_path(where, name)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], key_where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_where}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{_loc(where)}: {err}" if where else str(err)) from err
