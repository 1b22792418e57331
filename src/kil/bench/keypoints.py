"""Keypoint quality on held-out simulated frames with ground truth, through the detector the
keypoints node and the dataset builder use (matching, geometric verification, calibrated
visibility, lifting).

Per task, one reference frame (variation `in`, arm away) gives the reference keypoints: the
true named points of the task objects and the fixture, where visible. Evaluation frames
(variations in, obj, scene; seeds disjoint from training, calibration and the reference)
cycle the arm through away / between the camera and an object (hiding some or all of its
points) / anywhere. Reported per backend, variation and keypoint:

- pixel and 3-D error (median, p90, max) of the keypoints the truth sees and the detector
  reports visible, and the share of truly visible ones the detector dropped;
- visibility: precision and recall of `visible=false` for the keypoints the truth does not
  see (hidden by the arm, the gripper or clutter, or out of view).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kil.errors import ConfigError
from kil.perception.keypoints import DetectorConfig, KeypointDetector, ReferenceSet
from kil.perception.permanence import PermanenceConfig
from kil.perception.matching import sample_descriptors
from kil.sim.truth import TruthFrame, render_truth_frame

EVAL_SEED_BASE = 700_000  # disjoint from training views (500_000+) and the expert benchmark
RIGID_M = 0.015  # the rigid-objects setting `--episodes` runs beside the default (PermanenceConfig.rigid_m)
CALIBRATION_SEED_BASE = 800_000  # frames `kil keypoints calibrate` fits thresholds on
REFERENCE_SEED = 699_999
ARM_CYCLE = ("away", "occluding", "random", "holding", "placed")


def truth_frames(tasks: list[str], variations: list[str], frames: int, seed_base: int, robot: str = "panda",
                 progress=None) -> tuple[dict[str, TruthFrame], list[TruthFrame]]:
    """(one reference frame per task, `frames` frames per task and variation, the arm
    cycling through ARM_CYCLE)."""
    references, out = {}, []
    for t, task in enumerate(tasks):
        references[task] = render_truth_frame(task, "in", REFERENCE_SEED - t, robot)
        if progress:
            progress()
        for v, variation in enumerate(variations):
            for i in range(frames):
                out.append(render_truth_frame(task, variation, seed_base + 10_000 * v + 100 * t + i, robot, ARM_CYCLE[i % len(ARM_CYCLE)]))
                if progress:
                    progress()
    return references, out


def truth_references(extractor, reference: TruthFrame) -> tuple[ReferenceSet, list[int]]:
    """The reference set of a truth frame's visible keypoints (one group per object) and
    their indices into the frame's keypoint list."""
    keep = np.flatnonzero(reference.visible)
    descriptors = sample_descriptors(extractor.extract(reference.rgb)[0], reference.uv[keep], reference.rgb.shape[:2])
    names = tuple(reference.names[i] for i in keep)
    return ReferenceSet(names, reference.instance[keep].astype(np.int32), descriptors.astype(np.float32), extractor.name,
                        reference.uv[keep].astype(np.float64), reference.instance[keep], extractor.config.min_score), list(keep)


@dataclass
class Observations:
    """Per detected keypoint of the evaluated frames (flat lists)."""

    variation: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    truly_visible: list[bool] = field(default_factory=list)
    reported_visible: list[bool] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    verified: list[bool] = field(default_factory=list)  # kept by the geometric verification
    has_depth: list[bool] = field(default_factory=list)
    pixel: list[float] = field(default_factory=list)  # error of the reported place (inf where the truth is out of view)
    metres: list[float] = field(default_factory=list)  # 3-D error (inf without a lifted point)
    frame_ms: list[float] = field(default_factory=list)  # per frame: detection time after feature extraction

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-keypoint lists as arrays (frame_ms, per frame, is not among them)."""
        return {k: np.asarray(v) for k, v in self.__dict__.items() if k != "frame_ms"}

    def timing(self) -> str:
        """Detection time per frame: median / p90 / max ms."""
        ms = np.asarray(self.frame_ms)
        return f"{np.median(ms):.0f} / {np.percentile(ms, 90):.0f} / {ms.max():.0f} ms" if len(ms) else "-"


def observe(extractor, references: dict[str, TruthFrame], frames: list[TruthFrame], detector_config: DetectorConfig = DetectorConfig(),
            progress=None) -> Observations:
    """Run the detector on every frame and compare with the truth."""
    detectors = {}
    for task, ref in references.items():
        ref_set, _ = truth_references(extractor, ref)
        detectors[task] = KeypointDetector(ref_set, detector_config)
    out = Observations()
    for frame in frames:
        detector = detectors[frame.task]
        detector.reset()  # unrelated frames: no object permanence across them
        rgbd = frame.rgbd()
        keypoints, reasons = detector.detect_with_reasons([rgbd], extractor.extract(frame.rgb))[0]
        index = [frame.names.index(name) for name in keypoints.names]
        _record(out, frame.variation, keypoints, reasons, frame.uv[index], frame.xyz[index], frame.visible[index])
        if progress:
            progress()
    return out


def _record(out: Observations, variation: str, keypoints, reasons, uv: np.ndarray, xyz: np.ndarray, visible: np.ndarray) -> None:
    """Append one frame's detected keypoints against the truth's (N, 2) uv (0, 0 out of
    view), (N, 3) xyz and (N,) visible, in the detector's keypoint order."""
    for k, name in enumerate(keypoints.names):
        inside = bool(np.any(uv[k] != 0))
        out.variation.append(variation)
        out.name.append(name)
        out.truly_visible.append(bool(visible[k]))
        out.reported_visible.append(bool(keypoints.visible[k]))
        out.score.append(float(keypoints.score[k]))
        out.verified.append(bool(reasons.verified[k]))
        out.has_depth.append(bool(reasons.has_depth[k]))
        out.pixel.append(float(np.linalg.norm(keypoints.uv[k] - uv[k])) if inside else np.inf)
        out.metres.append(float(np.linalg.norm(keypoints.xyz[k] - xyz[k])) if keypoints.visible[k] else np.inf)


