"""Message factories: the one place that knows whose ROS 2 message classes are in use.

Converters build messages through `factory.new("sensor_msgs/msg/Image", height=..., ...)`
and only name the fields they set; the factory fills the rest with ROS defaults. The same
converter code therefore builds rclpy messages on a robot (`RclpyFactory`) and `rosbags`
typestore messages for bags and tests (`TypestoreFactory`), whose CDR serialisation checks
that the result is a valid ROS 2 message of the distro's definition.
Arrays of primitives may be passed as numpy arrays or lists in either case.
"""

from __future__ import annotations

import array
import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from kil.errors import MessageError

# rosbags base type names -> numpy dtypes (char and byte are uint8 in ROS 2 CDR).
_PRIMITIVE_DTYPES = {
    "bool": np.bool_,
    "byte": np.uint8,
    "char": np.uint8,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "float32": np.float32,
    "float64": np.float64,
}


# Non-zero field defaults of the ROS 2 definitions, which rosbags' parsed types do not keep.
_ROS_DEFAULTS = {"geometry_msgs/msg/Quaternion": {"w": 1.0}}


class MessageFactory(Protocol):
    """Builds ROS 2 messages by type name (``pkg/msg/Name``)."""

    def new(self, typename: str, **fields: Any) -> Any:
        """A message of `typename` with `fields` set and every other field at its default."""
        ...


class TypestoreFactory:
    """Builds `rosbags` typestore messages (used for bags and for CDR checks in tests)."""

    def __init__(self, typestore: Any) -> None:
        self.typestore = typestore

    def new(self, typename: str, **fields: Any) -> Any:
        try:
            cls = self.typestore.types[typename]
            _, fielddefs = self.typestore.fielddefs[typename]
        except KeyError:
            raise MessageError(f"{typename}: message type unknown to the typestore") from None
        values = {}
        defaults = _ROS_DEFAULTS.get(typename, {})
        for name, desc in fielddefs:
            if name in defaults and name not in fields:
                values[name] = defaults[name]
            elif name in fields:
                values[name] = self._coerce(typename, name, desc, fields.pop(name))
            else:
                values[name] = self._default(desc)
        if fields:
            raise MessageError(f"{typename}: no field(s) {', '.join(sorted(fields))}")
        return cls(**values)

    def _coerce(self, typename: str, name: str, desc: Any, value: Any) -> Any:
        kind, spec = desc[0].name, desc[1]
        if kind in ("ARRAY", "SEQUENCE"):
            (item_kind, item_spec), length = (spec[0][0].name, spec[0][1]), spec[1]
            if item_kind == "BASE" and item_spec[0] in _PRIMITIVE_DTYPES:
                value = np.asarray(value, dtype=_PRIMITIVE_DTYPES[item_spec[0]])
                if value.ndim != 1:
                    value = value.reshape(-1)
                if kind == "ARRAY" and len(value) != length:
                    raise MessageError(f"{typename}.{name}: expected {length} values, got {len(value)}")
                return value
            return list(value)
        return value

    def _default(self, desc: Any) -> Any:
        kind, spec = desc[0].name, desc[1]
        if kind == "BASE":
            base = spec[0]
            if base in ("string", "wstring"):
                return ""
            if base == "bool":
                return False
            return 0.0 if base.startswith("float") else 0
        if kind == "NAME":
            return self.new(spec)
        item, length = spec
        if item[0].name == "BASE" and item[1][0] in _PRIMITIVE_DTYPES:
            return np.zeros(length if kind == "ARRAY" else 0, dtype=_PRIMITIVE_DTYPES[item[1][0]])
        return [self._default(item) for _ in range(length if kind == "ARRAY" else 0)]


@contextlib.contextmanager
def _installed(typename: str) -> Iterator[None]:
    """A missing interface package is a one-line MessageError naming it."""
    try:
        yield
    except (ModuleNotFoundError, AttributeError, ValueError) as err:
        package = typename.split("/")[0]
        raise MessageError(f"ROS 2 type {typename} is not available ({err}): build or install the {package} package "
                           "in the workspace this node runs in") from None


class RclpyFactory:
    """Builds rclpy messages (imports ROS 2 Python packages on first use only)."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}

    def message_class(self, typename: str) -> type:
        if typename not in self._classes:
            from rosidl_runtime_py.utilities import get_action, get_message

            action, _, part = typename.rpartition("_")
            with _installed(typename):
                if "/action/" in typename and part in ("Goal", "Result", "Feedback"):
                    # an action's parts are attributes of the action class (pkg/action/Name_Goal -> Name.Goal)
                    self._classes[typename] = getattr(get_action(action), part)
                else:
                    self._classes[typename] = get_message(typename)
        return self._classes[typename]

    def action_class(self, action_type: str) -> type:
        """The rclpy action type ``pkg/action/Name``."""
        from rosidl_runtime_py.utilities import get_action

        with _installed(action_type):
            return get_action(action_type)

    def new(self, typename: str, **fields: Any) -> Any:
        msg = self.message_class(typename)()
        for name, value in fields.items():
            try:
                current = getattr(msg, name)
            except AttributeError:
                raise MessageError(f"{typename}: no field {name}") from None
            if isinstance(current, array.array):
                # rclpy sequences of primitives are array.array; bulk-copy numpy data.
                packed = array.array(current.typecode)
                packed.frombytes(np.ascontiguousarray(value, dtype=np.dtype(current.typecode)).tobytes())
                value = packed
            elif isinstance(current, np.ndarray):
                value = np.asarray(value, dtype=current.dtype)
            setattr(msg, name, value)
        return msg


def stamp_msg(factory: MessageFactory, stamp_ns: int) -> Any:
    """builtin_interfaces/Time from integer nanoseconds."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return factory.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)


def duration_msg(factory: MessageFactory, duration_ns: int) -> Any:
    """builtin_interfaces/Duration from integer nanoseconds."""
    sec, nanosec = divmod(int(duration_ns), 1_000_000_000)
    return factory.new("builtin_interfaces/msg/Duration", sec=sec, nanosec=nanosec)


def header_msg(factory: MessageFactory, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header."""
    return factory.new("std_msgs/msg/Header", stamp=stamp_msg(factory, stamp_ns), frame_id=frame_id)


def time_ns(time: Any) -> int:
    """Integer nanoseconds of a builtin_interfaces Time or Duration message."""
    return int(time.sec) * 1_000_000_000 + int(time.nanosec)


def as_bytes(data: Any) -> np.ndarray:
    """A uint8[] field (numpy, array.array, bytes, list) as a flat uint8 array, without copying."""
    if isinstance(data, list):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)
