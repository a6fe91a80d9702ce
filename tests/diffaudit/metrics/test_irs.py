"""IRS: values printed in the IRS paper's supplement, hand-computed cases and brute-force scans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diffaudit.metrics.irs import (
    accepted_range,
    expected_ideal_irs,
    ideal_irs,
    irs_adjusted,
    irs_alpha,
    irs_inf,
    irs_report,
    irs_threshold_report,
    k_min,
    lower_bound_distinct,
    mle_distinct,
    n_learned,
    sequential_schedule,
    target_distinct,
    upper_bound_distinct,
)
from diffaudit.metrics.occupancy import occupancy_log_pmf_window, occupancy_mean


def test_k_min_for_imagenet_is_48744():
    # Sec. 11: N_train = 1,281,166, IRS_d = 80%, alpha_e = 5%, 50,000 samples -> "N_learned < 48744" is rejected.
    assert k_min(1_281_166, 50_000, 0.8, 0.05) == 48_744


def test_fifteen_samples_of_thirty_two_images_accept_ten_to_fourteen():
    # Sec. 7 / Fig. 9: "For N_train = 32 ... after 15 samples lies between 10 and 14."
    assert accepted_range(15, 32, 0.05) == (10, 14)
    assert k_min(32, 15, 1.0, 0.05) == 9


def test_thirty_nine_images_reject_a_model_with_ten_distinct():
    # Sec. 7: "for N_train = 39 we would even reject a model that only produces 10 different images" (15 samples).
    assert k_min(39, 15, 1.0, 0.05) == 10  # reject when N_learned <= k_min


def test_idealized_values_of_tables_4_and_5():
    # Table 4: alpha = 2 -> 86.47, alpha = 6 -> 99.75; Table 5: alpha = 16 -> 99.99 (printed truncated: 99.99998...).
    assert round(100 * ideal_irs(2), 2) == 86.47
    assert round(100 * ideal_irs(6), 2) == 99.75
    assert math.floor(100 * 100 * ideal_irs(16)) / 100 == 99.99
    # Fig. 13 / Table 6 print 96.98%, which is 1 - exp(-7/2) (Table 6's subscript reads 7/3, which would give 90.30).
    assert round(100 * ideal_irs(3.5), 2) == 96.98


def test_exact_finite_expectation():
    assert expected_ideal_irs(2, 2) == pytest.approx(0.75)  # 1 - (1/2)^2
    assert expected_ideal_irs(3, 10) == pytest.approx(1 - 0.9**3)
    assert expected_ideal_irs(2 * 10**6, 10**6) == pytest.approx(ideal_irs(2), abs=1e-6)


def test_n_learned_and_irs_alpha():
    assert n_learned(np.array([3, 3, 1, 2, 2])) == 3
    assert irs_alpha(3, 12) == 0.25


def test_mle_by_hand():
    # n = 3, k = 2: P(2 | 3, s) = 3 s (s-1) / s^3, i.e. (s-1)/s^2: 1/4 at s = 2, 2/9 at s = 3 -> maximum at s = 2.
    assert mle_distinct(2, 3, 100) == 2
    assert mle_distinct(5, 5, 100) == 100  # no duplicate: the likelihood rises up to N_train
    assert mle_distinct(1, 5, 100) == 1


def _scan(k, n, n_train, alpha_e):
    """Brute force over every s: argmax of the likelihood, and both bounds from exact cumulative probabilities."""
    loglik, cdf, sf = {}, {}, {}
    for s in range(k, n_train + 1):
        lo, log_pmf = occupancy_log_pmf_window(n, s, "exact")
        pmf = np.exp(log_pmf)
        loglik[s] = log_pmf[k - lo]
        cdf[s], sf[s] = pmf[: k - lo + 1].sum(), pmf[k - lo :].sum()
    s_hat = min(s for s in loglik if loglik[s] >= max(loglik.values()) - 1e-12)
    upper = max(s for s in cdf if cdf[s] >= alpha_e)
    lower = min([s for s in sf if sf[s] >= alpha_e], default=n_train)
    return s_hat, lower, upper


@pytest.mark.parametrize(("k", "n", "n_train"), [(7, 10, 40), (12, 20, 60), (25, 40, 80), (3, 30, 30), (9, 12, 12)])
def test_estimate_and_bounds_match_a_scan_over_s(k, n, n_train):
    s_hat, lower, upper = _scan(k, n, n_train, 0.05)
    assert mle_distinct(k, n, n_train) == s_hat
    assert lower_bound_distinct(k, n, n_train, 0.05) == lower
    assert upper_bound_distinct(k, n, n_train, 0.05) == upper
    assert lower <= s_hat <= upper


def test_bounds_cover_the_true_count_in_simulation():
    rng = np.random.default_rng(1)
    s, n, n_train, covered = 60, 40, 200, 0
    for _ in range(200):
        k = np.unique(rng.integers(0, s, n)).size
        result = irs_inf(k, n, n_train)
        covered += result["s_lower"] <= s <= result["s_upper"]
    assert covered / 200 >= 0.88  # two one-sided 5% tests: coverage at least 90% up to sampling noise


def test_irs_inf_is_fast_and_sane_at_ten_million():
    n_train, s, n = 10**7, 6 * 10**6, 5 * 10**6
    k = round(occupancy_mean(n, s))  # 3,392,574: the expected count, whose estimate is s up to rounding
    result = irs_inf(k, n, n_train)
    assert abs(result["s_hat"] - s) <= 2
    assert result["s_lower"] < s < result["s_upper"]
    assert result["s_upper"] - result["s_lower"] < 20_000  # sd of K ~ 600 -> s within about +-0.15%


def test_adjusted_score():
    assert irs_adjusted(600, 800) == 0.75


def test_target_distinct_rounds_up():
    assert target_distinct(1_281_166, 0.8) == 1_024_933  # 0.8 * N = 1,024,932.8
    assert target_distinct(50_000, 0.8) == 40_000


def test_threshold_report_and_schedule():
    report = irs_threshold_report(1_281_166, 50_000, 0.8, 0.05)
    assert report["k_min"] == 48_744
    assert report["max_duplicates_before_rejection"] == 1255
    json.dumps(report)
    schedule = sequential_schedule(50_000, 50_000, 0.8, 0.05)
    assert schedule[0]["samples"] == 200 and schedule[-1]["samples"] == 50_000  # first look at sqrt(40,000)
    assert sum(look["alpha"] for look in schedule) == pytest.approx(0.05)
    assert schedule[-1]["alpha"] == pytest.approx(0.025)
    assert schedule[-1]["threshold"] <= k_min(50_000, 50_000, 0.8, 0.05)
    samples = [look["samples"] for look in schedule]
    assert samples == sorted(set(samples))


def test_report_from_features():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 8)) * 10
    gen = train[np.repeat(np.arange(20), 3)] + rng.normal(size=(60, 8)) * 1e-3  # 20 training images, 3 times each
    test = train[np.arange(60)] + rng.normal(size=(60, 8)) * 1e-3  # every training image once
    labels = np.arange(60) % 2
    report = irs_report(train, gen, test, train_labels=labels, gen_labels=labels[np.repeat(np.arange(20), 3)])
    json.dumps(report)
    synthetic = report["synthetic"]
    assert synthetic["n_learned"] == 20 and synthetic["n_sample"] == 60 and synthetic["alpha"] == 1.0
    assert synthetic["irs_alpha"] == pytest.approx(20 / 60)
    # log L(s) = log s!/(s-20)! - 60 log s: L(21) - L(20) = ln 21 - 60 ln(21/20) = +0.117,
    # L(22) - L(21) = ln(22/2) - 60 ln(22/21) = -0.394, so s_hat = 21.
    assert synthetic["s_hat"] == 21
    assert report["real"]["n_learned"] == 60 and report["real"]["s_hat"] == 60
    assert report["adjusted"] == {"n_queries": 60, "irs_inf_a": pytest.approx(21 / 60)}
    assert set(report["per_class"]) == {"0", "1"}
    assert report["per_class"]["0"]["n_train"] == 30 and report["per_class"]["0"]["n_learned"] == 10