@dataclass(frozen=True)
class EpisodeSetting:
    """One detector of `kil bench keypoints --episodes`: its config, and whether the spec's
    views describe the keypoints besides the reference images."""

    config: DetectorConfig
    views: bool = True


def observe_episodes(extractor, episodes: list[Path], configs: dict[str, EpisodeSetting],
                     progress=None, spec: str | Path | None = None) -> dict[str, Observations]:
    """Run detectors (one per config, features shared) over recorded sim episodes, their
    ground truth recorded beside the camera: each frame in order through one detector per
    episode, as the dataset builder and the live node do; the task's shipped reference spec
    (or `spec`) gives the keypoints."""
    from kil.data.builder import BuildConfig, TopicMaps, oracle_index
    from kil.data.episode import read_metadata
    from kil.data.episode_streams import read_streams
    from kil.perception.keypoints import reference_set
    from kil.perception.permanence import GripperState
    from kil.perception.spec import load_spec

    detectors: dict[str, tuple] = {}
    out = {label: Observations() for label in configs}
    for episode in episodes:
        metadata = read_metadata(episode)
        if metadata is None or not metadata.task:
            raise ConfigError(f"{episode}: no kil_episode.yaml naming the task")
        if metadata.task not in detectors:
            loaded = load_spec(spec or metadata.task)
            references = reference_set(loaded, extractor)
            detectors[metadata.task] = (loaded.layout().names, {
                label: KeypointDetector(references if setting.views else references.without_views(), setting.config)
                for label, setting in configs.items()})
        names, by_label = detectors[metadata.task]
        graph, _ = TopicMaps(BuildConfig(task=metadata.task)).of(episode, metadata)
        streams = read_streams(episode, graph)
        if streams.truth is None:
            raise ConfigError(f"{episode}: no ground-truth keypoints recorded (a sim episode from `kil record` has them)")
        index = oracle_index(names, list(streams.truth[0].names), np.asarray(streams.truth[0].instance), episode)
        for detector in by_label.values():
            detector.reset()
        for t, (frame, truth) in enumerate(zip(streams.frames, streams.truth)):
            features = extractor.extract(frame.rgb)
            gripper = GripperState(streams.ee_position[t], float(streams.gripper[t]), streams.ee_orientation[t])
            for label, detector in by_label.items():
                start = time.perf_counter()
                keypoints, reasons = detector.detect_with_reasons([frame], features, [gripper])[0]
                out[label].frame_ms.append(1e3 * (time.perf_counter() - start))
                _record(out[label], metadata.variation, keypoints, reasons, truth.uv[index], truth.xyz[index], truth.visible[index])
        if progress:
            progress()
    return out


def _stats(values: np.ndarray, scale: float, digits: int) -> str:
    if len(values) == 0:
        return "-"
    v = values * scale
    return " / ".join(f"{x:.{digits}f}" for x in (np.median(v), np.percentile(v, 90), v.max()))


def visibility_figures(truly_visible: np.ndarray, reported_visible: np.ndarray) -> tuple[int, float, float]:
    """(hidden keypoints, precision, recall) of `visible=false` for the hidden ones."""
    hidden, flagged = ~truly_visible, ~reported_visible
    tp = int((hidden & flagged).sum())
    precision = tp / max(int(flagged.sum()), 1) if flagged.any() else float("nan")
    recall = tp / max(int(hidden.sum()), 1) if hidden.any() else float("nan")
    return int(hidden.sum()), precision, recall


def rows(obs: Observations, variations: list[str]) -> list[list[str]]:
    """Table rows: per variation all keypoints, then each keypoint; last, every variation together."""
    a = obs.arrays()
    out = []
    for variation in [*variations, "all"]:
        in_variation = (a["variation"] == variation) if variation != "all" else np.ones(len(a["variation"]), bool)
        names = sorted(set(a["name"][in_variation])) if variation != "all" else []
        for name in ["all", *names]:
            sel = in_variation & ((a["name"] == name) if name != "all" else True)
            seen = sel & a["truly_visible"]
            reported = seen & a["reported_visible"]
            hidden, precision, recall = visibility_figures(a["truly_visible"][sel], a["reported_visible"][sel])
            out.append([variation if name == "all" else "", name, str(int(seen.sum())),
                        _stats(a["pixel"][reported], 1, 1), _stats(a["metres"][reported], 1000, 0),
                        f"{100 * (1 - reported.sum() / seen.sum()):.0f}%" if seen.any() else "-",
                        str(hidden), "-" if np.isnan(precision) else f"{100 * precision:.0f}%",
                        "-" if np.isnan(recall) else f"{100 * recall:.0f}%"])
    return out


