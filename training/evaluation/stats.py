"""Small, dependency-free statistics for the report: robust summaries and a binomial interval.

Medians and inter-quartile ranges rather than means and standard deviations, because CPU
timings have long right tails (a page fault, another process waking up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Summary:
    """Median and spread of a sample; ``n == 0`` means nothing was measured."""

    n: int
    median: float
    p25: float
    p75: float
    min: float
    max: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), on an already sorted sample."""
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Summary:
    xs = sorted(v for v in values if math.isfinite(v))
    if not xs:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan)
    return Summary(
        len(xs), _quantile(xs, 0.5), _quantile(xs, 0.25), _quantile(xs, 0.75), xs[0], xs[-1]
    )


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; ties may be counted as half a success.

    Chosen over the normal approximation because it stays inside [0, 1] and does not collapse
    to zero width for 0/n or n/n — which small prompt sets hit often.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
