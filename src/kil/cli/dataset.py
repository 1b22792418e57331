"""`kil build-dataset EPISODES_DIR --task T --out DS`: recorded episodes -> a training store
(keypoints from image matching with a feature backend, or the sim's ground truth)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("episodes", metavar="EPISODES_DIR", help="directory of rosbag2 episodes (one directory each)")
    parser.add_argument("--task", required=True, help="task name (its keypoint spec is config/tasks/<task>/keypoints.yaml)")
    parser.add_argument("--out", required=True, help="training store to write (a new directory)")
    parser.add_argument("--keypoints", default="image", choices=("image", "oracle"),
                        help="image: match the spec's reference keypoints (default); oracle: the sim's ground truth")
    parser.add_argument("--features", default="descriptor_net", help="feature backend config for image matching")
    parser.add_argument("--spec", default=None, help="keypoint spec (task name or path; default: the task's)")
    parser.add_argument("--graph", default=None, help="graph the episodes were recorded with (default: from their rig)")
    parser.add_argument("--similarity", action="store_true", help="also store similarity vectors (paper 000)")
    parser.add_argument("--rate", type=float, default=10.0, help="policy rate in Hz (default 10)")
    parser.add_argument("--horizon", type=int, default=16, help="actions per stored chunk (default 16)")
    parser.add_argument("--images", default=None, metavar="HxW", help="also store colour frames at this size (RGB baseline), e.g. 96x128")
    parser.add_argument("--no-cache", action="store_true", help="recompute keypoints even when cached")
    parser.add_argument("--lerobot", default=None, metavar="DIR", help="also export the store in the LeRobot dataset format")


def main(args: argparse.Namespace) -> int:
    import logging

    from kil.config import load_dataclass
    from kil.data.builder import BuildConfig, build_dataset

    from kil.errors import ConfigError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    images = None
    if args.images:
        try:
            images = [int(v) for v in args.images.lower().split("x")]
        except ValueError:
            raise ConfigError(f"--images: expected HEIGHTxWIDTH, e.g. 96x128, got {args.images!r}") from None
    config = load_dataclass(BuildConfig, {
        "task": args.task, "keypoints": args.keypoints, "feature_model": args.features, "spec": args.spec, "graph": args.graph,
        "rate_hz": args.rate, "horizon": args.horizon, "similarity_vectors": args.similarity, "cache": not args.no_cache,
        "images": images,
    }, "build-dataset:")
    report = build_dataset(args.episodes, args.out, config)
    print(f"{args.out}: {len(report.kept)} episodes, {report.samples} samples at {args.rate:g} Hz "
          f"({len(report.unsuccessful)} unsuccessful left out, {len(report.broken)} broken skipped)")
    for name, reason in report.broken.items():
        print(f"  skipped {name}: {reason}")
    if args.lerobot:
        from kil.data.lerobot import export_lerobot

        path = export_lerobot(args.out, args.lerobot)
        print(f"{path}: LeRobot dataset")
    return 0
