"""`kil build-dataset EPISODES_DIR --task T --out DS`: recorded episodes -> a training store
(keypoints from image matching with a feature backend, or the sim's ground truth)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kil.data.builder import BuildReport


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episodes", metavar="EPISODES_DIR", help="directory of rosbag2 episodes (one directory each)")
    parser.add_argument("--task", required=True, help="task name (its keypoint spec is config/tasks/<task>/keypoints.yaml)")
    parser.add_argument("--out", required=True, help="training store to write (a new directory)")
    parser.add_argument("--keypoints", default="image", choices=("image", "oracle"),
                        help="image: match the spec's reference keypoints (default); oracle: the sim's ground truth")
    parser.add_argument("--features", default="descriptor_net", help="feature backend config for image matching")
    parser.add_argument("--extraction", default="im", choices=("im", "in", "t"),
                        help="im: image matching over the frame; in: instance matching inside the segmenter's masks; t: tracking")
    parser.add_argument("--segmenter", default="depth_colour", help="segmentation backend config for --extraction in")
    parser.add_argument("--tracker", default="lucas_kanade", help="point tracker config for --extraction t")
    parser.add_argument("--track-init", default="im", choices=("im", "in"), help="--extraction t: what finds the keypoints tracking starts from")
    parser.add_argument("--spec", default=None, help="keypoint spec (task name or path; default: the task's)")
    parser.add_argument("--rig", default=None,
                        help="rig whose topic names the recordings use (config/rigs/<rig>.yaml or a rig file; default: each episode's kil_episode.yaml)")
    parser.add_argument("--graph", default=None, help="graph description with the recordings' topics, for recordings of no rig file")
    parser.add_argument("--include-unsuccessful", action="store_true",
                        help="also train on episodes that failed, were never judged or saved, or were recovered (partial)")
    parser.add_argument("--rigid-objects", type=float, default=None, metavar="M",
                        help="follow objects as rigid bodies: a keypoint that moved more than M metres unlike the rest of its object is hidden")
    parser.add_argument("--similarity", action="store_true", help="also store similarity vectors (paper 000)")
    parser.add_argument("--rate", type=float, default=10.0, help="policy rate in Hz (default 10)")
    parser.add_argument("--horizon", type=int, default=16, help="actions per stored chunk (default 16)")
    parser.add_argument("--images", default=None, metavar="HxW", help="also store colour frames at this size (RGB baseline), e.g. 96x128")
    parser.add_argument("--no-cache", action="store_true", help="recompute keypoints even when cached")
    parser.add_argument("--lerobot", default=None, metavar="DIR", help="also export the store in the LeRobot dataset format")


def main(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from kil.config import load_dataclass
    from kil.data.builder import BuildConfig, NothingToBuild, build_dataset, check_out, summary
    from kil.errors import ConfigError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    images = None
    if args.images:
        try:
            images = [int(v) for v in args.images.lower().split("x")]
        except ValueError:
            raise ConfigError(f"--images: expected HEIGHTxWIDTH, e.g. 96x128, got {args.images!r}") from None
    config = load_dataclass(BuildConfig, {
        "task": args.task, "keypoints": args.keypoints, "feature_model": args.features, "extraction": args.extraction, "segmenter": args.segmenter,
        "tracker": args.tracker, "track_init": args.track_init, "rigid_objects_m": args.rigid_objects,
        "spec": args.spec, "graph": args.graph,
        "rig": args.rig, "include_unsuccessful": args.include_unsuccessful,
        "rate_hz": args.rate, "horizon": args.horizon, "similarity_vectors": args.similarity, "cache": not args.no_cache,
        "images": images,
    }, "build-dataset:")
    if args.lerobot:
        check_out(Path(args.lerobot), "--lerobot")
    try:
        report = build_dataset(args.episodes, args.out, config)
    except NothingToBuild as err:  # what became of each episode, then the error
        print_report(err.report, args.include_unsuccessful)
        raise
    print(f"{args.out}: {report.samples} samples at {args.rate:g} Hz from {summary(report)}")
    print_report(report, args.include_unsuccessful)
    if args.lerobot:
        from kil.data.lerobot import export_lerobot

        path = export_lerobot(args.out, args.lerobot)
        print(f"{path}: LeRobot dataset")
    return 0


def print_report(report: BuildReport, include_unsuccessful: bool) -> None:
    """One line per directory: kept (samples, frames trimmed), excluded, broken, ignored."""
    for name, samples in report.kept.items():
        cut = report.trimmed.get(name)
        trim = f"; trimmed {cut[0]} leading and {cut[1]} trailing camera frames without robot state or commands" if cut else ""
        print(f"  kept     {name}: {samples} samples{trim}")
    for label, entries in (("excluded", report.excluded), ("broken", report.broken), ("ignored", report.ignored)):
        for name, reason in entries.items():
            print(f"  {label:<8} {name}: {reason}")
    if report.excluded and not include_unsuccessful:
        print("  (--include-unsuccessful also trains on excluded episodes of this task)")
