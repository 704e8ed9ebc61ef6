"""Head-to-head statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


@dataclass(frozen=True)
class WinRate:
    rate: float  # (wins + ties / 2) / n
    low: float  # Wilson score interval bounds
    high: float
    n: int  # wins + losses + ties
    wins: int
    losses: int
    ties: int


def win_rate(*, wins: int, losses: int, ties: int, confidence: float = 0.95) -> WinRate:
    """Win rate with ties counted as half a win, and its Wilson score interval.

    The interval treats the n = wins + losses + ties comparisons as Bernoulli trials
    with success share ``rate`` (a tie contributing half a success), which is
    slightly conservative when there are ties. With n = 0 there is no information:
    rate 0.5 and the interval [0, 1]. Raises ValueError for negative counts or a
    confidence outside (0, 1).
    """
    for name, value in (("wins", wins), ("losses", losses), ("ties", ties)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = wins + losses + ties
    if n == 0:
        return WinRate(rate=0.5, low=0.0, high=1.0, n=0, wins=0, losses=0, ties=0)
    rate = (wins + 0.5 * ties) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    denominator = 1 + z2 / n
    center = (rate + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / denominator
    return WinRate(
        rate=rate,
        low=max(0.0, center - half_width),
        high=min(1.0, center + half_width),
        n=n,
        wins=wins,
        losses=losses,
        ties=ties,
    )
