"""`kil annotate --episode BAG`: serve a local page to click named reference keypoints on a
frame of a recorded episode (or, with --view-of, a view of an annotated object: its points
where it lies on this frame); saving writes config/tasks/<task>/keypoints.yaml (or --out)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episode", required=True, help="episode directory (rosbag2 MCAP)")
    parser.add_argument("--frame", type=int, default=0, help="colour frame index to annotate")
    parser.add_argument("--topic", default=None, help="colour image topic (default: the episode's first)")
    parser.add_argument("--task", default=None, help="task name (default: the episode's metadata)")
    parser.add_argument("--out", default=None, help="spec directory (default config/tasks/<task>/)")
    parser.add_argument("--view-of", metavar="CATEGORY", default=None,
                        help="annotate this frame as a view of CATEGORY's instances (the same points where the object lies "
                             "here, turned or elsewhere), further descriptors of them, instead of as a reference image")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")


def main(args: argparse.Namespace) -> int:
    from kil.annotate.server import AnnotationSession, frame_from_episode, reference_name, serve
    from kil.data.episode import episode_task
    from kil.paths import share_dir

    episode, task = episode_task(args.episode, args.task)
    out = Path(args.out) if args.out else share_dir() / "config" / "tasks" / task
    image, topic = frame_from_episode(episode, args.frame, args.topic)
    session = AnnotationSession(image, reference_name(episode, args.frame), out, task, args.view_of)
    server = serve(session, args.port)
    host, port = server.server_address[:2]
    role = f"views of {args.view_of}" if args.view_of else "reference keypoints"
    print(f"kil annotate: {role} on frame {args.frame} of {topic} in {episode}; the spec is saved to {out / 'keypoints.yaml'}")
    print(f"open http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
