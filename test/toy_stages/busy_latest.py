"""The slow node of toy_stages.busy wanting only the newest message (as a camera frame is
to a features node): what arrives while it works replaces what waits."""

from kil.msgs import PoseCommand
from kil.stage import subscribe
from toy_stages.busy import Busy


class BusyLatest(Busy):
    @subscribe(inp=PoseCommand, latest=True)
    def work(self, msg):
        super().work(msg)


STAGE = BusyLatest
