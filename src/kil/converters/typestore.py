"""rosbags typestores for the ROS 2 distros kil targets, plus the message packages they lack.

The rosbags Humble and Jazzy stores hold the core message packages; control_msgs,
franka_msgs and quest2ros are registered here from the `.msg` and `.action` files kept in
`msgdefs/`, each naming its source, so bags and CDR checks use the real definitions. An
action ``pkg/action/Name`` gives the messages ``pkg/action/Name_Goal``, ``_Result`` and
``_Feedback``, as rosidl names them.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

Distro = Literal["humble", "jazzy"]
DISTROS: tuple[Distro, ...] = ("humble", "jazzy")
_STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


ACTION_PARTS = ("Goal", "Result", "Feedback")


def extra_msgdefs() -> dict[str, str]:
    """{'pkg/msg/Name' or 'pkg/action/Name_Goal': definition text} for every .msg and .action
    file shipped in kil.converters.msgdefs."""
    root = resources.files("kil.converters") / "msgdefs"
    defs = {}
    for package in sorted(root.iterdir(), key=lambda p: p.name):
        for kind, suffix in (("msg", ".msg"), ("action", ".action")):
            folder = package / kind
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir(), key=lambda p: p.name):
                if not entry.name.endswith(suffix):
                    continue
                name, text = entry.name[: -len(suffix)], entry.read_text(encoding="utf-8")
                if kind == "msg":
                    defs[f"{package.name}/msg/{name}"] = text
                    continue
                parts = text.split("\n---")
                if len(parts) != 3:
                    raise ValueError(f"{entry}: an action has three parts separated by ---, found {len(parts)}")
                for part, body in zip(ACTION_PARTS, parts):
                    defs[f"{package.name}/action/{name}_{part}"] = _qualify(body, package.name)
    return defs


def _qualify(definition: str, package: str) -> str:
    """Field types of an action part written unqualified (``GripperCommand command``) name
    messages of the same package: spell them ``pkg/msg/Name`` for the parser."""
    lines = []
    for line in definition.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[0][:1].isupper() and "/" not in fields[0]:
            line = line.replace(fields[0], f"{package}/msg/{fields[0]}", 1)
        lines.append(line)
    return "\n".join(lines)


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
