"""Paper 001's central result on the simulated rig: a keypoint policy and the RGB diffusion
policy baseline, trained on the same in-distribution demonstrations for the same number of
steps, evaluated closed loop on in / obj / scene, side by side with Clopper-Pearson 95%
intervals. With `policies` keypoint_in and keypoint_t, also keypoint policies whose
keypoints come from instance matching and tracking (paper 001's Table II).

The stages run as the `kil` commands a user would run (scripted demonstrations, one
dataset holding keypoints and colour frames, two trainings, closed-loop episodes through
the live graph), each writing under `out`; a stage whose output is complete is not run
again, so an interrupted run continues where it stopped. Hours on a 2-core CPU at the
defaults (50 demonstrations, 30 episodes per variation and policy).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kil.config import require

POLICIES = ("keypoint", "rgb", "keypoint_in", "keypoint_t")
# how each policy's keypoints are extracted (paper 001's Table II: image matching, instance matching, tracking)
EXTRACTION = {"keypoint": "im", "rgb": "im", "keypoint_in": "in", "keypoint_t": "t"}
LABELS = {"keypoint": "keypoint", "rgb": "rgb", "keypoint_in": "keypoint IN", "keypoint_t": "keypoint T"}


@dataclass(frozen=True)
class VariationsConfig:
    task: str = "pick_place"
    robot: str = "panda"
    demos: int = 50
    episodes: int = 30  # closed-loop episodes per variation and policy
    variations: tuple[str, ...] = ("in", "obj", "scene")
    keypoint_preset: str = "cpu-small"
    rgb_preset: str = "rgb-cpu-small"
    steps: int = 0  # training steps of both policies (0: the presets')
    demo_seed: int = 0
    demo_miss_rate: float = 0.0  # share of the expert's first picks aimed beside the object (kil sim demos --miss-rate)
    eval_seed: int = 1000  # disjoint from the demonstrations'
    time_limit_s: float | None = None  # of each closed-loop episode (None: the task's)
    # The policies this process trains and evaluates; the table also shows the others' logged
    # episodes, so two processes (one per policy, one thread each) can share a 2-core machine.
    # keypoint_in / keypoint_t: keypoint policies on datasets extracted by instance matching
    # (depth_colour) and tracking (Lucas-Kanade from image matching), for Table II.
    policies: tuple[str, ...] = ("keypoint", "rgb")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.policies) - set(POLICIES))
        require(len(self.policies) > 0 and not unknown, "policies", f"choose from {', '.join(POLICIES)}, got {', '.join(self.policies)}")
        require(self.demos >= 1, "demos", f"must be >= 1, got {self.demos}")
        require(self.episodes >= 1, "episodes", f"must be >= 1, got {self.episodes}")
        require(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        require(0.0 <= self.demo_miss_rate <= 1.0, "demo_miss_rate", f"a probability in [0, 1], got {self.demo_miss_rate}")
        require(len(self.variations) > 0, "variations", "name at least one")
        require(self.time_limit_s is None or self.time_limit_s > 0, "time_limit_s", f"must be > 0, got {self.time_limit_s}")


def _kil(console: Console, *args: str) -> None:
    console.print(f"[bold]$ kil {' '.join(args)}[/bold]")
    done = subprocess.run([sys.executable, "-m", "kil", *args])
    if done.returncode != 0:
        raise SystemExit(f"kil {args[0]} failed (exit {done.returncode}); fix it and run the benchmark again to continue")


def _demos_complete(demos: Path, count: int) -> bool:
    return demos.is_dir() and len(list(demos.glob("episode_*/kil_episode.yaml"))) >= count


def _built(dataset: Path) -> bool:
    from kil.data.store import Store
    from kil.errors import ConfigError

    try:
        Store.open(dataset).require_complete()
        return True
    except (ConfigError, OSError, ValueError):
        return False


def _trained_steps(run: Path) -> int | None:
    """The step of a run's newest checkpoint, None without one."""
    from kil.config import load_yaml
    from kil.errors import ConfigError
    from kil.policy.inference import POLICY_FILE, checkpoint_dir

    try:
        return int(load_yaml(checkpoint_dir(run) / POLICY_FILE).get("step", 0))
    except (ConfigError, OSError):
        return None


