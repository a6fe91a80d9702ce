"""The paired comparison statistics: verdicts, intervals that cover the true difference at the stated rate."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.errors import InvalidInput
from diffaudit.metrics.comparison import (
    BETTER,
    NOT_DISTINGUISHABLE,
    WORSE,
    irs_inf_at,
    paired_bootstrap,
    paired_by_key,
    paired_irs,
    verdict_of,
)
from diffaudit.metrics.irs import irs_summary


def test_verdict_of_interval() -> None:
    assert verdict_of((0.1, 0.3), higher_is_better=True) == BETTER
    assert verdict_of((0.1, 0.3), higher_is_better=False) == WORSE
    assert verdict_of((-0.3, -0.1), higher_is_better=True) == WORSE
    assert verdict_of((-0.3, -0.1), higher_is_better=False) == BETTER
    assert verdict_of((-0.1, 0.1), higher_is_better=True) == NOT_DISTINGUISHABLE
    assert verdict_of((0.0, 0.1), higher_is_better=True) == NOT_DISTINGUISHABLE


def test_a_zero_paired_difference_is_not_distinguishable() -> None:
    values = np.random.default_rng(0).normal(size=300)
    found = paired_bootstrap("m", values, values.copy(), higher_is_better=True, replicates=200)
    assert (found.difference, found.interval, found.verdict) == (0.0, (0.0, 0.0), NOT_DISTINGUISHABLE)
    assert found.n_pairs == 300


def test_a_shifted_candidate_is_worse_or_better() -> None:
    rng = np.random.default_rng(1)
    baseline = rng.normal(size=300)
    candidate = baseline + 0.2 + rng.normal(scale=0.1, size=300)  # large per-sample noise is shared: pairing helps
    higher = paired_bootstrap("m", baseline, candidate, higher_is_better=True, replicates=300)
    lower = paired_bootstrap("m", baseline, candidate, higher_is_better=False, replicates=300)
    assert (higher.verdict, lower.verdict) == (BETTER, WORSE)
    assert higher.interval[0] < higher.difference < higher.interval[1]
    assert higher.difference == pytest.approx(candidate.mean() - baseline.mean())
    # Unpaired, the same shift would be lost in the noise of N(0, 1) means (standard error 0.08 per side).
    assert higher.interval[1] - higher.interval[0] < 0.05


def test_the_interval_covers_the_true_difference_at_the_stated_rate() -> None:
    rng = np.random.default_rng(2)
    trials, covered, true_difference, error_rate = 300, 0, 0.3, 0.1
    for trial in range(trials):
        shared = rng.normal(size=100)
        baseline = shared + rng.exponential(size=100)  # skewed: the percentile interval still has to hold
        candidate = shared + true_difference + rng.exponential(size=100)
        found = paired_bootstrap(
            "m", baseline, candidate, higher_is_better=True, error_rate=error_rate, replicates=400, seed=trial
        )
        covered += found.interval[0] <= true_difference <= found.interval[1]
    rate = covered / trials
    assert 1 - error_rate - 0.05 <= rate <= 1 - error_rate + 0.05, rate  # 0.9 +- 3.0 standard errors of 300 trials


def test_irs_of_the_full_sample_matches_the_irs_metric_and_diversity_loss_is_worse() -> None:
    rng = np.random.default_rng(3)
    n_train = 500
    diverse = rng.integers(0, n_train, size=400)
    collapsed = np.where(rng.random(400) < 0.5, diverse, rng.integers(0, 40, size=400))  # half go to 40 images
    found = paired_irs(diverse, collapsed, n_train, replicates=200)
    assert found.interval[0] < found.difference < found.interval[1]  # centred on the full samples' difference
    assert found.baseline == irs_summary(diverse, n_train)["irs_inf"]
    assert found.candidate == irs_summary(collapsed, n_train)["irs_inf"]
    assert found.verdict == WORSE and found.interval[1] < 0
    same = paired_irs(diverse, diverse.copy(), n_train, replicates=50)
    assert (same.difference, same.interval, same.verdict) == (0.0, (0.0, 0.0), NOT_DISTINGUISHABLE)
    # The replicates' IRS is of the distinct samples drawn: on all of them it is IRS_inf itself.
    assert irs_inf_at(n_train)(diverse, np.arange(400)) == found.baseline


def test_paired_by_key_aligns_training_images() -> None:
    base, cand = paired_by_key(
        np.array([5, 1, 3]), np.array([50.0, 10.0, 30.0]), np.array([3, 5, 9]), np.array([3.5, 5.5, 9.5])
    )
    assert base.tolist() == [30.0, 50.0] and cand.tolist() == [3.5, 5.5]


@pytest.mark.parametrize(
    ("baseline", "candidate", "message"),
    [
        (np.zeros(3), np.zeros(4), "one length"),
        (np.zeros((3, 2)), np.zeros((3, 2)), "1-D"),
        (np.zeros(1), np.zeros(1), "at least 2 pairs"),
    ],
)
def test_bad_pairs_are_refused(baseline: np.ndarray, candidate: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        paired_bootstrap("m", baseline, candidate, higher_is_better=True)


def test_bad_error_rate_or_replicates_are_refused() -> None:
    with pytest.raises(InvalidInput, match="error rate"):
        paired_bootstrap("m", np.zeros(3), np.zeros(3), higher_is_better=True, error_rate=1.0)
    with pytest.raises(InvalidInput, match="at least 2 replicates"):
        paired_irs(np.zeros(3, dtype=int), np.zeros(3, dtype=int), 5, replicates=1)


def test_the_irs_interval_covers_the_true_difference_at_least_at_the_stated_rate() -> None:
    rng = np.random.default_rng(4)
    n_train, trials, covered, error_rate = 1000, 60, 0, 0.1
    for trial in range(trials):
        baseline = rng.integers(0, n_train, size=1000)  # an ideal model: IRS_inf 1
        candidate = baseline % 500  # the same seeds, collapsed onto half the training set: IRS_inf 0.5
        found = paired_irs(baseline, candidate, n_train, error_rate=error_rate, replicates=200, seed=trial)
        covered += found.interval[0] <= -0.5 <= found.interval[1]
    # Conservative by construction (replicates of ~63% of the samples): 0.98 measured at 100 trials.
    assert covered / trials >= 1 - error_rate - 0.05, covered / trials
