"""Interval statistics shared by the dashboards, the evaluations and the canary analysis (Django-free)."""
from __future__ import annotations

import math
from dataclasses import dataclass


def wilson(successes: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % with the default z); (0, 1) when nothing was seen."""
    n = episodes
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Rate:
    """A success rate with its Wilson 95 % interval (the same estimator the evaluations use)."""

    successes: int
    episodes: int

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.episodes)

    @property
    def rate(self) -> float | None:
        return self.successes / self.episodes if self.episodes else None

    def as_dict(self) -> dict:
        low, high = self.interval
        return {"successes": self.successes, "episodes": self.episodes, "rate": self.rate,
                "low": low, "high": high}


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of repeated measurements and its Student-t interval across them: (mean, low, high). One value
    has no spread to measure: its interval is the value itself (callers say n)."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
