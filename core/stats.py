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
