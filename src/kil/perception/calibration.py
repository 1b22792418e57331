"""Visibility threshold calibrated from data: the lowest match score a keypoint may have and
still be reported visible, chosen on frames with ground truth so that keypoints reported
not visible are truly hidden (precision) as often as asked, while as many hidden ones as
possible are caught (recall). The threshold belongs to a feature model (its scores' scale),
not to a task, and is stored in the model's config (`min_score`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """threshold: min_score; precision and recall of `visible=false` for hidden keypoints on
    the calibration frames with it; hidden / keypoints: how many there were; reached: the
    asked precision was, catching some hidden keypoints (False: no threshold does, and -1
    flags nothing by score)."""

    threshold: float
    precision: float
    recall: float
    hidden: int
    keypoints: int
    reached: bool = True


def calibrate_min_score(score: np.ndarray, hidden: np.ndarray, flagged_otherwise: np.ndarray,
                        target_precision: float = 0.9) -> Calibration:
    """The threshold of highest recall among those whose precision reaches the target.

    score: (M,) best-match scores; hidden: (M,) bool, the truth does not see the keypoint;
    flagged_otherwise: (M,) bool, reported not visible whatever the score (geometric
    verification, no depth). Without any threshold reaching the target: -1 (scores flag
    nothing).
    """
    score, hidden, other = (np.asarray(a) for a in (score, hidden, flagged_otherwise))
    if not hidden.any():
        raise ValueError("calibration frames hold no hidden keypoint: nothing to calibrate against")
    best = Calibration(-1.0, *_figures(other, hidden), int(hidden.sum()), len(score))
    if best.precision < target_precision:
        best = Calibration(-1.0, best.precision, 0.0, best.hidden, best.keypoints)
    # a threshold just above each observed score flags that score and every lower one
    for threshold in np.unique(np.nextafter(score.astype(np.float32), np.float32(2))):
        precision, recall = _figures(other | (score < threshold), hidden)
        if precision >= target_precision and recall > best.recall:
            best = Calibration(float(threshold), precision, recall, best.hidden, best.keypoints)
    return best if best.recall > 0 else replace(best, reached=False)


def _figures(flagged: np.ndarray, hidden: np.ndarray) -> tuple[float, float]:
    tp = float((flagged & hidden).sum())
    return (tp / flagged.sum() if flagged.any() else 1.0), tp / max(hidden.sum(), 1)


def write_min_score(config_file: Path, threshold: float, note: str) -> None:
    """Set `min_score` in a feature model's YAML config, keeping everything else as it is."""
    text = config_file.read_text()
    line = f"min_score: {threshold:.4f}  # {note}"
    if re.search(r"(?m)^min_score:.*$", text):
        text = re.sub(r"(?m)^min_score:.*$", line, text)
    else:
        text = text.rstrip("\n") + "\n" + line + "\n"
    config_file.write_text(text)