def run(config: VariationsConfig, out: str | Path) -> int:
    from kil.policy.configuration import load_run_config
    from kil.sim.rollouts import training_facts

    console = Console(width=160)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _same_demonstrations(config, out)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    demos = out / "demos"
    datasets = {kind: out / ("dataset" if EXTRACTION[kind] == "im" else f"dataset_{EXTRACTION[kind]}") for kind in POLICIES}
    with _exclusive(out / ".shared_stages.lock"):  # a second process (--policies) waits for these, then reuses them
        _prepare(console, config, demos, datasets["keypoint"])
        for kind in config.policies:
            if EXTRACTION[kind] != "im":
                _build(console, config, demos, datasets[kind], "--extraction", EXTRACTION[kind])
    runs = {kind: out / f"policy_{kind}" for kind in POLICIES}
    for kind in config.policies:
        preset = config.rgb_preset if kind == "rgb" else config.keypoint_preset
        steps = config.steps or load_run_config(preset).training.steps
        done = _trained_steps(runs[kind])
        if done is None:
            if runs[kind].exists():
                raise SystemExit(f"{runs[kind]}: a run without a checkpoint; remove it and run again")
            _kil(console, "train", "--config", preset, "--dataset", str(datasets[kind]), "--out", str(runs[kind]), "--steps", str(steps))
        elif done < steps:
            _kil(console, "train", "--resume", str(runs[kind]), "--steps", str(steps))
    logs = {kind: out / f"episodes_{kind}.jsonl" for kind in POLICIES}
    results = {kind: _evaluate(console, runs[kind], kind, config, logs[kind]) if kind in config.policies else _logged(logs[kind], config)
               for kind in POLICIES}
    shown = [kind for kind in POLICIES if kind in ("keypoint", "rgb") or kind in config.policies or logs[kind].is_file()]
    facts = {kind: training_facts(runs[kind]) for kind in shown if _trained_steps(runs[kind]) is not None}
    console.print(comparison({kind: results[kind] for kind in shown}, config, facts))
    return 0


DEMONSTRATION_KEYS = ("task", "robot", "demo_seed", "demo_miss_rate")  # what the recorded demonstrations depend on


def _same_demonstrations(config: VariationsConfig, out: Path) -> None:
    """Refuse to reuse demonstrations (and everything made from them) recorded with other settings."""
    written = out / "config.json"
    if not (out / "demos").exists() or not written.is_file():
        return
    try:
        before = json.loads(written.read_text())
    except ValueError:
        return  # cut short while written: nothing to compare against
    for key in DEMONSTRATION_KEYS:
        if key in before and before[key] != getattr(config, key):
            raise SystemExit(f"{out}: its demonstrations were recorded with {key} {before[key]} ({written}), this run asks for "
                             f"{getattr(config, key)}; use another --out")


def _prepare(console: Console, config: VariationsConfig, demos: Path, dataset: Path) -> None:
    """The stages both policies share: the demonstrations and the dataset."""
    from kil.policy.configuration import load_run_config

    if not _demos_complete(demos, config.demos):
        if demos.exists():
            raise SystemExit(f"{demos}: an incomplete batch of demonstrations; remove it and run again")
        _kil(console, "sim", "demos", "--task", config.task, "--robot", config.robot, "--variation", "in",
             "--episodes", str(config.demos), "--seed", str(config.demo_seed), "--miss-rate", str(config.demo_miss_rate), "--out", str(demos))
    rgb_size = load_run_config(config.rgb_preset).policy.image_size
    _build(console, config, demos, dataset, "--images", f"{rgb_size[0]}x{rgb_size[1]}")


