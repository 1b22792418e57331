"""The contract between a node's logic (a stage) and the runtimes that wire it into a graph.

A stage is a plain class with a config dataclass. It declares

* inputs, by decorating methods: ``@subscribe(state=RobotState)`` is called with each
  message; ``@subscribe(rgbd=RGBD, features=FeatureMap)`` with sets of messages sharing a
  stamp (within ``slop_s``); ``@subscribe_any()`` with ``(port, msg)`` for whatever ports
  the graph description connects (a recorder);
* outputs, in ``outputs = {"port": MessageClass}``, published with ``self.io.publish``;
* timers, with ``@every(hz="rate_hz")`` (a config field) or ``@every(period_s=0.01)``;
* services, with ``@service("clear_estop")`` on a method returning ``(success, message)``;
* which config fields may change while it runs (``live_params``; ``ros2 param set`` on any
  other is refused), applied through `reconfigure`;
* whether it is a simulator that drives the clock (``drives_clock``): under ROS 2 with
  ``use_sim_time`` its node publishes /clock and runs its timers on the simulated time it
  advances itself, at most `real_time_factor` times as fast as the wall clock.

An input marked ``latest`` only ever needs its newest message (a camera frame, a feature
map): a node still busy with the previous one skips those that came in between instead of
working through a queue of old frames.

It receives a `StageIO` from the runtime for publishing, the clock, TF and logging, and
never learns whether it runs in one process or as a ROS 2 node. Stages never import ROS.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from kil.errors import ConfigError

_SUBSCRIPTION_ATTR = "_kil_subscription"
_TIMER_ATTR = "_kil_timer"
_SERVICE_ATTR = "_kil_service"


@dataclass(frozen=True)
class Subscription:
    """A callback on one or more input ports (port -> message class; empty for any port)."""

    method: str
    ports: dict[str, type]
    slop_s: float = 0.0
    any_port: bool = False
    optional: bool = False  # a single-port input the graph may leave unconnected
    latest: tuple[str, ...] = ()  # ports of which only the newest unprocessed message matters


@dataclass(frozen=True)
class TimerSpec:
    """A periodic callback; `hz` or `period_s` is a number or the name of a config field."""

    method: str
    hz: float | str | None = None
    period_s: float | str | None = None

    def period_ns(self, config: Any) -> int:
        """The period in integer nanoseconds for a stage config."""
        value = self.hz if self.hz is not None else self.period_s
        if isinstance(value, str):
            value = getattr(config, value)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"timer {self.method}: {'rate' if self.hz is not None else 'period'} must be > 0, got {value!r}")
        return int(round(1e9 / value if self.hz is not None else value * 1e9))


def subscribe(slop_s: float = 0.0, optional: bool = False, latest: bool | tuple[str, ...] = False, **ports: type) -> Callable:
    """Decorate a method taking one message per port (in keyword order), matched by stamp.
    An `optional` (single) port may be left unconnected by the graph. `latest` (True: every
    port, or the names of some) marks ports of which a busy node only wants the newest
    message: older ones that arrived meanwhile are skipped, not queued."""
    if not ports:
        raise TypeError("subscribe() needs at least one port=MessageClass")
    if optional and len(ports) != 1:
        raise TypeError("subscribe(optional=True) takes exactly one port")
    newest = tuple(ports) if latest is True else tuple(latest or ())
    if set(newest) - set(ports):
        raise TypeError(f"subscribe(latest=...) names ports it does not declare: {sorted(set(newest) - set(ports))}")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _SUBSCRIPTION_ATTR, Subscription(fn.__name__, dict(ports), slop_s, optional=optional, latest=newest))
        return fn

    return mark


def subscribe_any() -> Callable:
    """Decorate a method ``(port, msg)`` called for every port the graph connects to this node
    beyond the declared ones; message types come from the graph's topics."""

    def mark(fn: Callable) -> Callable:
        setattr(fn, _SUBSCRIPTION_ATTR, Subscription(fn.__name__, {}, any_port=True))
        return fn

    return mark


def service(name: str) -> Callable:
    """Decorate a method ``() -> (success, message)`` callable from outside the graph: a
    std_srvs/Trigger service ``~/<name>`` in ROS 2, `LocalRuntime.call_service` locally."""

    def mark(fn: Callable) -> Callable:
        setattr(fn, _SERVICE_ATTR, name)
        return fn

    return mark


def every(*, hz: float | str | None = None, period_s: float | str | None = None) -> Callable:
    """Decorate a method to run periodically (first call one period after start)."""
    if (hz is None) == (period_s is None):
        raise TypeError("every() takes exactly one of hz= or period_s=")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _TIMER_ATTR, TimerSpec(fn.__name__, hz, period_s))
        return fn

    return mark


