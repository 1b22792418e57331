"""Typed dataclass configs: keys, types and rules are checked at load with one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from kil.config import load_dataclass, load_yaml, require, to_plain
from kil.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    gain: float = 1.0
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    rate_hz: float
    names: tuple[str, ...] = ()
    inner: Inner = Inner()
    path: Path | None = None
    limits: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] = (1, 2)

    def __post_init__(self):
        require(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")


def test_valid_data_is_converted():
    cfg = load_dataclass(Outer, {"rate_hz": 10, "names": ["x"], "inner": {"gain": "1e-3"}, "path": "/tmp/a", "size": [3, 4]}, "f.yaml:")
    assert cfg == Outer(10.0, ("x",), Inner(0.001), Path("/tmp/a"), {}, (3, 4))
    assert to_plain(cfg)["path"] == "/tmp/a" and to_plain(cfg)["names"] == ["x"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rate_hz": "fast"}, "f.yaml: rate_hz: expected float, got 'fast'"),
        ({"rate_hz": True}, "f.yaml: rate_hz: expected float, got True"),
        ({"rate_hz": 1, "typo": 2}, "f.yaml: typo: unknown key (known: rate_hz, names, inner, path, limits, size)"),
        ({}, "f.yaml: rate_hz: required key is missing"),
        ({"rate_hz": 1, "inner": {"mode": "c"}}, "f.yaml: inner.mode: expected one of 'a', 'b', got 'c'"),
        ({"rate_hz": 1, "limits": {"x": "y"}}, "f.yaml: limits.x: expected float, got 'y'"),
        ({"rate_hz": 1, "size": [1]}, "f.yaml: size: expected 2 items, got 1"),
        ({"rate_hz": 1, "names": [1]}, "f.yaml: names[0]: expected str, got 1"),
        ({"rate_hz": -1}, "f.yaml: rate_hz: must be > 0, got -1.0"),
        ([1, 2], "f.yaml: expected a mapping for Outer, got [1, 2]"),
    ],
)
def test_errors_name_file_and_key(data, message):
    with pytest.raises(ConfigError) as info:
        load_dataclass(Outer, data, "f.yaml:")
    assert str(info.value) == message


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_yaml(tmp_path / "missing.yaml")
