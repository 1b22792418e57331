"""rosbags typestores for the ROS 2 distros kil targets, plus the message packages they lack.

The rosbags Humble and Jazzy stores hold the core message packages; control_msgs (and later
franka_msgs, quest2ros) are registered here from the `.msg` files kept in `msgdefs/`,
each naming its source, so bags and CDR checks use the real definitions.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

Distro = Literal["humble", "jazzy"]
DISTROS: tuple[Distro, ...] = ("humble", "jazzy")
_STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


def extra_msgdefs() -> dict[str, str]:
    """{'pkg/msg/Name': definition text} for every .msg file shipped in kil.converters.msgdefs."""
    root = resources.files("kil.converters") / "msgdefs"
    defs = {}
    for package in sorted(root.iterdir(), key=lambda p: p.name):
        msg_dir = package / "msg"
        if not msg_dir.is_dir():
            continue
        for entry in sorted(msg_dir.iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".msg"):
                defs[f"{package.name}/msg/{entry.name[:-4]}"] = entry.read_text(encoding="utf-8")
    return defs


@lru_cache(maxsize=None)
def ros2_typestore(distro: Distro = "jazzy") -> Any:
    """The rosbags typestore of `distro` with kil's extra message packages registered.

    Cached: typestores are immutable once built here, so sharing one is safe.
    """
    if distro not in _STORES:
        raise ValueError(f"unknown ROS 2 distro {distro!r} (known: {', '.join(DISTROS)})")
    store = get_typestore(_STORES[distro])
    types: dict[str, Any] = {}
    for name, text in extra_msgdefs().items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store
