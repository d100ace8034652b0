"""The spread of repeated timings and the interval of a speedup, stated once.

    quartiles     statistics.quantiles(values, n=4, method="inclusive"): with 5 values the
                  25th, 50th and 75th percentiles are the 2nd, 3rd and 4th smallest
    rel_iqr       (q3 - q1) / median: how much one measurement's repeats disagree
    speedup       the median over repeats of the paired ratio baseline_time_i / variant_time_i
                  (repeat i timed the baseline and the variant back to back, so drift in the
                  machine's speed between repeats cancels in the ratio); its interval is the
                  interquartile range of those ratios
    noisy         the interval includes 1.0 (the repeats do not agree on which model is
                  faster), or the baseline's or the variant's own repeats spread more than the
                  limit (rel_iqr): the machine was too busy for the figure to mean much

The interval is a spread of the paired ratios, not a confidence interval of their median: with
5 repeats it is the 2nd to 4th smallest ratio, which needs no distribution assumption and no
random resampling, so the same timings always give the same interval.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Spread:
    median: float
    q1: float
    q3: float
    n: int

    @property
    def rel_iqr(self) -> float:
        return (self.q3 - self.q1) / self.median if self.median else float("inf")

    def includes(self, value: float) -> bool:
        return self.q1 <= value <= self.q3


def spread(values: Sequence[float]) -> Spread:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread of no values")
    if len(values) == 1:
        return Spread(values[0], values[0], values[0], 1)
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(median, q1, q3, len(values))


def paired_speedup(baseline_times: Sequence[float], variant_times: Sequence[float]) -> Spread:
    """The speedup (above 1: the variant is faster) from paired timings of the same repeats."""
    if len(baseline_times) != len(variant_times):
        raise ValueError(f"{len(baseline_times)} baseline timings but {len(variant_times)} variant timings")
    return spread([b / v for b, v in zip(baseline_times, variant_times)])


def noise_reasons(speedup: Spread, baseline: Spread, variant: Spread, max_rel_iqr: float) -> list[str]:
    """Why a speedup cannot be trusted; [] when it can."""
    reasons = []
    if speedup.includes(1.0):
        reasons.append(f"its interval {speedup.q1:.2f}-{speedup.q3:.2f}x includes 1.0")
    for who, s in (("baseline", baseline), ("variant", variant)):
        if s.rel_iqr > max_rel_iqr:
            reasons.append(f"the {who}'s repeats spread {100 * s.rel_iqr:.0f}% (IQR/median), more than "
                           f"eval.speed.max_rel_iqr={max_rel_iqr:g}")
    return reasons
