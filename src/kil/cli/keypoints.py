"""`kil keypoints show`: the task's reference keypoints found in frames of a recorded
episode by a feature backend, drawn on the frames, as one PNG (what the keypoints node sees)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show",), help="show: keypoints found in an episode's frames, as PNG")
    parser.add_argument("--episode", required=True, help="episode directory (rosbag2 MCAP)")
    parser.add_argument("--spec", default=None, help="task name or spec path (default: the episode's task)")
    parser.add_argument("--model", default="descriptor_net", help="feature backend config (config/features/)")
    parser.add_argument("--frames", type=int, default=4, help="evenly spaced frames to show")
    parser.add_argument("--out", required=True, help="PNG to write")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from kil.data.episode import episode_task
    from kil.data.preview import colour_frames
    from kil.errors import ConfigError
    from kil.perception.draw import draw_keypoints
    from kil.perception.features.base import load_extractor
    from kil.perception.keypoints import reference_set
    from kil.perception.matching import Matcher
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
    found = Matcher(references.descriptors).match(extractor.extract(images), images.shape[1:3])
    drawn = [draw_keypoints(img, found.uv[k], references.names, found.valid[k], found.score[k]) for k, img in enumerate(images)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(drawn, axis=1)).save(out)
    print(f"wrote {out}: {len(references.names)} keypoints of {spec.task} ({args.model}) in frames {picks.tolist()} of {episode}")
    return 0
