"""Keypoints <-> sensor_msgs/PointCloud2, and -> visualization_msgs/MarkerArray for RViz.

The cloud has one point per keypoint with fields x, y, z (metres, base frame; NaN where not
visible, so RViz skips them), u, v (pixels), score, instance, index (into the keypoint
names, which the reference spec defines), visible, layout (CRC-32 of the names, the same in
every point), and with similarity vectors s0..s<N-1>. The names themselves travel beside the
cloud (`names_text`, a latched std_msgs/String). Readers look fields up by name, so a cloud
laid out differently by another publisher still reads.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Sequence

import numpy as np

from kil.converters.factory import MessageFactory, as_bytes, duration_msg, header_msg, time_ns
from kil.converters.pose import point_msg, pose_msg
from kil.errors import MessageError
from kil.msgs import Keypoints
from kil.perception.draw import PALETTE

# sensor_msgs/PointField datatype constants
POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_CLOUD_FIELDS = (  # name, offset, datatype
    ("x", 0, 7),
    ("y", 4, 7),
    ("z", 8, 7),
    ("u", 12, 7),
    ("v", 16, 7),
    ("score", 20, 7),
    ("instance", 24, 5),
    ("index", 28, 6),
    ("visible", 32, 2),
    ("layout", 36, 6),
)
_POINT_STEP = 40
_REQUIRED = ("x", "y", "z", "u", "v", "score", "visible", "index")

# Marker constants (visualization_msgs/Marker)
SPHERE_LIST, TEXT_VIEW_FACING, ADD, DELETEALL = 7, 9, 0, 3
def _cloud_dtype(fields: Sequence[tuple[str, int, int]], itemsize: int, bigendian: bool = False) -> np.dtype:
    order = ">" if bigendian else "<"
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [order + POINTFIELD_DTYPES[f[2]] for f in fields],
            "offsets": [f[1] for f in fields],
            "itemsize": itemsize,
        }
    )


class NamesNotReceived(MessageError):
    """A cloud came before the names it refers to (a subscriber that just started)."""


def names_text(names: Sequence[str]) -> str:
    """The keypoint names as the text of their latched message (a JSON list)."""
    return json.dumps(list(names), separators=(",", ":"))


def names_from_text(text: str) -> tuple[str, ...]:
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise MessageError(f"keypoint names: expected a JSON list of strings, got {text[:80]!r}")
    return tuple(names)


def layout_id(names: Sequence[str]) -> int:
    """CRC-32 of the names' text: ties a cloud to the names its `index` field refers to."""
    return zlib.crc32(names_text(names).encode())


def _similarity_fields(n: int) -> list[tuple[str, int, int]]:
    """Fields s0..s<n-1> (float32) after the fixed ones: keypoint i's similarity vector."""
    return [(f"s{j}", _POINT_STEP + 4 * j, 7) for j in range(n)]


def keypoints_to_ros(factory: MessageFactory, keypoints: Keypoints) -> Any:
    """PointCloud2 (height 1, one point per keypoint) in the keypoints' base frame; with
    similarity vectors, fields s0..s<N-1> carry them."""
    n = len(keypoints)
    layout = list(_CLOUD_FIELDS)
    if keypoints.similarity is not None:
        layout += _similarity_fields(n)
    step = _POINT_STEP + (4 * n if keypoints.similarity is not None else 0)
    points = np.zeros(n, _cloud_dtype(layout, step))
    for axis, name in enumerate("xyz"):
        points[name] = keypoints.xyz[:, axis]
    points["u"], points["v"] = keypoints.uv[:, 0], keypoints.uv[:, 1]
    points["score"] = keypoints.score
    points["instance"] = keypoints.instance
    points["index"] = np.arange(n)
    points["visible"] = keypoints.visible
    points["layout"] = layout_id(keypoints.names)
    if keypoints.similarity is not None:
        for j in range(n):
            points[f"s{j}"] = keypoints.similarity[:, j]
    fields = [
        factory.new("sensor_msgs/msg/PointField", name=name, offset=offset, datatype=datatype, count=1)
        for name, offset, datatype in layout
    ]
    return factory.new(
        "sensor_msgs/msg/PointCloud2",
        header=header_msg(factory, keypoints.stamp_ns, keypoints.frame_id),
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=step,
        row_step=step * n,
        data=points.view(np.uint8).reshape(-1),
        is_dense=bool(np.all(keypoints.visible)),
    )