class StageIO(Protocol):
    """What a runtime offers a stage."""

    log: logging.Logger

    def publish(self, port: str, msg: Any) -> None:
        """Publish on an output port (a no-op when the graph leaves the port unconnected)."""

    def now_ns(self) -> int:
        """Current time of the runtime's clock (simulated or real) in nanoseconds."""

    def topic(self, port: str) -> Any:
        """The graph's TopicSpec a port is connected to (None if unconnected): a recorder
        writes each message under that topic's ROS names and options."""

    def lookup_transform(self, parent: str, child: str, stamp_ns: int | None = None) -> np.ndarray:
        """(4, 4) pose of `child` in `parent` at `stamp_ns` (None: latest); TransformError if unknown."""

    def send_transform(self, parent: str, child: str, T: np.ndarray, stamp_ns: int, static: bool = False) -> None:
        """Broadcast the pose of `child` in `parent` on TF."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Run `callback` once after `delay_s` seconds of runtime clock."""

    def shutdown(self, reason: str) -> None:
        """Ask the runtime to stop the whole graph (a finished episode, a fatal condition)."""


@dataclass(frozen=True)
class EmptyConfig:
    """Config of stages without parameters."""


class Stage:
    """Base class of every node's logic."""

    Config: ClassVar[type] = EmptyConfig
    outputs: ClassVar[Mapping[str, type]] = {}
    # Config fields (dotted names of nested ones) that may change while the node runs; a
    # change is validated through Config and handed to `reconfigure`. All others are fixed.
    live_params: ClassVar[frozenset[str]] = frozenset()
    # A simulator: it advances simulated time itself (see the module docstring).
    drives_clock: ClassVar[bool] = False

    def __init__(self, config: Any, io: StageIO) -> None:
        self.config = config
        self.io = io

    def reconfigure(self, config: Any) -> None:
        """Take a new, validated config that differs only in `live_params` fields. Stages
        that derive state from those fields at construction override this."""
        self.config = config

    @property
    def real_time_factor(self) -> float:
        """A clock-driving stage's pace: simulated seconds per wall-clock second, at most."""
        return 1.0

    def start(self) -> None:
        """Called once every stage of the graph exists, before the clock starts."""

    def stop(self) -> None:
        """Called once when the graph stops: flush and close files here."""

    @classmethod
    def subscriptions(cls) -> list[Subscription]:
        return [getattr(fn, _SUBSCRIPTION_ATTR) for fn in _members(cls) if hasattr(fn, _SUBSCRIPTION_ATTR)]

    @classmethod
    def timers(cls) -> list[TimerSpec]:
        return [getattr(fn, _TIMER_ATTR) for fn in _members(cls) if hasattr(fn, _TIMER_ATTR)]

    @classmethod
    def services(cls) -> dict[str, str]:
        """Service name -> method name."""
        return {getattr(fn, _SERVICE_ATTR): fn.__name__ for fn in _members(cls) if hasattr(fn, _SERVICE_ATTR)}

    @classmethod
    def optional_ports(cls) -> set[str]:
        """Input ports the graph may leave unconnected."""
        return {port for sub in cls.subscriptions() if sub.optional for port in sub.ports}

    @classmethod
    def input_ports(cls) -> dict[str, type]:
        """Declared input port -> message class."""
        ports: dict[str, type] = {}
        for sub in cls.subscriptions():
            ports.update(sub.ports)
        return ports

    @classmethod
    def accepts_any_port(cls) -> bool:
        return any(sub.any_port for sub in cls.subscriptions())


def _members(cls: type) -> list[Any]:
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            seen[name] = value
    return [seen[name] for name in sorted(seen)]


def load_stage_class(name: str, where: str) -> type[Stage]:
    """The stage class called `name`: module ``kil.stages.<name>``, or a dotted module path,
    whose ``STAGE`` attribute is the class."""
    module_name = name if "." in name else f"kil.stages.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ConfigError(f"{where}: unknown stage {name!r} (no module {module_name})") from None
        raise
    stage = getattr(module, "STAGE", None)
    if not (isinstance(stage, type) and issubclass(stage, Stage)):
        raise ConfigError(f"{where}: module {module_name} has no STAGE class deriving from kil.stage.Stage")
    if not dataclasses.is_dataclass(stage.Config):
        raise ConfigError(f"{where}: {stage.__name__}.Config is not a dataclass")
    unknown = sorted(stage.live_params - set(config_fields(stage.Config)))
    if unknown:
        raise ConfigError(f"{where}: {stage.__name__}.live_params names no field of its Config: {', '.join(unknown)}")
    return stage


def config_fields(config_class: type, prefix: str = "") -> list[str]:
    """Dotted names of a config dataclass's leaf fields (nested dataclasses expanded)."""
    import typing

    hints = typing.get_type_hints(config_class)
    names: list[str] = []
    for f in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(hints[f.name]):
            names.extend(config_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            names.append(f"{prefix}{f.name}")
    return names
