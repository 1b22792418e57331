"""Dataset builder: recorded episodes (rosbag2, from a real rig or the sim) -> a training store.

Each episode is aligned at the policy rate (episode_streams), its keypoints are extracted by
the same code the live keypoints node runs (features backend + reference matching + depth
lifting, in batches) or taken from the sim's ground truth ("oracle"), and it is written as
one group of the store. Keypoints are cached per episode, keyed by everything they depend
on (extraction settings, spec, weights, the episode's files), so rebuilding with other
policy settings does not run the feature network again. The cache lives in
EPISODES_DIR/.kil_cache, beside the recordings, which are never modified.

Topics are read with the names of the rig an episode was recorded on (its kil_episode.yaml,
or `rig`), derived from the rig file (`config/graphs/rig_recording.yaml` + the rig's
names), or with an explicit graph description. Every directory is accounted for: kept
(possibly trimmed at its start and end), excluded (not a saved, successful demonstration:
unsuccessful, `success` unknown, never saved, recovered, its recorder failed, or another
task's; all but the last kept with `include_unsuccessful`), broken (unreadable, missing
topics, streams that do not overlap) or ignored (not a recording). Setup problems (output directory, weights, graph, rig, spec)
are one-line errors before any episode is read; a build that keeps no episode is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kil.config import require, to_plain
from kil.data.bag import bag_problem, is_complete, needs_recovery, recover_episode
from kil.data.episode import EpisodeMetadata, not_to_imitate, read_metadata
from kil.data.episode_streams import EpisodeStreams, read_streams
from kil.data.store import EpisodeData, Store, field_stats
from kil.errors import BagError, ConfigError
from kil.graph import GraphSpec, load_graph
from kil.paths import check_creatable, graph_path
from kil.perception.permanence import GripperState, PermanenceConfig
from kil.perception.spec import parse_keypoint_name, spec_path

log = logging.getLogger("kil.dataset")

KEYPOINT_SOURCES = ("image", "oracle")
CACHE_DIR = ".kil_cache"  # inside the episodes directory
ALIGNMENT = "trimmed-2"  # which frames an episode's alignment picks (a cache of other frames is not reused)


@dataclass(frozen=True)
class BuildConfig:
    task: str
    keypoints: str = "image"  # image matching with `feature_model`, or the sim's ground truth
    feature_model: str = "descriptor_net"  # config/features/<name>.yaml or a YAML path
    extraction: str = "im"  # im: image matching; in: instance matching inside `segmenter`'s masks
    segmenter: str = "depth_colour"  # config/segmentation/<name>.yaml or a YAML path (extraction in)
    tracker: str = "lucas_kanade"  # config/trackers/<name>.yaml (extraction t)
    track_init: str = "im"  # extraction t: im or in finds the keypoints tracking starts from
    spec: str | None = None  # keypoint spec (task name or path); default: the task's
    graph: str | None = None  # topics of the recording (a graph description); default: from the rig
    rig: str | None = None  # the rig whose topic names the recordings use; default: each episode's kil_episode.yaml
    include_unsuccessful: bool = False  # also train on failed, unjudged, unsaved or recovered episodes
    min_overlap_s: float = 1.0  # camera, robot state and commands must overlap at least this long
    rate_hz: float = 10.0
    horizon: int = 16
    batch_size: int = 16
    device: str = "auto"
    similarity_vectors: bool = False
    rigid_objects_m: float | None = None  # objects followed as rigid bodies within this many metres (None: off; PermanenceConfig.rigid_m)
    images: tuple[int, int] | None = None  # also store colour frames at (height, width): the RGB baseline's input
    cache: bool = True

    def __post_init__(self) -> None:
        require(self.keypoints in KEYPOINT_SOURCES, "keypoints", f"expected one of {', '.join(KEYPOINT_SOURCES)}, got {self.keypoints!r}")
        require(self.rate_hz > 0, "rate_hz", f"must be > 0, got {self.rate_hz}")
        require(self.horizon >= 2, "horizon", f"must be >= 2, got {self.horizon}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.min_overlap_s > 0, "min_overlap_s", f"must be > 0, got {self.min_overlap_s}")
        require(not (self.graph and self.rig), "graph", "give the recordings' topics by graph or by rig, not both")
        require(self.rigid_objects_m is None or self.rigid_objects_m > 0, "rigid_objects_m",
                f"must be > 0 metres (or null: off), got {self.rigid_objects_m}")
        from kil.perception.keypoints import extraction_config

        extraction_config(self.extraction, self.segmenter, self.tracker, self.track_init)
        require(self.extraction == "im" or not self.similarity_vectors, "similarity_vectors",
                f"not available with extraction {self.extraction} yet (image matching only)")


@dataclass(frozen=True)
class BuildReport:
    """What became of every directory: kept (name -> samples), trimmed (name -> camera
    frames cut at start and end), excluded / broken / ignored (name -> why); not_imitated
    (name -> samples of a kept episode whose actions training leaves out)."""

    kept: dict[str, int]
    trimmed: dict[str, tuple[int, int]]
    excluded: dict[str, str]
    broken: dict[str, str]
    ignored: dict[str, str]
    not_imitated: dict[str, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(self.kept.values())


class NothingToBuild(ConfigError):
    """No episode was kept; `report` says what became of each."""

    def __init__(self, message: str, report: BuildReport) -> None:
        super().__init__(message)
        self.report = report


def cache_root(episodes_dir: Path, episodes: list[Path]) -> Path:
    """Where cached keypoints go: beside the episodes, never inside a recorded bag."""
    return (episodes_dir.parent if episodes == [episodes_dir] else episodes_dir) / CACHE_DIR


def _is_recording(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or any(path.glob("*.mcap"))


def scan_episodes(episodes_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """The episode directories in `episodes_dir` (or `episodes_dir` itself when it is one):
    every directory with a rosbag2 metadata.yaml or an .mcap file (an unclosed recording),
    sorted; and the other directories with why they are not episodes. Hidden directories
    (kil's cache, a recovery in progress) are not looked at."""
    if not episodes_dir.is_dir():
        raise ConfigError(f"EPISODES_DIR: {episodes_dir} is not a directory")
    if _is_recording(episodes_dir):
        return [episodes_dir], {}
    episodes, ignored = [], {}
    for path in sorted(p for p in episodes_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_recording(path):
            episodes.append(path)
        else:
            ignored[path.name] = f"{path}: not a recording (no metadata.yaml, no .mcap file)"
    if not episodes:
        raise ConfigError(f"EPISODES_DIR: no rosbag2 episodes (directories with metadata.yaml or an .mcap file) in {episodes_dir}")
    return episodes, ignored


def exclusion(metadata: EpisodeMetadata | None, recovered: bool, task: str) -> str | None:
    """Why an episode is not a demonstration of `task` to train on (every reason, "; "
    between them), or None. An episode without kil_episode.yaml (a plain `ros2 bag record`)
    is taken as the lab recorded it."""
    if metadata is not None and metadata.task and metadata.task != task:
        return f"task {metadata.task!r}, not {task!r}"
    reasons = []
    if metadata is not None and metadata.status == "failed":
        reasons.append(f"the recording failed ({metadata.extra.get('recorder_error', 'recorder error')})")
    if recovered or (metadata is not None and metadata.status == "recovered"):
        reasons.append("recovered from a killed or cut recording (partial)")
    if metadata is not None and metadata.status == "recording":
        reasons.append("never saved (kil_episode.yaml status: recording)")
    if metadata is not None and metadata.success is False:
        reason = metadata.extra.get("stop_reason")
        reasons.append(f"unsuccessful (success: false{', ' + str(reason) if reason else ''})")
    if metadata is not None and metadata.success is None:
        reasons.append("success unknown (success: null)")
    return "; ".join(reasons) or None


class KeypointSource:
    """Keypoints for an episode's aligned frames: image matching or the sim's ground truth."""

    def __init__(self, config: BuildConfig) -> None:
        from kil.perception.spec import load_spec

        self.config = config
        self.spec = load_spec(config.spec or config.task)
        self.layout = self.spec.layout()
        self._detector = None
        self._extractor = None
        self.key = self._cache_key()
        if config.keypoints == "image":
            self._image_detector()  # missing or unreadable weights fail here, before any episode

    def _cache_key(self) -> str:
        parts = {"source": self.config.keypoints, "spec": self.spec.fingerprint(), "names": self.layout.names,
                 "rate_hz": self.config.rate_hz, "similarity": self.config.similarity_vectors,
                 "alignment": ALIGNMENT}
        if self.config.keypoints == "image":
            from kil.perception.features.base import load_config
            from kil.perception.registry import resolve_weights

            _, backend_config, source = load_config(self.config.feature_model)
            from kil.perception.keypoints import DETECTION_VERSION

            parts["backend"] = json.dumps(to_plain(backend_config), sort_keys=True)
            detector = self._detector_config()
            settings = {k: v for k, v in to_plain(detector).items() if not (k in ("instances", "tracking") and v is None)}
            if settings["permanence"]["rigid_m"] is None:  # the key as before rigid objects
                del settings["permanence"]["rigid_m"]
            parts["detector"] = [DETECTION_VERSION, json.dumps(settings, sort_keys=True)]  # image matching's key as before IN and T
            if detector.instances is not None:  # the segmenter's settings decide the masks
                from kil.perception.segmentation.base import SEGMENTERS

                parts["segmenter"] = json.dumps(to_plain(SEGMENTERS.load_config(detector.instances.segmenter)[1]), sort_keys=True)
                from kil.perception.instances import INSTANCE_MATCHING_VERSION

                parts["instance_matching"] = INSTANCE_MATCHING_VERSION
            if detector.tracking is not None:
                from kil.perception.trackers.base import TRACKERS

                _, tracker_config, tracker_source = TRACKERS.load_config(detector.tracking.tracker)
                parts["tracker"] = json.dumps(to_plain(tracker_config), sort_keys=True)
                tracker_weights = resolve_weights(tracker_config.weights, tracker_source) if tracker_config.weights else None
                if isinstance(tracker_weights, Path) and tracker_weights.is_file():
                    parts["tracker_weights"] = hashlib.sha256(tracker_weights.read_bytes()).hexdigest()
            weights = resolve_weights(backend_config.weights, source) if backend_config.weights else None
            if isinstance(weights, Path) and weights.is_file():
                parts["weights"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def _image_detector(self):
        if self._detector is None:
            from kil.perception.features.base import load_extractor
            from kil.perception.keypoints import KeypointDetector, reference_set

            self._extractor = load_extractor(self.config.feature_model, {"device": self.config.device})
            references = reference_set(self.spec, self._extractor)
            self._detector = KeypointDetector(references, self._detector_config(), device=self.config.device)
        return self._extractor, self._detector

    def _detector_config(self):
        from kil.perception.keypoints import DetectorConfig, extraction_config

        c = self.config
        instances, tracking = extraction_config(c.extraction, c.segmenter, c.tracker, c.track_init)
        return DetectorConfig(similarity_vectors=c.similarity_vectors, instances=instances, tracking=tracking,
                              permanence=PermanenceConfig(rigid_m=c.rigid_objects_m))

    def extract(self, streams: EpisodeStreams, episode: Path) -> dict[str, np.ndarray]:
        """keypoints (T, N, 3), visible (T, N), score (T, N) and optionally similarity (T, N, N)."""
        if self.config.keypoints == "oracle":
            return self._oracle(streams, episode)
        extractor, detector = self._image_detector()
        detector.reset()  # objects are tracked within an episode's frames (in order), never across episodes
        out: dict[str, list] = {"keypoints": [], "visible": [], "score": [], "similarity": []}
        B = self.config.batch_size
        grippers = [GripperState(p, float(o), q) for p, o, q in zip(streams.ee_position, streams.gripper, streams.ee_orientation)]
        for start in range(0, len(streams.frames), B):
            frames = streams.frames[start: start + B]
            features = extractor.extract(np.stack([f.rgb for f in frames]))
            for k in detector.detect(frames, features, grippers[start: start + B]):
                out["keypoints"].append(k.xyz)
                out["visible"].append(k.visible)
                out["score"].append(k.score)
                if k.similarity is not None:
                    out["similarity"].append(k.similarity)
        arrays = {key: np.stack(v) for key, v in out.items() if v}
        return arrays

    def _oracle(self, streams: EpisodeStreams, episode: Path) -> dict[str, np.ndarray]:
        if streams.truth is None:
            raise BagError(f"{episode}: no ground-truth keypoints recorded (oracle keypoints need a sim episode)")
        truth_names = list(streams.truth[0].names)  # recorded with them (the cloud's latched names)
        if all(name == f"kp{i}" for i, name in enumerate(truth_names)):  # a bag from before the names travelled
            metadata = read_metadata(episode)
            truth_names = list((metadata.extra if metadata else {}).get("ground_truth_keypoints", []))
        index = oracle_index(self.layout.names, truth_names, np.asarray(streams.truth[0].instance), episode)
        xyz = np.stack([k.xyz for k in streams.truth])[:, index]
        visible = np.stack([k.visible for k in streams.truth])[:, index]
        xyz = np.where(visible[..., None], xyz, np.nan).astype(np.float32)
        return {"keypoints": xyz, "visible": visible, "score": visible.astype(np.float32)}


def oracle_index(layout_names: tuple[str, ...], truth_names: list[str], truth_instance: np.ndarray, episode: Path) -> np.ndarray:
    """Index into the ground-truth keypoints for each spec keypoint. Spec names are
    `category/point` or `category[i]/point`; the i-th instance of a category in the ground
    truth (in instance order) is reference i."""
    if len(truth_names) != len(truth_instance):
        raise BagError(f"{episode}: kil_episode.yaml lists {len(truth_names)} ground-truth keypoint names for {len(truth_instance)} keypoints")
    truth = [(*parse_keypoint_name(name)[::2], int(inst)) for name, inst in zip(truth_names, truth_instance)]  # (category, point, instance)
    instances_of: dict[str, list[int]] = {}
    for category, _, inst in truth:
        if inst not in instances_of.setdefault(category, []):
            instances_of[category].append(inst)
    index = []
    for name in layout_names:
        category, r, point = parse_keypoint_name(name)
        candidates = instances_of.get(category, [])
        if (r or 0) >= len(candidates):
            raise BagError(f"{episode}: spec keypoint {name} has no ground truth (instances of {category!r}: {len(candidates)})")
        hits = [j for j, found in enumerate(truth) if found == (category, point, candidates[r or 0])]
        if not hits:
            raise BagError(f"{episode}: spec keypoint {name} has no ground truth ({category}/{point} is not among {truth_names})")
        index.append(hits[0])
    return np.array(index)


RECORDING_GRAPH = "rig_recording"  # what a rig's episodes hold; the rig file gives the names


def recording_graph(rig: str) -> GraphSpec:
    """The topics of episodes recorded on `rig` (a name in config/rigs/ or a rig file), with
    that rig's ROS topic names and wire options."""
    from kil.rigs import graph_topics, load_rig

    return load_graph(graph_path(RECORDING_GRAPH), topics=graph_topics(load_rig(rig)))


class TopicMaps:
    """The graph each episode is read through: `config.graph`, else the rig `config.rig`,
    else the rig its kil_episode.yaml names. Given ones are loaded at once (one-line
    errors before any episode); rigs named by episodes as they come."""

    def __init__(self, config: BuildConfig) -> None:
        self.fixed = load_graph(graph_path(config.graph)) if config.graph else recording_graph(config.rig) if config.rig else None
        self.label = f"graph {config.graph}" if config.graph else f"rig {config.rig}" if config.rig else None
        self._by_rig: dict[str, GraphSpec] = {}

    def of(self, episode: Path, metadata: EpisodeMetadata | None) -> tuple[GraphSpec, str]:
        """(graph, how it was chosen) for an episode."""
        if self.fixed is not None:
            return self.fixed, self.label
        if metadata is None or not metadata.rig:
            raise ConfigError(f"{episode}: no kil_episode.yaml naming the rig it was recorded on; pass --rig (or --graph)")
        if metadata.rig not in self._by_rig:
            try:
                self._by_rig[metadata.rig] = recording_graph(metadata.rig)
            except ConfigError as err:
                raise ConfigError(f"{episode}: kil_episode.yaml names rig {metadata.rig!r}: {err}; pass --rig (or --graph)") from None
        return self._by_rig[metadata.rig], f"rig {metadata.rig}"


def check_out(out: Path, option: str = "--out") -> None:
    """A new directory can be written at `out` (it does not exist; its parent is writable)."""
    if out.exists() or out.is_symlink():
        raise ConfigError(f"{option}: {out} exists already (datasets are never overwritten; choose another path)")
    check_creatable(out, option)


def episode_fingerprint(episode: Path, graph: GraphSpec) -> str:
    """What an episode's cached keypoints depend on besides the extraction settings: its
    files (names, sizes, modification times) and the topics it is read through."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in episode.iterdir() if p.is_file())
    topics = sorted((name, sorted(t.ros_topics.items())) for name, t in graph.topics.items())
    return hashlib.sha256(json.dumps([files, topics], default=str).encode()).hexdigest()[:16]


def _cached(cache: Path | None, compute) -> dict[str, np.ndarray]:
    """`compute()`, read from or written to `cache`; a cache that cannot be written (e.g. a
    read-only recordings directory) only costs the recomputation next time."""
    if cache is not None and cache.exists():
        with np.load(cache) as data:
            return {k: data[k] for k in data.files}
    arrays = compute()
    if cache is not None:
        tmp = cache.with_suffix(".tmp.npz")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, **arrays)
            tmp.replace(cache)
        except OSError as err:
            log.warning("keypoint cache not written (%s); continuing without it", err)
    return arrays


def extraction_attrs(config: BuildConfig) -> dict[str, str | None]:
    """The store's record of how keypoints were extracted (what the live graph must repeat)."""
    image = config.keypoints == "image"
    return {
        "segmenter": config.segmenter if image and (config.extraction == "in" or (config.extraction == "t" and config.track_init == "in")) else None,
        "tracker": config.tracker if image and config.extraction == "t" else None,
        "track_init": config.track_init if image and config.extraction == "t" else None,
        "rigid_objects_m": config.rigid_objects_m if image else None,
    }


def resize_images(images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """(T, h, w, 3) uint8 colour images resized (area filter) to size = (h, w); training and
    inference both go through here, so the policy sees the same pixels."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.asarray(rgb)).resize((size[1], size[0]), Image.BOX)) for rgb in images])


def imitated(obs_ns: np.ndarray, spans: list[tuple[int, int]], rate_hz: float, horizon: int) -> np.ndarray | None:
    """(T,) bool: the action chunk at each observation (targets at obs + i/rate_hz, i <
    horizon) stays clear of every [start, end) span not to imitate; None when all do."""
    if not spans:
        return None
    last = obs_ns + int(round((horizon - 1) * 1e9 / rate_hz))
    clear = np.ones(len(obs_ns), bool)
    for start, end in spans:
        clear &= (last < start) | (obs_ns >= end)
    return None if clear.all() else clear


def _episode_data(streams: EpisodeStreams, keypoints: dict[str, np.ndarray], images: tuple[int, int] | None,
                  imitate: np.ndarray | None = None) -> EpisodeData:
    from kil.policy.rotation import quat_to_rot6d

    action = np.concatenate([streams.action_position, quat_to_rot6d(streams.action_orientation), streams.action_gripper[..., None]], axis=-1)
    return EpisodeData(
        name=streams.name,
        stamp_ns=streams.obs_ns,
        keypoints=keypoints["keypoints"].astype(np.float32),
        visible=keypoints["visible"].astype(bool),
        score=keypoints["score"].astype(np.float32),
        ee_position=streams.ee_position.astype(np.float32),
        ee_orientation=streams.ee_orientation.astype(np.float32),
        gripper=streams.gripper.astype(np.float32),
        action=action.astype(np.float32),
        similarity=keypoints["similarity"].astype(np.float32) if "similarity" in keypoints else None,
        rgb=resize_images([f.rgb for f in streams.frames], images) if images else None,
        imitate=imitate,
    )


def build_dataset(episodes_dir: str | Path, out: str | Path, config: BuildConfig) -> BuildReport:
    """Build the store `out` from every episode under `episodes_dir` (see the module doc)."""
    out = Path(out)
    check_out(out)
    episodes, ignored = scan_episodes(Path(episodes_dir))
    maps = TopicMaps(config)
    source = KeypointSource(config)
    store: Store | None = None
    kept, trimmed, excluded, broken, not_imitated = {}, {}, {}, {}, {}
    cache_dir = cache_root(Path(episodes_dir), episodes) if config.cache else None
    for episode in tqdm(episodes, desc="episodes", unit="ep"):
        try:
            recovered = False
            if needs_recovery(episode) and not is_complete(episode):  # an unclosed recording, as README says
                count = recover_episode(episode)
                log.warning("%s: recovered an unclosed recording (%d messages)", episode, count)
                recovered = True
            metadata = read_metadata(episode)
            recovered = recovered or any(episode.glob("*.partial"))
            why = exclusion(metadata, recovered, config.task)
            if why is not None and (not config.include_unsuccessful or why.startswith("task ")):
                excluded[episode.name] = why
                continue
            if problem := bag_problem(episode):  # a damaged file: nothing to do with topic names
                raise BagError(problem)
            graph, named_by = maps.of(episode, metadata)
            try:
                streams = read_streams(episode, graph, config.rate_hz, config.horizon, config.min_overlap_s)
            except BagError as err:
                raise BagError(f"{err} (topic names of {named_by})") from None
            cache = cache_dir / f"{episode.name}.{source.key}.{episode_fingerprint(episode, graph)}.npz" if cache_dir else None
            keypoints = _cached(cache, lambda: source.extract(streams, episode))
            imitate = imitated(streams.obs_ns, not_to_imitate(metadata, episode), config.rate_hz, config.horizon)
            data = _episode_data(streams, keypoints, config.images, imitate)
        except Exception as err:  # noqa: BLE001 - any broken episode (bad bag, bad metadata) is skipped, never fatal
            message = str(err) if str(episode) in str(err) else f"{episode}: {err}"
            broken[episode.name] = message.splitlines()[0]
            log.warning("skipped %s", broken[episode.name])
            continue
        if store is None:
            store = Store.create(out, {
                # a task's shipped spec by its name, found again wherever kil is installed (a policy trained
                # on another machine); any other spec by its full path
                "task": config.task, "spec": str(spec_path(config.spec).resolve()) if config.spec else config.task,
                "keypoint_names": list(source.layout.names),
                "keypoint_instance": source.layout.instance.tolist(), "keypoint_source": config.keypoints,
                "feature_model": config.feature_model if config.keypoints == "image" else None,
                "extraction": config.extraction if config.keypoints == "image" else None,
                **extraction_attrs(config),
                "rate_hz": config.rate_hz, "horizon": config.horizon, "episodes": [],
                "robot_type": (metadata.extra.get("robot") if metadata else None) or (metadata.rig if metadata else None) or config.rig,
            })
        store.write_episode(data)
        kept[episode.name] = len(data)
        if any(streams.trimmed):
            trimmed[episode.name] = streams.trimmed
        if imitate is not None:
            not_imitated[episode.name] = int((~imitate).sum())
    report = BuildReport(kept, trimmed, excluded, broken, ignored, not_imitated)
    if store is None:
        raise NothingToBuild(f"{episodes_dir}: no episode to build a dataset from ({summary(report, len(episodes))})", report)
    stored = store.episodes()
    if not any(e.visible.any() for e in stored):  # a policy would see no keypoint at all: refuse (no statistics, no training)
        source = f"feature model {config.feature_model} (min_score in its config)" if config.keypoints == "image" else f"{config.keypoints} keypoints"
        raise ConfigError(f"{out}: no keypoint was visible in any of the {sum(kept.values())} samples of {len(kept)} episodes with "
                          f"{source}; check the spec and the model on a frame with `kil keypoints show`")
    store.set_stats(field_stats(stored))
    return report


def summary(report: BuildReport, total: int | None = None) -> str:
    """One line: how many episodes were kept, trimmed, excluded, broken and ignored."""
    total = total if total is not None else len(report.kept) + len(report.excluded) + len(report.broken)
    marked = f", {sum(report.not_imitated.values())} samples of {len(report.not_imitated)} marked not to imitate" if report.not_imitated else ""
    return (f"{total} episodes: {len(report.kept)} kept ({len(report.trimmed)} trimmed{marked}), {len(report.excluded)} excluded, "
            f"{len(report.broken)} broken; {len(report.ignored)} other directories ignored")
