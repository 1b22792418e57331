"""`kil keypoints show`: the task's reference keypoints found in frames of a recorded
episode by a feature backend, drawn on the frames, as one PNG (what the keypoints node sees).

`kil keypoints select`: ATK selection (paper 003): train a policy jointly with a sparse
Gumbel-softmax mask over the candidate keypoints of a dataset (built with a spec of many
candidates) and write the selected subset into the spec (the candidates kept beside it).

`kil keypoints calibrate`: the visibility threshold (min_score) of a feature model, fitted
on simulated frames with ground truth (kil.perception.calibration).

`kil keypoints propose`: keypoints proposed automatically on a frame of an episode, inside
the objects the user points at (SKIL's k-means or KALM's consistent farthest points,
kil.perception.proposals), written as a spec `kil annotate` edits."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="keypoints found in an episode's frames, as PNG")
    show.add_argument("--episode", required=True, help="episode directory (rosbag2 MCAP)")
    show.add_argument("--spec", default=None, help="task name or spec path (default: the episode's task)")
    show.add_argument("--model", default="descriptor_net", help="feature backend config (config/features/)")
    show.add_argument("--frames", type=int, default=4, help="evenly spaced frames to show")
    show.add_argument("--out", required=True, help="PNG to write")
    show.set_defaults(run_action=_show)

    calibrate = actions.add_parser("calibrate", help="visibility threshold of a feature model, from simulated frames with ground truth")
    calibrate.add_argument("--model", default="descriptor_net", help="feature backend config (config/features/)")
    calibrate.add_argument("--tasks", default="pick_place,place_upright", help="simulated tasks to render frames of")
    calibrate.add_argument("--variations", default="in,obj,scene")
    calibrate.add_argument("--frames", type=int, default=10,
                           help="frames per task and variation (the arm cycling away / in front of an object / anywhere / carrying it / after putting it down)")
    calibrate.add_argument("--precision", type=float, default=0.9, help="share of keypoints reported not visible that must truly be hidden")
    calibrate.add_argument("--robot", default="panda")
    calibrate.add_argument("--write", action="store_true", help="store the threshold as min_score in the model's config")
    calibrate.set_defaults(run_action=_calibrate)

    propose = actions.add_parser("propose", help="keypoints proposed inside objects of a frame (SKIL k-means or KALM farthest points)")
    propose.add_argument("--episode", required=True, help="episode directory whose frame is the reference")
    propose.add_argument("--frame", type=int, default=0, help="colour frame index (as kil annotate counts them)")
    propose.add_argument("--object", action="append", required=True, metavar="NAME=U,V",
                         help="an object: its category name and a pixel on it (repeat for each object)")
    propose.add_argument("--method", default="kmeans", choices=("kmeans", "fps"),
                         help="kmeans: SKIL's feature clusters in the mask; fps: KALM's farthest points kept where consistent across --demos")
    propose.add_argument("--count", type=int, default=6, help="keypoints per object")
    propose.add_argument("--candidates", type=int, default=24, help="fps: farthest points sampled before the consistency check")
    propose.add_argument("--demos", default=None, help="fps: directory of demonstrations whose first frames the candidates must be found in")
    propose.add_argument("--model", default="descriptor_net", help="feature backend config (config/features/)")
    propose.add_argument("--segmenter", default="depth_colour", help="segmentation backend config (config/segmentation/)")
    propose.add_argument("--out", required=True, help="spec directory to write (keypoints.yaml, the reference image, proposals.png)")
    propose.set_defaults(run_action=_propose)

    select = actions.add_parser("select", help="ATK: learn a sparse keypoint subset jointly with a policy; write it into the spec")
    select.add_argument("--dataset", required=True, help="training store built with the candidate keypoints")
    select.add_argument("--config", default="cpu-small", help="policy/training preset or YAML (default cpu-small)")
    select.add_argument("--out", required=True, help="run directory for the jointly trained policy")
    select.add_argument("--sparsity", type=float, default=None, help="L1 weight on the keep probabilities (default 0.002)")
    select.add_argument("--steps", type=int, default=None, help="training steps")
    select.add_argument("--spec-out", default=None, help="directory to write the selected spec to (default: the dataset's spec, "
                        "whose candidates are kept as keypoints.candidates.yaml; for a task spec installed with kil, "
                        "OUT/spec)")
    select.set_defaults(run_action=_select)


def main(args: argparse.Namespace) -> int:
    return args.run_action(args)


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.progress import Progress

    from kil.bench.keypoints import CALIBRATION_SEED_BASE, observe, truth_frames
    from kil.errors import ConfigError
    from kil.perception.calibration import calibrate_min_score, write_min_score
    from kil.perception.features.base import load_config, load_extractor
    from kil.perception.keypoints import DetectorConfig

    if args.frames < 1:
        raise ConfigError(f"--frames: must be >= 1, got {args.frames}")
    if not 0 < args.precision <= 1:
        raise ConfigError(f"--precision: a share in (0, 1], got {args.precision}")
    _, _, config_file = load_config(args.model)
    extractor = load_extractor(args.model)
    tasks, variations = [t for t in args.tasks.split(",") if t], [v for v in args.variations.split(",") if v]
    with Progress() as progress:
        bar = progress.add_task("rendering calibration frames", total=len(tasks) * (1 + args.frames * len(variations)))
        references, frames = truth_frames(tasks, variations, args.frames, CALIBRATION_SEED_BASE, args.robot, lambda: progress.advance(bar))
        bar = progress.add_task("detecting", total=len(frames))
        obs = observe(extractor, references, frames, DetectorConfig(min_score=-1.0), lambda: progress.advance(bar)).arrays()
    try:
        result = calibrate_min_score(obs["score"], ~obs["truly_visible"], ~(obs["verified"] & obs["has_depth"]), args.precision)
    except ValueError as err:
        raise ConfigError(f"--frames: {err}") from None
    for target in sorted({0.99, 0.95, 0.9, 0.85, 0.8, args.precision}, reverse=True):
        other = calibrate_min_score(obs["score"], ~obs["truly_visible"], ~(obs["verified"] & obs["has_depth"]), target)
        print(f"  at precision >= {100 * target:.0f}%: min_score {other.threshold:.4f}, recall {100 * other.recall:.0f}% "
              f"(precision {100 * other.precision:.0f}%)")
    visible_scores = obs["score"][obs["truly_visible"]]
    print(f"{args.model}: min_score {result.threshold:.4f}: of {result.hidden} hidden keypoints (of {result.keypoints}) "
          f"{100 * result.recall:.0f}% reported not visible, at {100 * result.precision:.0f}% precision "
          f"(scores of seen keypoints: median {np.median(visible_scores):.3f}, 10th percentile {np.percentile(visible_scores, 10):.3f})")
    if args.write and not result.reached:
        # -1 would switch the score rule off: a model this unsure is no reason to report everything visible
        raise ConfigError(f"--precision: no min_score reaches {100 * args.precision:.0f}% precision on these frames; "
                          f"{config_file} is left as it was (ask for less, or train the model on such frames)")
    if args.write:
        note = (f"calibrated by kil keypoints calibrate ({', '.join(tasks)}; {', '.join(variations)}; {len(frames)} frames): "
                f"recall {100 * result.recall:.0f}% at precision {100 * result.precision:.0f}%")
        write_min_score(config_file, result.threshold, note)
        print(f"wrote min_score to {config_file}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from kil.training.selection import select_keypoints

    overrides: dict = {"policy": {"selection": {"enabled": True}}}
    if args.sparsity is not None:
        overrides["policy"]["selection"]["sparsity"] = args.sparsity
    if args.steps is not None:
        overrides["training"] = {"steps": args.steps}
    result = select_keypoints(args.config, args.dataset, args.out, overrides, args.spec_out)
    for name, probability in result.keep_probability.items():
        print(f"  {'kept   ' if name in result.selected else 'dropped'} {name}  (keep probability {probability:.2f})")
    print(f"{result.spec_path}: {len(result.selected)} of {len(result.keep_probability)} keypoints selected")
    print(f"train on them alone: kil build-dataset ... --spec {result.spec_path.parent}, then kil train")
    return 0


def _show(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from kil.data.episode import episode_task
    from kil.data.preview import colour_frames
    from kil.errors import ConfigError
    from kil.perception.draw import draw_keypoints
    from kil.perception.features.base import load_extractor
    from kil.perception.keypoints import reference_set
    from kil.perception.spec import load_spec

    episode, spec_name = episode_task(args.episode, args.spec, "--spec")
    spec = load_spec(spec_name)
    extractor = load_extractor(args.model)
    references = reference_set(spec, extractor)
    frames = [rgb for _, _, rgb in colour_frames(episode)]
    if not frames:
        raise ConfigError(f"--episode: {episode} has no colour frames")
    picks = np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).round().astype(int)
    images = np.stack([frames[i] for i in picks])
    found = references.matcher().match(extractor.extract(images), images.shape[1:3])
    drawn = [draw_keypoints(img, found.uv[k], references.names, found.valid[k], found.score[k]) for k, img in enumerate(images)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(drawn, axis=1)).save(out)
    print(f"wrote {out}: {len(references.names)} keypoints of {spec.task} ({args.model}) in frames {picks.tolist()} of {episode}")
    return 0


def _object_arguments(values: list[str]) -> list[tuple[str, tuple[float, float]]]:
    from kil.errors import ConfigError

    out = []
    for value in values:
        name, _, at = value.partition("=")
        try:
            u, v = (float(x) for x in at.split(","))
        except ValueError:
            raise ConfigError(f"--object: expected NAME=U,V (a category name and a pixel on the object), got {value!r}") from None
        if not name or "/" in name or "[" in name:
            raise ConfigError(f"--object: {value!r}: the name must be non-empty, without '/' or '['")
        out.append((name, (u, v)))
    return out


def _episode_frame(episode: Path, index: int | None = None):
    """The episode's aligned RGBD frame at colour frame `index` (None: its first aligned
    frame) and that colour frame's index."""
    import numpy as np

    from kil.data.builder import recording_graph
    from kil.data.episode import read_metadata
    from kil.data.episode_streams import read_streams
    from kil.data.preview import colour_frames
    from kil.errors import ConfigError

    metadata = read_metadata(episode)
    if metadata is None or not metadata.rig:
        raise ConfigError(f"{episode}: no kil_episode.yaml naming the rig it was recorded on")
    streams = read_streams(episode, recording_graph(metadata.rig))
    stamps = [stamp for _, stamp, _ in colour_frames(episode)]
    if index is None:
        return streams.frames[0], stamps.index(int(streams.obs_ns[0])) if int(streams.obs_ns[0]) in stamps else 0
    if not 0 <= index < len(stamps):
        raise ConfigError(f"--frame: {episode} has {len(stamps)} colour frames, got {index}")
    at = int(np.argmin(np.abs(streams.obs_ns - stamps[index])))
    if streams.obs_ns[at] != stamps[index]:
        raise ConfigError(f"--frame {index}: that frame of {episode} has no robot state beside it (trimmed); choose another")
    return streams.frames[at], index


