"""ATK keypoint selection as a job: train with the selection gate on, read the learned keep
probabilities, write the selected subset as a spec. The jointly trained run is itself a
usable policy (at inference it sees exactly the selected keypoints); rebuilding the dataset
with the new spec and training again gives a policy that never computes the others."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kil.data.store import Store
from kil.errors import ConfigError
from kil.perception.spec import SPEC_FILE, load_spec, save_spec, shipped
from kil.policy.configuration import load_run_config
from kil.policy.inference import Policy
from kil.training.policy import train

CANDIDATES_FILE = "keypoints.candidates.yaml"


@dataclass(frozen=True)
class SelectionResult:
    keep_probability: dict[str, float]
    selected: list[str]
    spec_path: Path
    run: Path


def select_keypoints(config: str | Path, dataset: str | Path, out: str | Path, overrides: dict[str, Any],
                     spec_out: str | Path | None = None) -> SelectionResult:
    run = load_run_config(config, overrides)
    if not run.policy.selection.enabled:
        raise ConfigError("policy.selection.enabled: keypoint selection needs it on")
    spec_file = Store.open(dataset).attrs.get("spec")
    if not spec_file:
        raise ConfigError(f"--dataset: {dataset} does not record the keypoint spec it was built with; rebuild it")
    spec = load_spec(spec_file)
    train(run, dataset, out)
    policy = Policy.load(out)
    names = policy.trained_on.keypoint_names
    if tuple(spec.layout().names) != names:
        raise ConfigError(f"{spec_file}: its keypoints changed since the dataset was built; rebuild the dataset")
    probability = policy.model.gate.keep_probability().tolist()
    selected = [n for n, keep in zip(names, policy.model.gate.selected().tolist()) if keep]
    if not selected:
        raise ConfigError(f"policy.selection.sparsity: {run.policy.selection.sparsity} dropped every keypoint; use a smaller weight")
    subset = spec.subset(selected)
    # a user's spec is rewritten in place, its candidates kept; an installed task spec never is
    target = Path(spec_out) if spec_out else Path(out) / "spec" if shipped(spec.directory) else spec.directory
    if target.resolve() == spec.directory.resolve():
        shutil.copyfile(spec.directory / SPEC_FILE, spec.directory / CANDIDATES_FILE)  # the candidates are never lost
    else:
        target.mkdir(parents=True, exist_ok=True)
        for image in subset.images():
            shutil.copyfile(spec.directory / image, target / image)
    path = save_spec(subset, target)
    return SelectionResult(dict(zip(names, probability)), selected, path, Path(out))
