"""Visualisation node: the camera image with what the robot is about to do drawn on it.

Each frame gets its keypoints (from the keypoints message of the same stamp, which arrives
after the frame), the newest predicted chunk as dots, the commanded EE positions of the last
seconds as a line and the current commanded target as a cross, all projected with the
frame's intrinsics and camera pose. The annotated image goes out at the camera rate (RViz
shows it; keypoint markers and the chunk's path travel with their own topics), and, when
`video` names a file, into an MP4 at the camera rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kil.config import require
from kil.msgs import RGBD, ActionChunk, Image, Keypoints, PoseCommand
from kil.stage import Stage, subscribe

TRAIL_COLOUR = (255, 220, 0)
CHUNK_COLOUR = (0, 200, 255)
TARGET_COLOUR = (255, 60, 60)


@dataclass(frozen=True)
class VisualisationConfig:
    video: str = ""  # MP4 path ("" : none); written at the camera rate
    video_fps: float = 10.0
    trail_s: float = 3.0  # commanded positions drawn this far back
    keypoint_wait_s: float = 0.5  # a frame whose keypoints have not come by then is drawn without them

    def __post_init__(self) -> None:
        require(self.video_fps > 0, "video_fps", f"must be > 0, got {self.video_fps}")
        require(self.trail_s >= 0, "trail_s", f"must be >= 0, got {self.trail_s}")
        require(not self.video or self.video.endswith(".mp4"), "video", f"must be an .mp4 path, got {self.video!r}")


def project(points: np.ndarray, frame: RGBD) -> np.ndarray:
    """(N, 2) pixels of base-frame points (NaN behind the camera)."""
    T_camera_base = np.linalg.inv(frame.T_base_camera)
    p = np.asarray(points, float).reshape(-1, 3) @ T_camera_base[:3, :3].T + T_camera_base[:3, 3]
    uv = p @ frame.K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uv[:, :2] / uv[:, 2:3]
    uv[p[:, 2] <= 1e-6] = np.nan
    return uv


class Visualisation(Stage):
    Config = VisualisationConfig
    outputs = {"image": Image}

    def __init__(self, config: VisualisationConfig, io) -> None:
        super().__init__(config, io)
        self.frames: deque[RGBD] = deque(maxlen=30)
        self.chunk: ActionChunk | None = None
        self.trail: deque[tuple[int, np.ndarray]] = deque()
        self.writer = None
        self.frames_written = 0

    @subscribe(rgbd=RGBD)
    def on_frame(self, frame: RGBD) -> None:
        if self.io.topic("keypoints") is None:
            self._draw(frame, None)
            return
        self.frames.append(frame)
        while self.frames and frame.stamp_ns - self.frames[0].stamp_ns > self.config.keypoint_wait_s * 1e9:
            self._draw(self.frames.popleft(), None)  # its keypoints never came (e.g. dropped)

    @subscribe(keypoints=Keypoints, optional=True)
    def on_keypoints(self, keypoints: Keypoints) -> None:
        while self.frames and self.frames[0].stamp_ns <= keypoints.stamp_ns:
            frame = self.frames.popleft()
            self._draw(frame, keypoints if frame.stamp_ns == keypoints.stamp_ns else None)

    @subscribe(chunk=ActionChunk, optional=True)
    def on_chunk(self, chunk: ActionChunk) -> None:
        self.chunk = chunk

    @subscribe(command=PoseCommand, optional=True)
    def on_command(self, command: PoseCommand) -> None:
        self.trail.append((command.stamp_ns, command.position))
        while self.trail and command.stamp_ns - self.trail[0][0] > self.config.trail_s * 1e9:
            self.trail.popleft()

    def annotate(self, frame: RGBD, keypoints: Keypoints | None) -> np.ndarray:
        from PIL import Image as PILImage
        from PIL import ImageDraw

        from kil.perception.draw import draw_keypoints

        rgb = frame.rgb
        if keypoints is not None:
            rgb = draw_keypoints(rgb, keypoints.uv, keypoints.names, keypoints.visible)
        image = PILImage.fromarray(np.ascontiguousarray(rgb))
        draw = ImageDraw.Draw(image)
        if len(self.trail) >= 2:
            uv = project(np.array([p for _, p in self.trail]), frame)
            points = [tuple(x) for x in uv if np.isfinite(x).all()]
            if len(points) >= 2:
                draw.line(points, fill=TRAIL_COLOUR, width=2)
        if self.chunk is not None:
            for u, v in project(self.chunk.positions, frame):
                if np.isfinite(u) and np.isfinite(v):
                    draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=CHUNK_COLOUR)
        if self.trail:
            u, v = project(self.trail[-1][1], frame)[0]
            if np.isfinite(u) and np.isfinite(v):
                draw.line([(u - 6, v), (u + 6, v)], fill=TARGET_COLOUR, width=2)
                draw.line([(u, v - 6), (u, v + 6)], fill=TARGET_COLOUR, width=2)
        return np.asarray(image)

    def _draw(self, frame: RGBD, keypoints: Keypoints | None) -> None:
        rgb = self.annotate(frame, keypoints)
        self.io.publish("image", Image(stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, rgb=rgb))
        if self.config.video:
            self._write(rgb)

    def _write(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            path = Path(self.config.video)
            path.parent.mkdir(parents=True, exist_ok=True)
            height, width = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.config.video_fps, (width, height))
            if not self.writer.isOpened():
                raise OSError(f"video: cannot write {path} (OpenCV's MP4 writer failed to open it)")
        self.writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
        self.frames_written += 1

    def stop(self) -> None:
        for frame in list(self.frames):
            self._draw(frame, None)
        self.frames.clear()
        if self.writer is not None:
            self.writer.release()
            self.io.log.info("wrote %s (%d frames)", self.config.video, self.frames_written)


STAGE = Visualisation
