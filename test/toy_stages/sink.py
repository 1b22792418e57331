"""Keeps every message of every connected port: (port, message)."""

from kil.stage import Stage, subscribe_any


class Sink(Stage):
    def __init__(self, config, io):
        super().__init__(config, io)
        self.received = []

    @subscribe_any()
    def on_any(self, port, msg):
        self.received.append((port, msg))

    def of(self, port):
        return [m for p, m in self.received if p == port]


STAGE = Sink
