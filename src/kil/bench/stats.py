"""Confidence intervals for success rates (paper 001: Clopper-Pearson for binary success,
Wald for task completion)."""

from __future__ import annotations

import math

from scipy.stats import beta


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for a success rate."""
    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def wald(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval for a mean (task completion)."""
    from scipy.stats import norm

    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1))
    half = float(norm.ppf(0.5 + level / 2)) * sd / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)
