"""A training run's headline numbers per step, and the steps where copying starts or diversity drops.

The numbers are read from each job's results document (the stages' summaries), so the same code serves every job
of a run: IRS_inf with its bounds (irs), the extraction test's copy rate per space and the volume-growth summary
(memorization), the DS count (novelty) and the FID family (distribution, with its bootstrap intervals) when the
job ran that stage. Only jobs of one spec are comparable, which the caller ensures.

Change points, stated rules:
- copying starts at the first step whose copy rate (in any space) exceeds `copy_threshold`;
- diversity drops at the first step whose IRS_inf upper bound lies below the lower bound of the step before it
  (every step before the drop is accepted, so that is the previous accepted step): the two intervals at alpha_e
  are disjoint and the later one is lower (IRS paper, Dombrowski et al., bounds of Sec. 7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from diffaudit.metrics.distribution import INTERVALS, METRIC_KEYS

COPY_RATE_THRESHOLD = 0.01  # a checkpoint copies when more than 1% of its samples are flagged as copies
IRS_INF = "irs_inf"
COPY_RATE_PREFIX = "copy_rate_"
VOLUME_GROWTH_MEAN = "volume_growth_mean"
VOLUME_GROWTH_MEDIAN = "volume_growth_median"
DS_COUNT = "ds_count"


@dataclass(frozen=True)
class Point:
    """One headline number of one step, with its interval when the stage gives one."""

    step: int
    value: float
    lower: float | None = None
    upper: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "value": self.value, "lower": self.lower, "upper": self.upper}


Numbers = dict[str, tuple[float, float | None, float | None]]  # name -> (value, lower, upper)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def headline_numbers(results: Mapping[str, Any]) -> Numbers:
    """Every headline number of one job's results document that the run's trajectory shows."""
    stages: Mapping[str, Any] = results.get("stages") or {}
    numbers: Numbers = {}
    synthetic = (stages.get("irs") or {}).get("synthetic")
    if synthetic:
        numbers[IRS_INF] = (synthetic["irs_inf"], synthetic["irs_inf_lower"], synthetic["irs_inf_upper"])
    memorization = stages.get("memorization") or {}
    for space, result in (memorization.get("spaces") or {}).items():
        numbers[COPY_RATE_PREFIX + space] = (result["extraction"]["fraction_flagged"], None, None)
    score = (memorization.get("volume_growth") or {}).get("score") or {}
    for name, key in ((VOLUME_GROWTH_MEAN, "mean"), (VOLUME_GROWTH_MEDIAN, "median")):
        if _is_number(score.get(key)):
            numbers[name] = (score[key], None, None)
    tsne = (stages.get("novelty") or {}).get("tsne") or {}
    if _is_number(tsne.get("majority_count")):
        numbers[DS_COUNT] = (tsne["majority_count"], None, None)
    distribution = stages.get("distribution") or {}
    intervals = distribution.get(INTERVALS) or {}
    for key in METRIC_KEYS:
        if _is_number(distribution.get(key)):
            interval = intervals.get(key) or (None, None)
            numbers[key] = (distribution[key], interval[0], interval[1])
    return numbers


def trajectory_series(numbers_by_step: Sequence[tuple[int, Numbers]]) -> dict[str, list[Point]]:
    """Per headline number, its points in step order (a step that lacks the number is left out of its series)."""
    series: dict[str, list[Point]] = {}
    for step, numbers in sorted(numbers_by_step, key=lambda item: item[0]):
        for name, (value, lower, upper) in numbers.items():
            series.setdefault(name, []).append(Point(step, float(value), _optional(lower), _optional(upper)))
    return series


def _optional(value: float | None) -> float | None:
    return None if value is None else float(value)


def copying_starts(series: Mapping[str, Sequence[Point]], threshold: float = COPY_RATE_THRESHOLD) -> int | None:
    """The first step whose copy rate, in any space, exceeds the threshold; None if none does."""
    above = [
        p.step
        for name, points in series.items()
        if name.startswith(COPY_RATE_PREFIX)
        for p in points
        if p.value > threshold
    ]
    return min(above, default=None)


def diversity_drops(irs: Sequence[Point]) -> int | None:
    """The first step whose IRS_inf upper bound lies below the previous step's lower bound; None if none does."""
    for previous, current in pairwise(irs):
        if previous.lower is not None and current.upper is not None and current.upper < previous.lower:
            return current.step
    return None
