"""Closed-loop episodes of a trained policy on the simulated rig: the `sim_policy` graph
(camera -> features -> keypoints -> policy -> interpolator -> rig; `sim_policy_rgb` for the
RGB baseline) run once per episode on the stepped clock, so results do not depend on how
fast this machine is."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from kil.graph import GraphSpec, load_graph
from kil.paths import graph_path
from kil.policy.inference import trained_perception  # noqa: F401 - the sim's callers take it from here too
from kil.sim.demos import EpisodeResult, run_episode

POLICY_GRAPHS = {"keypoint": "sim_policy", "rgb": "sim_policy_rgb"}  # by the policy's kind


def policy_graph(policy: str | Path, task: str, robot: str, variation: str, seed: int, feature_model: str | None = None,
                 policy_seed: int = 0, graph: str | None = None, video: str | Path | None = None,
                 rig_params: dict | None = None) -> GraphSpec:
    """The closed-loop graph set to one episode and one trained policy (its feature backend
    and keypoint spec are the ones the policy was trained with, unless overridden)."""
    kind = _meta(policy)["run"]["policy"]["kind"]
    overrides = {
        "rig": {"task": task, "robot": robot, "variation": variation, "seed": seed, **(rig_params or {})},
        "policy": {"policy": str(policy), "seed": policy_seed},
        "visualisation": {"video": str(video or "")},
    }
    if kind == "keypoint":
        model, spec, extraction = trained_perception(policy)
        model = feature_model or model
        overrides["features"] = {"model": model}
        overrides["keypoints"] = {"model": model, "spec": spec, **extraction}
    return load_graph(graph_path(graph or POLICY_GRAPHS[kind]), overrides)


def run_policy(policy: str | Path, task: str, robot: str, variation: str, seed: int, time_limit_s: float | None = None,
               video: str | Path | None = None, **kwargs) -> EpisodeResult:
    """One closed-loop episode (until the task is done and stays so for a second, or the
    task's time limit); `video`: an MP4 of the camera with keypoints and commanded path."""
    graph = policy_graph(policy, task, robot, variation, seed, video=video, **kwargs)
    result = run_episode(graph, task, seed, "stepped", time_limit_s)
    return replace(result, path=Path(video) if video else None)


def closed_loop_episodes(policy: str | Path, task: str, robot: str, planned: list[tuple[str, int]], seed: int, console,
                         label: str = "", video_dir: str | Path | None = None,
                         time_limit_s: float | None = None) -> Iterator[tuple[str, int, int, EpisodeResult]]:
    """Run the planned (variation, episode index) episodes under a progress bar, printing a
    line for each; yields (variation, index, episode seed, result) as each ends."""
    from rich.progress import Progress

    from kil.sim.demos import episode_seed

    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"{label}closed-loop episodes", total=len(planned))
        for variation, i in planned:
            video = None if video_dir is None else Path(video_dir) / f"{task}_{variation}_{i:03d}.mp4"
            result = run_policy(policy, task, robot, variation, episode_seed(seed, i), time_limit_s, video=video)
            progress.advance(bar)
            console.print(f"  {label}{variation} episode {i}: completion {result.completion:.2f} after {result.duration_s:.1f} s"
                          + (f" -> {video}" if video else ""))
            yield variation, i, episode_seed(seed, i), result


def evaluate(policy: str | Path, task: str, robot: str, variations: list[str], episodes: int, seed: int = 1000,
             video_dir: str | Path | None = None, time_limit_s: float | None = None) -> dict[str, list[EpisodeResult]]:
    """Closed-loop episodes per variation; prints each episode and a table with 95%
    Clopper-Pearson intervals for success and Wald intervals for completion."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from kil.bench.stats import clopper_pearson, wald

    console = Console(width=160)
    console.print(f"[bold]policy[/bold] {policy}: {training_facts(policy)}")
    table = Table(title=f"closed loop through the live graph, {task} on the {robot}, {episodes} episodes per variation (seed {seed})")
    for col in ("variation", "success", "95% CI (Clopper-Pearson)", "completion", "95% CI (Wald)", "mean duration s"):
        table.add_column(col)
    results: dict[str, list[EpisodeResult]] = {v: [] for v in variations}
    planned = [(v, i) for v in variations for i in range(episodes)]
    for variation, _, _, result in closed_loop_episodes(policy, task, robot, planned, seed, console, "", video_dir, time_limit_s):
        results[variation].append(result)
    for variation, runs in results.items():
        wins = sum(r.success for r in runs)
        lo, hi = clopper_pearson(wins, episodes)
        completion = [r.completion for r in runs]
        clo, chi = wald(completion)
        table.add_row(variation, f"{wins}/{episodes} = {wins / episodes:.0%}", f"[{lo:.0%}, {hi:.0%}]",
                      f"{np.mean(completion):.2f}", f"[{clo:.2f}, {chi:.2f}]", f"{np.mean([r.duration_s for r in runs]):.1f}")
    console.print(table)
    return results


def _meta(policy_path: str | Path) -> dict:
    from kil.config import load_yaml
    from kil.policy.inference import POLICY_FILE, checkpoint_dir

    return load_yaml(checkpoint_dir(policy_path) / POLICY_FILE)


def trained_task(policy_path: str | Path) -> str:
    return _meta(policy_path)["trained_on"]["task"]


EXTRACTION_WORDS = {"im": "image matching", "in": "instance matching", "t": "tracking"}


def training_facts(policy_path: str | Path) -> str:
    meta = _meta(policy_path)
    seconds = meta.get("train_seconds")
    took = f"{seconds / 60:.1f} min" if seconds is not None else "unknown"
    trained_on = meta["trained_on"]
    if meta["run"]["policy"]["kind"] == "rgb":
        inputs = "colour images"
    elif trained_on["keypoint_source"] == "image":
        inputs = f"image keypoints by {EXTRACTION_WORDS.get(trained_on.get('extraction') or 'im', trained_on.get('extraction'))}"
    else:
        inputs = f"{trained_on['keypoint_source']} keypoints"
    return f"{meta.get('step', '?')} training steps in {took}; trained on {meta['trained_on']['task']} ({inputs})"