def _table(obs: Observations, variations: list[str], title: str) -> Table:
    table = Table("variation", "keypoint", "seen", "px median / p90 / max", "3-D mm median / p90 / max", "dropped",
                  "hidden", "hidden flagged: precision", "recall", title=title)
    for row in rows(obs, variations):
        table.add_row(*row)
    return table


LEGEND = ("px and mm over keypoints the truth sees and the detector reports visible; dropped: seen but reported "
          "not visible; hidden: not seen by the truth (arm, gripper, clutter, out of view).")


def run_episodes(backend: str, episodes_dir: Path, extractions: list[str] = ("im",), spec: str | Path | None = None) -> int:
    """Recorded episodes in order, with object permanence and with every frame on its own
    (image matching; also with objects followed as rigid bodies, RIGID_M), by the task's
    spec or `spec`; with a spec that has views, also with the reference images alone (the
    views left out) and with the views searched in every frame, not only for an object's
    first sighting (`DetectorConfig.views`); `extractions` besides im: instance matching
    and tracking, in order with object permanence, each as its keypoints node would run
    them. Each table gives the detection time per frame after feature extraction."""
    from kil.data.episode import episode_task
    from kil.perception.features.base import load_extractor
    from kil.perception.keypoints import extraction_config
    from kil.perception.spec import load_spec

    episodes = sorted(p for p in Path(episodes_dir).glob("episode_*") if p.is_dir())
    if not episodes:
        raise ConfigError(f"--episodes: no episode_* directories in {episodes_dir}")
    with_views = bool(load_spec(spec or episode_task(episodes[0], None, "--spec")[1]).views())  # checked before the long work
    console = Console(width=170)
    extractor = load_extractor(backend)
    settings = {}
    for extraction in extractions:
        instances, tracking = extraction_config(extraction)
        label = {"im": "image matching (IM)", "in": "instance matching (IN, depth_colour)", "t": "tracking (T, lucas_kanade from IM)"}[extraction]
        settings[f"{label}, in order, object permanence"] = EpisodeSetting(DetectorConfig(instances=instances, tracking=tracking))
        if extraction == "im":
            settings[f"{label}, in order, object permanence, rigid objects ({100 * RIGID_M:.1f} cm)"] = EpisodeSetting(
                DetectorConfig(permanence=PermanenceConfig(rigid_m=RIGID_M)))
        if extraction == "im" and with_views:
            settings[f"{label}, in order, object permanence, reference images alone (no views)"] = EpisodeSetting(DetectorConfig(), views=False)
            settings[f"{label}, in order, object permanence, views searched in every frame"] = EpisodeSetting(DetectorConfig(views="search"))
        if extraction == "im":
            settings[f"{label}, each frame on its own"] = EpisodeSetting(DetectorConfig(permanence=PermanenceConfig(enabled=False)))
    with Progress(console=console) as progress:
        bar = progress.add_task("episodes", total=len(episodes))
        scored = observe_episodes(extractor, episodes, settings, lambda: progress.advance(bar), spec)
    variations = sorted(set(scored[next(iter(scored))].variation))
    for label, obs in scored.items():
        console.print(_table(obs, variations, f"keypoints by {backend} (min_score {extractor.config.min_score:.3f}) over "
                                               f"{len(episodes)} episodes of {episodes_dir}{f' with {spec}' if spec else ''}: "
                                               f"{label}; detection per frame "
                                               f"{obs.timing()} (median / p90 / max, after features)"))
    console.print(LEGEND)
    return 0


def run(backends: list[str], tasks: list[str], variations: list[str], frames: int, robot: str = "panda") -> int:
    from kil.perception.features.base import load_extractor

    console = Console(width=170)
    extractors = {name: load_extractor(name) for name in backends}
    with Progress(console=console) as progress:
        bar = progress.add_task("rendering held-out frames", total=len(tasks) * (1 + frames * len(variations)))
        references, truth = truth_frames(tasks, variations, frames, EVAL_SEED_BASE, robot, lambda: progress.advance(bar))
        scored = {}
        for name, extractor in extractors.items():
            bar = progress.add_task(f"detecting ({name})", total=len(truth))
            scored[name] = observe(extractor, references, truth, progress=lambda: progress.advance(bar))
    for name, obs in scored.items():
        console.print(_table(obs, variations, f"keypoints by {name} (min_score {extractors[name].config.min_score:.3f}): "
                                              f"{', '.join(tasks)} ({robot}), {frames} frames per variation, arm "
                                              f"{'/'.join(ARM_CYCLE)}, one `in` reference per task"))
    console.print(LEGEND)
    return 0