def keypoints_from_ros(msg: Any, names: Sequence[str] = ()) -> Keypoints:
    """Keypoints from a PointCloud2; `names` are indexed by the cloud's `index` field. A
    cloud with a `layout` field needs the names it was published with; one without (another
    publisher's) may go without names, keypoint k then being called "kp<k>"."""
    fields = {str(f.name): (str(f.name), int(f.offset), int(f.datatype)) for f in msg.fields}
    missing = [f for f in _REQUIRED if f not in fields]
    if missing:
        raise MessageError(f"PointCloud2.fields: keypoint cloud lacks {missing} (has {sorted(fields)})")
    if any(d not in POINTFIELD_DTYPES for _, _, d in fields.values()):
        raise MessageError(f"PointCloud2.fields: unknown datatype in {sorted(fields.values())}")
    n = int(msg.width) * int(msg.height)
    step = int(msg.point_step)
    data = as_bytes(msg.data)
    if data.size < n * step:
        raise MessageError(f"PointCloud2.data: {data.size} bytes for {n} points of {step} bytes")
    points = data[: n * step].view(_cloud_dtype(list(fields.values()), step, bool(msg.is_bigendian)))
    index = points["index"].astype(np.int64)
    if "layout" in fields and n:
        if not names:
            raise NamesNotReceived("PointCloud2: keypoint names not received yet (they are latched on the topic's /names companion)")
        if int(points["layout"][0]) != layout_id(names):
            raise MessageError(f"PointCloud2 layout field: the cloud was published with other keypoint names than {list(names)[:4]}...")
    if names:
        if np.any(index < 0) or np.any(index >= len(names)):
            raise MessageError(f"PointCloud2 index field: values {index.tolist()} outside the {len(names)} keypoint names")
        point_names = tuple(names[i] for i in index)
    else:
        point_names = tuple(f"kp{i}" for i in index)
    similarity = None
    if n and all(f"s{j}" in fields for j in range(n)):
        similarity = np.stack([points[f"s{j}"] for j in range(n)], axis=1).astype(np.float32)
    return Keypoints(
        stamp_ns=time_ns(msg.header.stamp),
        frame_id=str(msg.header.frame_id),
        names=point_names,
        uv=np.stack([points["u"], points["v"]], axis=1),
        xyz=np.stack([points["x"], points["y"], points["z"]], axis=1),
        score=points["score"],
        visible=points["visible"].astype(bool),
        instance=points["instance"].astype(np.int32) if "instance" in fields else None,
        similarity=similarity,
    )


def _colour(factory: MessageFactory, rgb: np.ndarray, alpha: float = 1.0) -> Any:
    r, g, b = (float(c) for c in rgb)
    return factory.new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=alpha)


def keypoints_to_markers(
    factory: MessageFactory, keypoints: Keypoints, *, namespace: str = "kil_keypoints", diameter: float = 0.02
) -> Any:
    """MarkerArray: DELETEALL, one SPHERE_LIST of the visible keypoints (coloured by index),
    and a TEXT_VIEW_FACING name label above each visible keypoint."""
    header = header_msg(factory, keypoints.stamp_ns, keypoints.frame_id)
    visible = np.flatnonzero(keypoints.visible)
    scale = point_msg(factory, np.full(3, diameter), "geometry_msgs/msg/Vector3")
    markers = [factory.new("visualization_msgs/msg/Marker", header=header, ns=namespace, action=DELETEALL)]
    lifetime = duration_msg(factory, 0)
    markers.append(
        factory.new(
            "visualization_msgs/msg/Marker",
            header=header,
            ns=namespace,
            id=0,
            type=SPHERE_LIST,
            action=ADD,
            pose=_identity_pose(factory),
            scale=scale,
            color=_colour(factory, PALETTE[0]),
            lifetime=lifetime,
            points=[point_msg(factory, keypoints.xyz[i]) for i in visible],
            colors=[_colour(factory, PALETTE[i % len(PALETTE)]) for i in visible],
        )
    )
    for i in visible:
        label_pose = _identity_pose(factory, keypoints.xyz[i] + np.array([0.0, 0.0, 1.5 * diameter]))
        markers.append(
            factory.new(
                "visualization_msgs/msg/Marker",
                header=header,
                ns=namespace,
                id=int(i) + 1,
                type=TEXT_VIEW_FACING,
                action=ADD,
                pose=label_pose,
                scale=point_msg(factory, np.array([0.0, 0.0, diameter]), "geometry_msgs/msg/Vector3"),
                color=_colour(factory, PALETTE[i % len(PALETTE)]),
                lifetime=lifetime,
                text=keypoints.names[i],
            )
        )
    return factory.new("visualization_msgs/msg/MarkerArray", markers=markers)


def _identity_pose(factory: MessageFactory, position: np.ndarray | None = None) -> Any:
    return pose_msg(factory, np.zeros(3) if position is None else position, np.array([0.0, 0.0, 0.0, 1.0]))
