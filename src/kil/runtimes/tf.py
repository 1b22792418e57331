"""A small transform buffer (static and time-stamped transforms, chained through the frame
tree) for the local runtime and for reading bags; the ROS 2 shell uses tf2 instead."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque

import numpy as np

from kil.errors import TransformError
from kil.geometry import invert


class TransformBuffer:
    """Stores poses of child frames in parent frames and answers lookups between any two
    connected frames. A dynamic lookup takes each edge's newest transform at or before the
    requested stamp (no interpolation); static edges hold at every time."""

    def __init__(self) -> None:
        self._static: dict[tuple[str, str], np.ndarray] = {}
        self._dynamic: dict[tuple[str, str], list[tuple[int, int, np.ndarray]]] = {}
        self._neighbours: dict[str, set[str]] = {}
        self._count = 0

    def set_transform(self, parent: str, child: str, T: np.ndarray, stamp_ns: int, static: bool = False) -> None:
        """Record the (4, 4) pose of `child` in `parent`."""
        T = np.array(T, dtype=np.float64)
        if static:
            self._static[(parent, child)] = T
        else:
            self._count += 1  # tie-breaker keeps insertion order for equal stamps
            insort(self._dynamic.setdefault((parent, child), []), (int(stamp_ns), self._count, T), key=lambda e: (e[0], e[1]))
        self._neighbours.setdefault(parent, set()).add(child)
        self._neighbours.setdefault(child, set()).add(parent)

    def lookup(self, parent: str, child: str, stamp_ns: int | None = None) -> np.ndarray:
        """(4, 4) pose of `child` in `parent`; None as stamp takes the newest transforms."""
        if parent == child:
            return np.eye(4)
        path = self._path(parent, child)
        T = np.eye(4)
        for a, b in zip(path, path[1:]):
            T = T @ self._edge(a, b, stamp_ns)
        return T

    def _path(self, start: str, goal: str) -> list[str]:
        previous: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            frame = queue.popleft()
            if frame == goal:
                path = [goal]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1]
            for nxt in sorted(self._neighbours.get(frame, ())):
                if nxt not in previous:
                    previous[nxt] = frame
                    queue.append(nxt)
        raise TransformError(f"no transform between frames {start!r} and {goal!r} (known frames: {sorted(self._neighbours)})")

    def _edge(self, a: str, b: str, stamp_ns: int | None) -> np.ndarray:
        for key, flip in (((a, b), False), ((b, a), True)):
            T = self._static.get(key)
            if T is None and key in self._dynamic:
                entries = self._dynamic[key]
                i = len(entries) if stamp_ns is None else bisect_right(entries, stamp_ns, key=lambda e: e[0])
                if i == 0:
                    raise TransformError(f"transform {key[0]} -> {key[1]} unknown at or before stamp {stamp_ns}")
                T = entries[i - 1][2]
            if T is not None:
                return invert(T) if flip else T
        raise TransformError(f"no transform between frames {a!r} and {b!r}")
