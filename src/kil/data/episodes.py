"""Recording sessions: many episodes into one directory, each started, saved or discarded
by the operator (teleop buttons, a service, or the scripted expert).

An episode is ``<out>/episode_NNNN`` (the next free index: a session can resume a directory
recorded yesterday and never overwrites one). Two ways to write it:

* `InProcessBag`: kil writes the bag itself with rosbags (the local runtime);
* `Ros2BagProcess`: ``ros2 bag record -s mcap`` records the rig's topics (a robot), started
  and stopped with SIGINT like an operator's Ctrl-C, so it closes its bag properly.

The metadata file is written inside the bag directory when the episode is saved (success
as the operator judged it, how it ended, how long it took).
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kil.data.bag import EpisodeWriter
from kil.data.episode import EpisodeMetadata, write_metadata
from kil.errors import BagError

EPISODE_PATTERN = re.compile(r"^episode_(\d{4,})$")
ROS2_BAG_RECORD = ("ros2", "bag", "record", "-s", "mcap")
STOP_TIMEOUT_S = 10.0  # how long `ros2 bag record` may take to close its bag after SIGINT
STARTUP_TIMEOUT_S = 5.0  # how long it may take to create its bag (a save right after a start waits)


def next_episode_dir(out: str | Path) -> Path:
    """``out/episode_NNNN`` with NNNN one past the highest index already there (0 if none)."""
    out = Path(out)
    indices = [int(m.group(1)) for p in out.iterdir() if (m := EPISODE_PATTERN.match(p.name))] if out.is_dir() else []
    return out / f"episode_{max(indices, default=-1) + 1:04d}"


class EpisodeSink(Protocol):
    """One episode being written."""

    path: Path

    def write(self, topic: Any, msg: Any, log_time_ns: int) -> None:
        """Record a project message on a graph topic (a no-op where another process records)."""

    def finish(self, metadata: EpisodeMetadata) -> None:
        """Close the bag and write the episode's metadata into it."""

    def abort(self) -> None:
        """Stop writing and delete everything of this episode."""


class InProcessBag:
    """The episode written by kil itself (rosbags), message by message."""

    def __init__(self, path: Path, metadata: EpisodeMetadata, flush_interval_s: float = 0.5) -> None:
        self.path = path
        self.writer = EpisodeWriter(path, metadata, flush_interval_s).open()

    def write(self, topic: Any, msg: Any, log_time_ns: int) -> None:
        self.writer.write(topic, msg, log_time_ns)

    def finish(self, metadata: EpisodeMetadata) -> None:
        self.writer.metadata = metadata
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()
        shutil.rmtree(self.path, ignore_errors=True)


