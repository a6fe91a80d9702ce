"""Paired A/B comparison of two checkpoints evaluated with one spec: per metric, the difference (candidate minus
baseline) with a paired bootstrap interval and a verdict at a stated error rate.

Sample i of both jobs comes from the same seed (seed + i), so per-sample quantities are paired, and training
image j is the same image in both jobs: a bootstrap replicate draws one set of positions with replacement and
evaluates both jobs on it (Efron and Tibshirani, "An Introduction to the Bootstrap", Sec. 16.4, paired data;
percentile interval, Sec. 13.3). Pairing removes the seed-to-seed noise both jobs share, so the interval is
narrower than one built from two independent intervals.

Verdict: the two-sided percentile interval at level 1 - error_rate lies wholly above zero (better when higher is
better, worse otherwise), wholly below (the opposite), or contains zero: not distinguishable. That is a test of
"no difference" at `error_rate`.

IRS_inf (Dombrowski et al., "Image Retrieval Score") is not a mean of per-sample values: it is estimated from the
number of distinct nearest training images among the samples. A replicate keeps the distinct positions it drew
(repeated positions would count as collisions that never happened) and estimates IRS_inf of both jobs from the
nearest-neighbour identities of those samples, so the replicates are of about 63% of the samples: an estimate from
fewer samples is biased against the full one's, so only the replicates' spread is used (difference -/+ z * their
standard deviation, as distribution.py does for FID), and that spread overstates the full sample's a little: the
interval errs on the wide side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final, Literal

import numpy as np

from diffaudit.errors import InvalidInput
from diffaudit.metrics.irs import mle_distinct

DEFAULT_ERROR_RATE = 0.05
DEFAULT_REPLICATES = 1000
Verdict = Literal["better", "worse", "not distinguishable"]
BETTER: Final = "better"
WORSE: Final = "worse"
NOT_DISTINGUISHABLE: Final = "not distinguishable"
# A statistic of one job evaluated at the resampled positions.
Statistic = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class PairedDifference:
    """One metric of the comparison: both values, their difference and its interval, the verdict."""

    metric: str
    baseline: float
    candidate: float
    difference: float  # candidate - baseline
    interval: tuple[float, float]
    verdict: Verdict
    higher_is_better: bool
    error_rate: float
    n_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "difference": self.difference,
            "interval": list(self.interval),
            "verdict": self.verdict,
            "higher_is_better": self.higher_is_better,
            "error_rate": self.error_rate,
            "n_pairs": self.n_pairs,
        }


def verdict_of(interval: tuple[float, float], higher_is_better: bool) -> Verdict:
    """better / worse when the interval excludes zero on that side, else not distinguishable."""
    low, high = interval
    if low > 0:
        return BETTER if higher_is_better else WORSE
    if high < 0:
        return WORSE if higher_is_better else BETTER
    return NOT_DISTINGUISHABLE


def mean_at(values: np.ndarray, positions: np.ndarray) -> float:
    return float(np.mean(values[positions]))


def irs_inf_at(n_train: int) -> Statistic:
    """IRS_inf (s_hat / N_train, IRS paper Sec. 7) of the distinct samples among the positions, from their nearest
    training images."""

    def statistic(nearest: np.ndarray, positions: np.ndarray) -> float:
        drawn = np.bincount(positions, minlength=nearest.size) > 0  # counting, not sorting: O(N) per replicate
        distinct = int(np.count_nonzero(np.bincount(nearest[drawn], minlength=n_train)))
        return mle_distinct(distinct, int(np.count_nonzero(drawn)), n_train) / n_train

    return statistic


def _check_pairs(baseline: np.ndarray, candidate: np.ndarray, metric: str) -> None:
    if baseline.ndim != 1 or baseline.shape != candidate.shape:
        raise InvalidInput(
            f"{metric}: the paired values must be two 1-D arrays of one length, got {baseline.shape} and "
            f"{candidate.shape}"
        )
    if baseline.size < 2:
        raise InvalidInput(f"{metric}: a paired bootstrap needs at least 2 pairs, got {baseline.size}")


def paired_bootstrap(
    metric: str,
    baseline: np.ndarray,
    candidate: np.ndarray,
    *,
    higher_is_better: bool,
    statistic: Statistic = mean_at,
    error_rate: float = DEFAULT_ERROR_RATE,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    spread_only: bool = False,
) -> PairedDifference:
    """statistic(candidate) - statistic(baseline), its paired percentile bootstrap interval at 1 - error_rate and
    the verdict; pair i is (baseline[i], candidate[i]). With `spread_only` (a statistic whose replicates are biased,
    e.g. IRS_inf of fewer samples) the interval is the difference -/+ z * the replicates' standard deviation."""
    baseline, candidate = np.asarray(baseline), np.asarray(candidate)
    _check_pairs(baseline, candidate, metric)
    if not 0 < error_rate < 1:
        raise InvalidInput(f"the error rate must lie in (0, 1), got {error_rate}")
    if replicates < 2:
        raise InvalidInput(f"the bootstrap needs at least 2 replicates, got {replicates}")
    n = baseline.size
    everything = np.arange(n)
    base_value, cand_value = statistic(baseline, everything), statistic(candidate, everything)
    rng = np.random.default_rng(seed)
    differences = np.empty(replicates)
    for r in range(replicates):
        positions = rng.integers(0, n, size=n)  # one draw for both jobs: the pairs stay together
        differences[r] = statistic(candidate, positions) - statistic(baseline, positions)
    if spread_only:  # replicates biased against the full sample: their spread only (as distribution.py's FID)
        half = NormalDist().inv_cdf(1 - error_rate / 2) * float(np.std(differences, ddof=1))
        interval = (cand_value - base_value - half, cand_value - base_value + half)
    else:
        low, high = np.quantile(differences, [error_rate / 2, 1 - error_rate / 2])
        interval = (float(low), float(high))
    return PairedDifference(
        metric=metric,
        baseline=base_value,
        candidate=cand_value,
        difference=cand_value - base_value,
        interval=interval,
        verdict=verdict_of(interval, higher_is_better),
        higher_is_better=higher_is_better,
        error_rate=error_rate,
        n_pairs=n,
    )


def paired_irs(
    baseline_nearest: np.ndarray,
    candidate_nearest: np.ndarray,
    n_train: int,
    *,
    error_rate: float = DEFAULT_ERROR_RATE,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> PairedDifference:
    """IRS_inf of the candidate minus the baseline's, from each sample's nearest training image, resampled in pairs."""
    return paired_bootstrap(
        "irs_inf",
        baseline_nearest,
        candidate_nearest,
        higher_is_better=True,
        statistic=irs_inf_at(n_train),
        error_rate=error_rate,
        replicates=replicates,
        seed=seed,
        spread_only=True,
    )


def paired_by_key(
    baseline_keys: np.ndarray, baseline: np.ndarray, candidate_keys: np.ndarray, candidate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The values of the keys both have (e.g. training-image indices), in the same order on both sides."""
    _, in_baseline, in_candidate = np.intersect1d(baseline_keys, candidate_keys, return_indices=True)
    return np.asarray(baseline)[in_baseline], np.asarray(candidate)[in_candidate]
