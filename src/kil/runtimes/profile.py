"""Timing of a graph run, the same in both runtimes, so `kil bench live` compares like with
like. All times are on the clock the graph runs on (wall, or simulated under ROS 2 with
use_sim_time), except the processing times, which are always wall time.

busy_ns[node]: duration of each callback of the node (its processing time per message or tick);
tick_ns[timer]: when each tick of a timer ("node.method") started; deadline_ns[timer] when it
was due (the local runtime knows; under ROS 2 the period says: period_ns[timer]);
publish[topic]: (clock time, message stamp) of every message published on a graph topic.

Under ROS 2 each node writes its own part (the shell's ``kil.profile`` parameter names a
directory; `<node>.json` at shutdown) and `load_profiles` merges them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Profile:
    busy_ns: dict[str, list[int]] = field(default_factory=dict)
    tick_ns: dict[str, list[int]] = field(default_factory=dict)
    deadline_ns: dict[str, list[int]] = field(default_factory=dict)
    period_ns: dict[str, int] = field(default_factory=dict)
    publish: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    def merge(self, other: Profile) -> None:
        for mine, theirs in ((self.busy_ns, other.busy_ns), (self.tick_ns, other.tick_ns), (self.deadline_ns, other.deadline_ns),
                             (self.publish, other.publish)):
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)
        self.period_ns.update(other.period_ns)


def load_profiles(directory: str | Path) -> Profile:
    """The merged profile of every node that wrote one into `directory`."""
    merged = Profile()
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text())
        data["publish"] = {topic: [tuple(e) for e in events] for topic, events in data["publish"].items()}
        merged.merge(Profile(**data))
    return merged