class Ros2BagProcess:
    """The episode recorded by ``ros2 bag record -s mcap -o <path> <topics>``."""

    def __init__(self, path: Path, topics: Sequence[str], command: Sequence[str] = ROS2_BAG_RECORD) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = path.parent / f".{path.name}.record.log"  # the recorder's output, kept on failure
        self._log = self.log_file.open("wb")
        try:
            # Its own process group: a Ctrl-C meant for the launch file reaches us, not it twice.
            self.process = subprocess.Popen([*command, "-o", str(path), *topics], stdout=self._log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        except OSError as err:
            self._log.close()
            raise BagError(f"{path}: cannot start {command[0]!r} to record ({err})") from None

    def write(self, topic: Any, msg: Any, log_time_ns: int) -> None:
        pass  # ros2 bag record subscribes to the topics itself

    def _stop(self) -> tuple[int, bool]:
        """Stop the recorder like Ctrl-C; its exit code and whether it had died before."""
        # An episode saved right after its start: let the recorder create its bag first
        # (interrupted while starting, it would leave nothing).
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while self.process.poll() is None and not self.path.is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        died = self.process.poll() is not None
        if not died:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()
        return self.process.returncode, died

    def _log_tail(self) -> str:
        lines = self.log_file.read_text(errors="replace").strip().splitlines() if self.log_file.exists() else []
        return lines[-1].strip() if lines else "no output"

    def finish(self, metadata: EpisodeMetadata) -> None:
        """Stop the recorder and mark the episode saved, only if the recorder was still
        running, exited 0 and left a whole, readable bag. Otherwise what it wrote is kept
        (recovered where it can be), marked `failed` with the reason, the recorder's
        output is kept beside it, and a BagError says so."""
        from kil.data.bag import EpisodeReader, bag_problem, needs_recovery, recover_episode

        code, died = self._stop()
        if not self.path.is_dir():
            raise BagError(f"{self.path}: the recorder wrote no bag (exit code {code}: {self._log_tail()}); its output is in {self.log_file}")
        failure = None
        if died:
            failure = f"the recorder died during the episode (exit code {code}: {self._log_tail()})"
        elif code != 0:
            failure = f"the recorder exited with code {code} ({self._log_tail()})"
        elif problem := bag_problem(self.path):
            failure = f"the recorder left a damaged bag ({problem})"
        else:
            try:
                EpisodeReader(self.path, recover=False).topics()
            except BagError as err:
                failure = f"the recorder left an unreadable bag ({err})"
        if failure is None:
            write_metadata(self.path, metadata.with_updates(status="complete"))
            self.log_file.unlink(missing_ok=True)
            return
        if needs_recovery(self.path):
            try:
                recover_episode(self.path)
            except BagError as err:
                failure += f"; not recovered: {err}"
        write_metadata(self.path, metadata.with_updates(status="failed", extra={**metadata.extra, "recorder_error": failure}))
        raise BagError(f"{self.path}: {failure}; kept as a failed episode, the recorder's output is in {self.log_file}")

    def abort(self) -> None:
        self._stop()
        shutil.rmtree(self.path, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)


@dataclass
class EpisodeSession:
    """Starts, saves and discards episodes under `out`; `saved`, `discarded` and `failed`
    list what happened, in order."""

    out: Path
    metadata: EpisodeMetadata  # the template: task, rig, variation, seed, extra
    open_sink: Any  # (path, metadata) -> EpisodeSink
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("kil.episodes"))
    current: Any = None
    started_ns: int | None = None
    saved: list[Path] = field(default_factory=list)
    discarded: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)  # the recorder failed: kept, marked failed

    @property
    def recording(self) -> bool:
        return self.current is not None

    def start(self, now_ns: int, path: Path | None = None) -> tuple[bool, str]:
        """Open the next episode (or the episode directory `path`)."""
        if self.current is not None:
            return False, f"already recording {self.current.path.name}"
        path = path or next_episode_dir(self.out)
        self.current, self.started_ns = self.open_sink(path, self.metadata), now_ns
        self.log.info("recording %s", path)
        return True, f"recording {path}"

    def save(self, now_ns: int, success: bool | None = True, reason: str = "saved", extra: dict[str, Any] | None = None) -> tuple[bool, str]:
        """Close the episode and write its metadata: `success` as judged (the operator's save,
        or a simulator's verdict), `extra` added to the template's."""
        if self.current is None:
            return False, "not recording"
        sink, self.current = self.current, None
        duration = round((now_ns - self.started_ns) / 1e9, 3)
        extra = {**self.metadata.extra, **(extra or {}), "duration_s": duration, "stop_reason": reason}
        try:
            sink.finish(self.metadata.with_updates(success=success, extra=extra))
        except BagError as err:  # the recording failed: kept, marked failed, never a demonstration
            self.failed.append(sink.path)
            self.log.error("episode not saved: %s", err)
            return False, str(err)
        self.saved.append(sink.path)
        self.log.info("saved %s (%.1f s, %s)", sink.path, duration, reason)
        return True, f"saved {sink.path}"

    def discard(self) -> tuple[bool, str]:
        if self.current is None:
            return False, "not recording"
        sink, self.current = self.current, None
        sink.abort()
        self.discarded.append(sink.path)
        self.log.info("discarded %s", sink.path)
        return True, f"discarded {sink.path.name}"

    def close(self, now_ns: int) -> None:
        """At shutdown: an episode still open is kept (nothing recorded is lost) but marked
        unsuccessful, so datasets leave it out unless someone re-marks it."""
        if self.current is not None:
            self.save(now_ns, success=False, reason="interrupted")