def _propose(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from rich.console import Console
    from rich.progress import track

    from kil.annotate.server import reference_name
    from kil.data.episode import episode_task
    from kil.errors import ConfigError
    from kil.perception.draw import draw_keypoints
    from kil.perception.features.base import load_extractor
    from kil.perception.proposals import ProposalConfig, consistent_candidates, kmeans_keypoints, object_mask
    from kil.perception.segmentation.base import Prompt, load_segmenter
    from kil.perception.spec import SPEC_FILE, Category, KeypointSpec, Reference, save_spec

    objects = _object_arguments(args.object)
    names = [name for name, _ in objects]
    if len(set(names)) != len(names):
        raise ConfigError(f"--object: one object per category name, got {names} (several instances: propose one, annotate the rest)")
    try:
        config = ProposalConfig(count=args.count, candidates=max(args.candidates, args.count))
    except ValueError as err:
        raise ConfigError(f"--{str(err).split(':')[0]}: {str(err).split(': ', 1)[1]}") from None
    if args.method == "fps" and not args.demos:
        raise ConfigError("--demos: the fps method keeps candidates found consistently across demonstrations; name their directory")
    out = Path(args.out)
    if (out / SPEC_FILE).exists():
        raise ConfigError(f"--out: {out / SPEC_FILE} exists (edit it with kil annotate, or choose another --out)")
    episode, task = episode_task(args.episode, None, "--episode")
    extractor = load_extractor(args.model)
    segmenter = load_segmenter(args.segmenter)
    frame, index = _episode_frame(episode, args.frame)
    demos = []
    if args.method == "fps":
        episodes = sorted(p for p in Path(args.demos).glob("episode_*") if p.is_dir())
        if not episodes:
            raise ConfigError(f"--demos: no episode_* directories in {args.demos}")
        for path in track(episodes, description="first frames of the demonstrations"):
            demo, _ = _episode_frame(path)
            demos.append((demo, extractor.extract(demo.rgb)[0].numpy()))
    features = extractor.extract(frame.rgb)[0].numpy()
    instances = segmenter.segment(frame, [Prompt(text=name, points=np.array([at])) for name, at in objects])
    console = Console(width=120)
    categories, drawn_uv, drawn_names = [], [], []
    for p, (name, at) in enumerate(objects):
        mask = object_mask(instances.of(p), at)
        if mask is None:
            raise ConfigError(f"--object {name}={at[0]:g},{at[1]:g}: no instance of {args.segmenter} covers that pixel of frame {index}")
        try:
            found = kmeans_keypoints(features, mask, config) if args.method == "kmeans" else consistent_candidates(frame, features, mask, demos, config)
        except ValueError as err:
            raise ConfigError(f"--object {name}: {err}") from None
        if args.method == "kmeans":
            uv = np.unique(found, axis=0)  # clusters that collapsed onto one pixel count once
        else:
            console.print(f"{name}: {int(found.kept.sum())} of {len(found.uv)} farthest points found in >= {config.consistency:.0%} "
                          f"of {len(demos)} demonstrations (shares: {' '.join(f'{s:.2f}' for s in found.share)})")
            if not found.kept.any():
                raise ConfigError(f"--object {name}: no candidate was found consistently across the demonstrations; "
                                  "try --method kmeans, more --candidates, or another frame")
            uv = found.uv[found.kept]
        points = {f"k{i}": [float(u), float(v)] for i, (u, v) in enumerate(uv)}
        categories.append(Category(name, name, [Reference(reference_name(episode, index), points)]))
        drawn_uv.append(uv)
        drawn_names += [f"{name}/{k}" for k in points]
    out.mkdir(parents=True, exist_ok=True)
    image = out / reference_name(episode, index)
    Image.fromarray(frame.rgb).save(image)
    path = save_spec(KeypointSpec(task, categories), out)
    uv = np.concatenate(drawn_uv)
    Image.fromarray(draw_keypoints(frame.rgb, uv, drawn_names, np.ones(len(uv), bool), np.ones(len(uv)))).save(out / "proposals.png")
    print(f"wrote {path}: {len(uv)} keypoints ({args.method}) on frame {index} of {episode}; {out / 'proposals.png'} shows them; "
          f"edit with: kil annotate --episode {episode} --frame {index} --out {out}")
    return 0
