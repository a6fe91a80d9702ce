"""The occupancy distribution P(K = k | n, s): exact recurrence, Temme's approximation, normal law, by size."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from diffaudit.metrics.occupancy import (
    choose_method,
    log_stirling2_exact,
    log_stirling2_temme,
    lower_critical_value,
    occupancy_cdf,
    occupancy_log_pmf,
    occupancy_log_pmf_window,
    occupancy_mean,
    occupancy_variance,
    upper_critical_value,
)


def test_exact_stirling_numbers_match_known_values():
    assert np.allclose(np.exp(log_stirling2_exact(5, np.arange(6))), [0, 1, 15, 25, 10, 1])
    assert np.allclose(np.exp(log_stirling2_exact(10, np.array([3, 5]))), [9330, 42525])


def test_pmf_matches_enumeration_of_all_draws():
    # n = 5 draws among s = 3 images: S2(5,1) 3 / 3^5, S2(5,2) 3*2 / 3^5, S2(5,3) 3! / 3^5 = 3, 90, 150 over 243.
    counts = {1: 0, 2: 0, 3: 0}
    for draw in itertools.product(range(3), repeat=5):
        counts[len(set(draw))] += 1
    assert counts == {1: 3, 2: 90, 3: 150}
    for method in ("exact", "asymptotic"):
        got = [math.exp(occupancy_log_pmf(k, 5, 3, method)) for k in (1, 2, 3)]
        assert got == pytest.approx([3 / 243, 90 / 243, 150 / 243], rel=1e-12 if method == "exact" else 0.02)
    assert occupancy_log_pmf(4, 5, 3) == -math.inf
    assert occupancy_log_pmf(0, 5, 3) == -math.inf


def test_exact_moments_by_hand_and_against_the_pmf():
    # n = 2, s = 2: K = 1 or 2 with probability 1/2 each.
    assert occupancy_mean(2, 2) == pytest.approx(1.5)
    assert occupancy_variance(2, 2) == pytest.approx(0.25)
    for n, s in [(30, 7), (200, 500), (1000, 1000)]:
        lo, log_pmf = occupancy_log_pmf_window(n, s, "exact")
        pmf = np.exp(log_pmf)
        ks = np.arange(lo, lo + pmf.size)
        assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
        assert (ks * pmf).sum() == pytest.approx(occupancy_mean(n, s), rel=1e-12)
        assert ((ks - occupancy_mean(n, s)) ** 2 * pmf).sum() == pytest.approx(occupancy_variance(n, s), rel=1e-9)


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_temme_approximates_log_stirling_to_its_stated_accuracy(n):
    ks = np.arange(1, n + 1)
    exact, approx = log_stirling2_exact(n, ks), log_stirling2_temme(n, ks)
    assert exact[0] == approx[0] == exact[-1] == approx[-1] == 0.0
    assert np.max(np.abs(approx - exact)) < 0.1 / n  # relative error of S2 about 0.06 / n (Temme 1993)


@pytest.mark.parametrize(("n", "s"), [(400, 300), (800, 4000), (1000, 100_000)])
def test_asymptotic_and_exact_cdfs_agree_where_both_apply(n, s):
    mean, sd = occupancy_mean(n, s), math.sqrt(occupancy_variance(n, s))
    for k in range(max(1, int(mean - 4 * sd)), min(n, s, int(mean + 4 * sd)) + 1, max(1, int(sd / 3))):
        assert occupancy_cdf(k, n, s, "asymptotic") == pytest.approx(occupancy_cdf(k, n, s, "exact"), abs=1e-5)


@pytest.mark.parametrize(("n", "s"), [(200_000, 400_000), (10**6, 10**6)])
def test_normal_and_asymptotic_cdfs_agree_for_large_sizes(n, s):
    mean, sd = occupancy_mean(n, s), math.sqrt(occupancy_variance(n, s))
    for z in (-2.0, -1.0, 0.0, 1.0, 2.0):
        k = round(mean + z * sd)
        assert occupancy_cdf(k, n, s, "normal") == pytest.approx(occupancy_cdf(k, n, s, "asymptotic"), abs=5e-3)


def test_method_chosen_by_size():
    assert choose_method(10, 10) == "exact"
    assert choose_method(1000, 10**7) == "exact"
    assert choose_method(1001, 10**7) == "asymptotic"
    assert choose_method(10**7, 10**7) == "asymptotic"
    assert choose_method(10**11, 10**11) == "normal"  # standard deviation ~ 10^5: window beyond MAX_WINDOW


def test_accurate_at_ten_million():
    n = s = 10**7
    lo, log_pmf = occupancy_log_pmf_window(n, s)
    pmf = np.exp(log_pmf)
    ks = np.arange(lo, lo + pmf.size)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
    assert (ks * pmf).sum() == pytest.approx(occupancy_mean(n, s), rel=1e-9)
    assert ((ks - (ks * pmf).sum()) ** 2 * pmf).sum() == pytest.approx(occupancy_variance(n, s), rel=1e-3)


def test_critical_values_for_fifteen_samples_of_thirty_two():
    # P(K <= 9) = 0.0207 < 0.05 <= P(K <= 10) = 0.0992; P(K >= 15) = 0.0196 < 0.05 <= P(K >= 14) = 0.1338.
    assert occupancy_cdf(9, 15, 32) == pytest.approx(0.0207, abs=1e-4)
    assert lower_critical_value(15, 32, 0.05) == 9
    assert upper_critical_value(15, 32, 0.05) == 15
    assert lower_critical_value(3, 100, 0.05) == 2  # P(K <= 2) = 1 - 99 * 98 / 100^2 = 0.0298
    assert lower_critical_value(2, 10, 0.05) == 0  # P(K = 1) = 1/10: no count is rejected


def test_one_image_is_retrieved_by_every_sample() -> None:
    """N_train = 1 (or a class with one training image): log1p(-1/s) was a math domain error."""
    assert occupancy_mean(1, 1) == 1.0 and occupancy_mean(50, 1) == 1.0
    assert occupancy_variance(5, 1) == 0.0