def _build(console: Console, config: VariationsConfig, demos: Path, dataset: Path, *options: str) -> None:
    """Build `dataset` from the demonstrations unless it is complete already."""
    if not _built(dataset):
        if dataset.exists():
            raise SystemExit(f"{dataset}: an interrupted build; remove it and run again")
        _kil(console, "build-dataset", str(demos), "--task", config.task, "--out", str(dataset), *options)


@contextlib.contextmanager
def _exclusive(lock: Path):
    """Holds an exclusive lock on `lock` (released when the process ends, however it ends)."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _logged(log: Path, config: VariationsConfig) -> dict[str, list[dict]]:
    """The episodes `log` holds for this evaluation seed, per variation, in episode order."""
    from kil.sim.demos import episode_seed

    done: dict[tuple[str, int], dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
                if row["seed"] == episode_seed(config.eval_seed, row["episode"]):  # else from another evaluation seed
                    done[(row["variation"], int(row["episode"]))] = row
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short when the run was stopped: that episode runs again
    return {v: [done[(v, i)] for i in range(config.episodes) if (v, i) in done] for v in config.variations}


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _evaluate(console: Console, policy: Path, kind: str, config: VariationsConfig, log: Path) -> dict[str, list[dict]]:
    """Closed-loop episodes of one policy, per variation; every finished episode is appended
    to `log` (one JSON line) at once, so a stopped run loses at most the episode under way."""
    from kil.sim.rollouts import closed_loop_episodes

    if log.is_file():  # drop a line cut short, so the next one is not appended to it
        log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if _parses(line)))
    done = {(row["variation"], row["episode"]): row for rows in _logged(log, config).values() for row in rows}
    todo = [(v, i) for v in config.variations for i in range(config.episodes) if (v, i) not in done]
    if todo:
        console.print(f"[bold]{kind} policy[/bold]: {len(todo)} closed-loop episodes to run ({len(done)} done before)")
    with log.open("a") as sink:
        for variation, i, seed, result in closed_loop_episodes(policy, config.task, config.robot, todo, config.eval_seed, console,
                                                               f"{kind} ", time_limit_s=config.time_limit_s):
            row = {"variation": variation, "episode": i, "seed": seed, "success": bool(result.success),
                   "completion": float(result.completion), "duration_s": float(result.duration_s)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            done[(variation, i)] = row
    return {v: [done[(v, i)] for i in range(config.episodes)] for v in config.variations}


def comparison(results: dict[str, dict[str, list[dict]]], config: VariationsConfig, facts: dict[str, str]) -> Table:
    """The side-by-side table: per variation, each policy's (`results`' keys, in order)
    successes with their interval."""
    from kil.bench.stats import clopper_pearson

    recovery = f" ({config.demo_miss_rate:.0%} of first picks aimed off, then recovered)" if config.demo_miss_rate else ""
    table = Table(title=f"{config.task} on the {config.robot}: trained on {config.demos} `in` demonstrations{recovery}, "
                        f"{config.episodes} closed-loop episodes per variation (seed {config.eval_seed}); Clopper-Pearson intervals",
                  caption="; ".join(f"{LABELS[kind]}: {fact}" for kind, fact in facts.items()))
    table.add_column("variation", no_wrap=True)
    for kind in results:
        table.add_column(f"{LABELS[kind]} success", no_wrap=True)
        table.add_column("95% CI", no_wrap=True)
    for variation in config.variations:
        row = [variation]
        for kind in results:
            runs = results[kind].get(variation, [])
            wins, n = sum(r["success"] for r in runs), len(runs)
            lo, hi = clopper_pearson(wins, n) if n else (0.0, 1.0)
            row += [f"{wins}/{n} = {wins / max(n, 1):.0%}" + ("" if n == config.episodes else " (so far)"), f"[{lo:.0%}, {hi:.0%}]"]
        table.add_row(*row)
    return table
