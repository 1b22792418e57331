"""`kil bench SUITE`: benchmarks that print speed, memory and quality figures.

  sim        render/control throughput, real-time factor, scripted-expert success rates
  match      naive vs exact fast image matcher (time, peak memory), feature-backend latency
  keypoints  keypoint accuracy (px, mm: median, p90, max) and visibility precision/recall on held-out simulated frames
  variations paper 001's central result: keypoint policy vs RGB baseline, same demonstrations, on in / obj / scene
  policy     closed-loop success of a trained policy in the sim (Clopper-Pearson intervals)
  live       the live graph in the local and/or ROS 2 runtime: interpolator jitter, end-to-end and per-node latency
  latency    policy inference latency: fast path vs a straightforward reference loop
  safety     the safety node against generated adversarial, irregularly timed input: cap violations per rig
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kil.errors import ConfigError


def _split(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    sim = suites.add_parser("sim", help="render/control throughput, real-time factor, expert success rates")
    sim.add_argument("--tasks", default="pick_place,place_upright,pick_place_two", help="comma-separated tasks")
    sim.add_argument("--robots", default="panda,ur5e", help="comma-separated robots")
    sim.add_argument("--variations", default="in,obj,scene,rot", help="comma-separated variations")
    sim.add_argument("--episodes", type=int, default=20, help="episodes per task, robot and variation")
    sim.add_argument("--seed", type=int, default=1000, help="batch seed (disjoint from the tests' seeds)")
    sim.set_defaults(run_suite=_sim)

    match = suites.add_parser("match", help="naive vs fast image matcher; feature-backend latency")
    match.add_argument("--channels", type=int, default=384, help="feature channels C")
    match.add_argument("--keypoints", type=int, default=6)
    match.add_argument("--repeats", type=int, default=15)
    match.add_argument("--no-backends", action="store_true", help="skip the feature-backend latency table")
    match.add_argument("--no-random-weights", action="store_true",
                       help="do not time backends without weights on random checkpoints of their architecture")
    match.set_defaults(run_suite=_match)

    kp = suites.add_parser("keypoints", help="keypoint accuracy of feature backends on held-out sim frames")
    kp.add_argument("--backends", default="descriptor_net,sift", help="comma-separated feature configs (config/features/)")
    kp.add_argument("--tasks", default="pick_place,place_upright", help="single-object tasks")
    kp.add_argument("--variations", default="in,obj,scene")
    kp.add_argument("--frames", type=int, default=10, help="frames per task and variation (the arm cycling as kil keypoints calibrate's)")
    kp.add_argument("--robot", default="panda")
    kp.add_argument("--episodes", metavar="DIR", help="instead: recorded sim episodes (kil record), every frame in order, "
                                                      "with object permanence and without (first backend only)")
    kp.add_argument("--extractions", default="im", help="with --episodes: comma-separated extraction methods to compare "
                                                        "(im image matching, in instance matching, t tracking; paper 001's Table II)")
    kp.add_argument("--spec", default=None, help="with --episodes: the keypoint spec (file or directory) instead of the "
                                                 "episodes' task spec; with views, also run without them")
    kp.set_defaults(run_suite=_keypoints)

    var = suites.add_parser("variations", help="paper 001's central result: keypoint policy vs RGB baseline on in / obj / scene")
    var.add_argument("--out", required=True, help="directory for demonstrations, dataset, policies and results (a run continues there)")
    var.add_argument("--task", default="pick_place")
    var.add_argument("--robot", default="panda")
    var.add_argument("--demos", type=int, default=50, help="in-distribution demonstrations both policies train on")
    var.add_argument("--demo-miss-rate", type=float, default=0.0, metavar="P",
                     help="share of the expert's first picks aimed beside the object, then picked again (kil sim demos --miss-rate)")
    var.add_argument("--episodes", type=int, default=30, help="closed-loop episodes per variation and policy")
    var.add_argument("--variations", default="in,obj,scene")
    var.add_argument("--keypoint-preset", default="cpu-small")
    var.add_argument("--rgb-preset", default="rgb-cpu-small")
    var.add_argument("--steps", type=int, default=0, help="training steps of both policies (default: the presets')")
    var.add_argument("--time-limit", type=float, default=None, metavar="S", help="seconds per closed-loop episode (default: the task's)")
    var.add_argument("--policies", default="keypoint,rgb",
                     help="policies this process trains and evaluates (e.g. one process per policy with OMP_NUM_THREADS=1): "
                          "keypoint, rgb, and for paper 001's Table II keypoint_in (instance matching), keypoint_t (tracking)")
    var.set_defaults(run_suite=_variations)

    pol = suites.add_parser("policy", help="closed-loop success of a trained policy in the sim")
    pol.add_argument("--policy", required=True, help="run directory (kil train --out) or checkpoint")
    pol.add_argument("--task", default=None, help="task (default: the one the policy was trained on)")
    pol.add_argument("--robot", default="panda")
    pol.add_argument("--variations", default="in", help="comma-separated variations")
    pol.add_argument("--episodes", type=int, default=20, help="episodes per variation")
    pol.add_argument("--seed", type=int, default=1000, help="batch seed (disjoint from the demonstrations')")
    pol.set_defaults(run_suite=_policy)

    liv = suites.add_parser("live", help="timing of the live graph: interpolator jitter, end-to-end and per-node latency")
    liv.add_argument("--policy", required=True, help="run directory (kil train --out) or checkpoint")
    liv.add_argument("--duration", type=float, default=60.0, help="wall-clock seconds of closed loop per runtime")
    liv.add_argument("--runtime", default="local", help="local, ros2 or local,ros2 (side by side); ros2 needs a sourced ROS 2")
    liv.add_argument("--real-time-factor", type=float, default=0.25, metavar="F",
                     help="ros2: the simulated rig runs at most F times real time (its figures are in simulated time)")
    liv.add_argument("--task", default=None, help="task (default: the one the policy was trained on)")
    liv.add_argument("--robot", default="panda")
    liv.add_argument("--seed", type=int, default=1000, help="episode seed")
    liv.set_defaults(run_suite=_live)

    lat = suites.add_parser("latency", help="policy inference latency: fast path vs reference loop")
    which = lat.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", help="run directory or checkpoint")
    which.add_argument("--preset", help="time an untrained policy of this preset's sizes (paper, cpu-small)")
    lat.add_argument("--repeats", type=int, default=50)
    lat.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    lat.add_argument("--ensembles", default="1,8", help="comma-separated ensemble sizes (1: no ensemble)")
    lat.set_defaults(run_suite=_latency)

    saf = suites.add_parser("safety", help="the safety node under generated adversarial timed input: violations per rig")
    saf.add_argument("--rigs", default="franka,ur5e,sim", help="comma-separated rigs (config/rigs/)")
    saf.add_argument("--ticks", type=int, default=100_000, help="control ticks per rig (3 s schedules)")
    saf.add_argument("--seed", type=int, default=0)
    saf.set_defaults(run_suite=_safety)


def _sim(args: argparse.Namespace) -> int:
    from kil.bench import sim

    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    return sim.run(_split(args.tasks), _split(args.robots), _split(args.variations), args.episodes, args.seed)


def _match(args: argparse.Namespace) -> int:
    from kil.bench import matching

    return matching.run(channels=args.channels, keypoints=args.keypoints, repeats=args.repeats, backends=not args.no_backends,
                        random_weights=not args.no_random_weights)


def _keypoints(args: argparse.Namespace) -> int:
    from kil.bench import keypoints

    if args.episodes:
        from kil.perception.keypoints import EXTRACTIONS

        unknown = sorted(set(_split(args.extractions)) - set(EXTRACTIONS))
        if unknown:
            raise ConfigError(f"--extractions: unknown {', '.join(unknown)} (choose from {', '.join(EXTRACTIONS)})")
        return keypoints.run_episodes(_split(args.backends)[0], Path(args.episodes), _split(args.extractions), args.spec)
    if args.frames < 1:
        raise ConfigError(f"--frames: must be >= 1, got {args.frames}")
    return keypoints.run(_split(args.backends), _split(args.tasks), _split(args.variations), args.frames, args.robot)


def main(args: argparse.Namespace) -> int:
    return args.run_suite(args)


def _live(args: argparse.Namespace) -> int:
    from kil.bench.live import live

    if args.duration <= 0:
        raise ConfigError(f"--duration: must be > 0 seconds, got {args.duration:g}")
    if not 0 < args.real_time_factor <= 10:
        raise ConfigError(f"--real-time-factor: must be in (0, 10], got {args.real_time_factor:g}")
    return live(args.policy, args.duration, args.task, args.robot, seed=args.seed, runtimes=tuple(_split(args.runtime)),
                real_time_factor=args.real_time_factor)


def _variations(args: argparse.Namespace) -> int:
    from kil.bench.variations import VariationsConfig, run

    try:
        config = VariationsConfig(args.task, args.robot, args.demos, args.episodes, tuple(_split(args.variations)),
                                  args.keypoint_preset, args.rgb_preset, args.steps, demo_miss_rate=args.demo_miss_rate,
                                  time_limit_s=args.time_limit,
                                  policies=tuple(_split(args.policies)))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return run(config, args.out)


def _policy(args: argparse.Namespace) -> int:
    from kil.sim.rollouts import evaluate, trained_task

    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    evaluate(args.policy, args.task or trained_task(args.policy), args.robot, _split(args.variations), args.episodes, args.seed)
    return 0


def _latency(args: argparse.Namespace) -> int:
    from kil.bench import policy

    return policy.latency(args.policy, args.repeats, args.threads, tuple(int(e) for e in _split(args.ensembles)), args.preset)


def _safety(args: argparse.Namespace) -> int:
    from kil.bench.safety import bench
    from kil.rigs import load_rig

    if args.ticks < 1:
        raise ConfigError(f"--ticks: must be >= 1, got {args.ticks}")
    rigs = _split(args.rigs)
    for rig in rigs:
        load_rig(rig)  # an unknown rig fails before any work
    return bench(rigs, args.ticks, args.seed)
