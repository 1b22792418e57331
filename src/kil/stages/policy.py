"""Policy node: the task's keypoints and the robot state -> chunks of absolute EE targets.

Each keypoints message (at the policy rate) is paired with the newest robot state at or
before its stamp and appended to the observation history. Every `execute_steps`
observations (the policy's executed horizon by default) the policy predicts from the
newest `n_obs_steps` observations; the chunk is stamped with the newest observation's
stamp and carries the whole predicted horizon, so the interpolator always has waypoints
ahead of it until the next chunk replaces the tail.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from kil.config import require
from kil.errors import ConfigError
from kil.msgs import ActionChunk, Keypoints, RobotState
from kil.stage import Stage, subscribe
from kil.threads import limit_torch_threads

MAX_STATE_AGE_S = 0.2  # a state older than this at an observation is not used


@dataclass(frozen=True)
class PolicyNodeConfig:
    policy: str = ""  # run directory or checkpoint (kil train --out)
    execute_steps: int = 0  # observations between predictions; 0: the policy's n_action_steps
    seed: int = 0  # prediction k uses seed + k
    device: str = "cpu"
    threads: int = 0  # torch CPU threads of this process (0: torch's default; kil.threads)

    def __post_init__(self) -> None:
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        require(bool(self.policy), "policy", "needs the run directory of a trained policy")
        require(self.execute_steps >= 0, "execute_steps", f"must be >= 0, got {self.execute_steps}")


class PolicyBase(Stage):
    """Robot-state history and the prediction schedule, shared by the keypoint policy node
    and the RGB baseline's (stages/policy_rgb.py)."""

    Config = PolicyNodeConfig
    outputs = {"chunk": ActionChunk}

    def __init__(self, config: PolicyNodeConfig, io) -> None:
        super().__init__(config, io)
        from kil.policy.inference import Policy

        limit_torch_threads(config.threads)
        self.policy = Policy.load(config.policy, config.device)
        self.execute_steps = config.execute_steps or self.policy.config.n_action_steps
        self.states: deque[RobotState] = deque(maxlen=64)
        self.history: deque = deque(maxlen=self.policy.config.n_obs_steps)
        self.memory = self.policy.keypoint_memory()  # last sightings over the stream: the action frame's origin, held keypoints
        self.hold_hidden = self.policy.config.hidden_keypoints == "last_seen"
        self.since_prediction = 0
        self.predictions = 0
        self._reported: set[str] = set()  # reasons logged once

    @subscribe(state=RobotState)
    def on_state(self, state: RobotState) -> None:
        self.states.append(state)

    def state_at(self, stamp_ns: int) -> RobotState | None:
        state = next((s for s in reversed(self.states) if s.stamp_ns <= stamp_ns), None)
        if state is None or stamp_ns - state.stamp_ns > MAX_STATE_AGE_S * 1e9:
            return None
        return state

    def observe(self, observation) -> None:
        """Append an observation; predict and publish when the executed part is played out."""
        if observation.keypoints is not None:
            self.memory.update(observation.keypoints)
            if self.hold_hidden:
                observation = replace(observation, keypoints=self.memory.held(observation.keypoints))
        self.history.append(observation)
        if self.predictions and self.since_prediction + 1 < self.execute_steps:
            self.since_prediction += 1
            return
        try:
            chunk = self.policy.predict(list(self.history), seed=self.config.seed + self.predictions, steps=self.policy.config.horizon,
                                        anchor=self.memory.position)
        except ValueError as err:  # e.g. the action frame's keypoint unseen: no chunk, the robot holds
            if str(err) not in self._reported:
                self._reported.add(str(err))
                self.io.log.warning("policy: no prediction: %s", err)
            return
        self.io.publish("chunk", chunk)
        self.predictions += 1
        self.since_prediction = 0


class PolicyNode(PolicyBase):
    def __init__(self, config: PolicyNodeConfig, io) -> None:
        super().__init__(config, io)
        if self.policy.config.kind != "keypoint":
            raise ConfigError(f"policy: {config.policy} is an {self.policy.config.kind} policy; run it with the policy_rgb stage")

    @subscribe(keypoints=Keypoints, latest=True)
    def on_keypoints(self, keypoints: Keypoints) -> None:
        from kil.policy.inference import Observation

        state = self.state_at(keypoints.stamp_ns)
        if state is not None:  # else no robot state for this frame yet
            self.observe(Observation(keypoints, state))


STAGE = PolicyNode
