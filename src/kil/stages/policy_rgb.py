"""RGB baseline policy node: camera frames (at most at the policy rate, by stamp) and the
robot state -> chunks of absolute EE targets, on the same schedule as the keypoint policy
node (stages/policy.py)."""

from __future__ import annotations

from kil.errors import ConfigError
from kil.msgs import RGBD
from kil.stage import subscribe
from kil.stages.policy import PolicyBase, PolicyNodeConfig


class RgbPolicyNode(PolicyBase):
    def __init__(self, config: PolicyNodeConfig, io) -> None:
        super().__init__(config, io)
        if self.policy.config.kind != "rgb":
            raise ConfigError(f"policy: {config.policy} is a {self.policy.config.kind} policy; run it with the policy stage")
        self.period_ns = int(1e9 / self.policy.trained_on.rate_hz)
        self.last_ns: int | None = None

    @subscribe(rgbd=RGBD, latest=True)
    def on_frame(self, frame: RGBD) -> None:
        from kil.policy.inference import Observation

        # The same slack as the features node: a camera at exactly the policy rate is not halved by jitter.
        if self.last_ns is not None and 0 <= frame.stamp_ns - self.last_ns < 0.9 * self.period_ns:
            return
        state = self.state_at(frame.stamp_ns)
        if state is None:
            return
        self.last_ns = frame.stamp_ns
        self.observe(Observation(None, state, frame.rgb, frame.stamp_ns))


STAGE = RgbPolicyNode
