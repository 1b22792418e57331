"""Keypoints node: a frame and its patch features -> the task's named keypoints in the base
frame (image matching against the reference spec, lifted with depth), an annotated image
for people, and (through the wire format) a MarkerArray for RViz.

The reference descriptors are computed once at start with the same feature backend as the
features node (`model` must name the same config). Bad frames never stop the node: without
valid depth a keypoint is `visible=false`; a feature map of the wrong size is logged once.
Objects are tracked across frames (`permanence`): a stamp going backwards or a gap of more
than 2 s starts over. With the robot's state connected (`state`, optional) an object the
gripper has taken is not looked for elsewhere while the gripper stays closed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kil.config import require
from kil.msgs import RGBD, FeatureMap, Image, Keypoints, RobotState
from kil.perception.draw import draw_keypoints
from kil.perception.features.base import load_extractor
from kil.perception.keypoints import DetectorConfig, KeypointDetector, extraction_config, reference_set
from kil.perception.permanence import GripperState, PermanenceConfig
from kil.perception.spec import load_spec
from kil.stage import Stage, subscribe
from kil.threads import limit_torch_threads

STATE_HISTORY = 256  # robot states kept to find the one at a frame's stamp (2.5 s at 100 Hz)


@dataclass(frozen=True)
class KeypointsConfig:
    spec: str = "pick_place"  # task name (config/tasks/<task>/keypoints.yaml) or a spec path
    model: str = "descriptor_net"  # the features node's backend config
    device: str = "auto"
    depth_radius: int = 3
    min_score: float | None = None  # None: the threshold calibrated for the feature model (kil keypoints calibrate)
    similarity_vectors: bool = False
    extraction: str = "im"  # im: image matching over the frame; in: instance matching inside the segmenter's masks
    segmenter: str = "depth_colour"  # instance matching's segmentation backend config (config/segmentation/)
    tracker: str = "lucas_kanade"  # extraction t: the point tracker (config/trackers/)
    track_init: str = "im"  # extraction t: how keypoints are found to start (and restart) tracking: im or in
    candidates: int = 5  # places per keypoint its object's geometric verification chooses from (1: no verification)
    permanence: bool = True  # a hidden object stays where it was seen last instead of jumping to a look-alike
    object_speed: float = 0.1  # m/s: how fast an unseen object's possible place grows while depth sees through where it was
    rigid_objects_m: float | None = None  # objects followed as rigid bodies within this many metres (None: off; PermanenceConfig.rigid_m)
    annotate: bool = True  # publish the frame with keypoints drawn
    threads: int = 0  # torch CPU threads of this process (0: torch's default; kil.threads)

    def __post_init__(self) -> None:
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        require(self.depth_radius >= 0, "depth_radius", f"must be >= 0, got {self.depth_radius}")
        require(self.min_score is None or -1.0 <= self.min_score <= 1.0, "min_score", f"a cosine similarity lies in [-1, 1], got {self.min_score}")
        require(self.candidates >= 1, "candidates", f"must be >= 1, got {self.candidates}")
        require(self.object_speed > 0, "object_speed", f"must be > 0 m/s, got {self.object_speed}")
        require(self.rigid_objects_m is None or self.rigid_objects_m > 0, "rigid_objects_m",
                f"must be > 0 metres (or null: off), got {self.rigid_objects_m}")
        extraction_config(self.extraction, self.segmenter, self.tracker, self.track_init)
        require(self.extraction == "im" or not self.similarity_vectors, "similarity_vectors",
                f"not available with extraction {self.extraction} yet (image matching only)")


class KeypointsNode(Stage):
    Config = KeypointsConfig
    outputs = {"keypoints": Keypoints, "annotated": Image}

    def __init__(self, config: KeypointsConfig, io) -> None:
        super().__init__(config, io)
        limit_torch_threads(config.threads)
        spec = load_spec(config.spec)
        extractor = load_extractor(config.model, {"device": config.device})
        references = reference_set(spec, extractor)
        del extractor  # the features node keeps the feature model (this node: a segmenter or tracker, if any)
        occupied = min(PermanenceConfig.occupied_speed_mps, config.object_speed)  # never faster where the object may still be
        permanence = PermanenceConfig(enabled=config.permanence, speed_mps=config.object_speed, occupied_speed_mps=occupied,
                                      rigid_m=config.rigid_objects_m)
        instances, tracking = extraction_config(config.extraction, config.segmenter, config.tracker, config.track_init)
        self.detector = KeypointDetector(references, DetectorConfig(config.depth_radius, config.min_score, config.similarity_vectors,
                                                                          config.candidates, permanence=permanence,
                                                                          instances=instances, tracking=tracking),
                                         device=config.device)
        self._reported: set[str] = set()
        self._states: deque[RobotState] = deque(maxlen=STATE_HISTORY)  # the newest, in arrival order

    def _report_once(self, reason: str, message: str, *args) -> None:
        if reason not in self._reported:
            self._reported.add(reason)
            self.io.log.error(message, *args)

    @subscribe(state=RobotState, optional=True)
    def on_state(self, state: RobotState) -> None:
        self._states.append(state)

    def _gripper_at(self, frame: RGBD) -> GripperState | None:
        """The gripper at the frame's stamp (the robot state nearest it: frames reach this
        node after their features, by then newer states have come), if in the frame's base
        frame."""
        if not self._states:
            return None
        state = min(self._states, key=lambda s: abs(s.stamp_ns - frame.stamp_ns))
        if state.frame_id != frame.base_frame_id:
            self._report_once("state frame", "keypoints: robot state on `state` is in frame %s but keypoints are in %s; "
                              "the gripper is ignored", state.frame_id, frame.base_frame_id)
            return None
        return GripperState(state.position, state.gripper, state.orientation)

    # Frames wait here for their features (which come later); of the features only the newest counts.
    @subscribe(rgbd=RGBD, features=FeatureMap, latest=("features",))
    def on_frame(self, frame: RGBD, features: FeatureMap) -> None:
        if features.features.shape[0] != self.detector.channels:
            self._report_once("channels", "keypoints: feature map has %d channels but the references have %d: "
                              "the features node must run the backend named in `model` (%s)",
                              features.features.shape[0], self.detector.channels, self.config.model)
            return
        keypoints = self.detector.detect([frame], features.features[None], [self._gripper_at(frame)])[0]
        self.io.publish("keypoints", keypoints)
        if self.config.annotate:
            drawn = draw_keypoints(frame.rgb, keypoints.uv, keypoints.names, keypoints.visible, keypoints.score)
            self.io.publish("annotated", Image(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, rgb=drawn))


STAGE = KeypointsNode
