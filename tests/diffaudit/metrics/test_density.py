"""Density metrics of Sehwag et al.: Eq. 3 against scipy, kNN/LOF/precision on hand-made points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.covariance import LedoitWolf

from diffaudit.metrics import density
from diffaudit.metrics.density import (
    ClassGaussians,
    avg_knn_distance,
    cohens_d,
    compare_distributions,
    knn_distances,
    local_outlier_factor,
    precision,
    rejection_sampling_cost,
    summarize,
)


def labelled_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(0, 1, (40, 5)), rng.normal(3, 2, (30, 5)) @ rng.normal(size=(5, 5))])
    labels = np.repeat([0, 1], [40, 30])
    return features, labels


def test_hardness_score_is_eq3_negative_log_likelihood_with_ledoit_wolf_covariance() -> None:
    features, labels = labelled_features()
    gaussians = ClassGaussians.fit(features, labels)
    queries = np.random.default_rng(1).normal(1, 2, (7, 5))
    for c in (0, 1):
        members = features[labels == c]
        covariance = (gaussians.cholesky[c] @ gaussians.cholesky[c].T).numpy()
        np.testing.assert_allclose(covariance, LedoitWolf().fit(members).covariance_, rtol=1e-5, atol=1e-8)
        expected = -stats.multivariate_normal(mean=members.mean(axis=0), cov=covariance).logpdf(queries)
        got = gaussians.hardness_score(queries, np.full(7, c))
        np.testing.assert_allclose(got, expected, rtol=1e-10)
    # per-row labels pick the matching class
    mixed = gaussians.hardness_score(queries, np.array([0, 1, 0, 1, 0, 1, 0]))
    assert mixed[1] == pytest.approx(gaussians.hardness_score(queries[1:2], np.array([1]))[0])


def test_identity_precision_hardness_is_half_squared_distance_plus_constant() -> None:
    means = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    gaussians = ClassGaussians.identity(means)
    h = gaussians.hardness_score(np.zeros((1, 3)), np.array([1]))[0]
    assert h == pytest.approx(0.5 * (9.0 + 3 * math.log(2 * math.pi)))


def test_unlabelled_data_gets_one_gaussian_over_all_points() -> None:
    features, _ = labelled_features()
    unlabelled = ClassGaussians.fit(features)
    assert unlabelled.num_classes == 1
    covariance = (unlabelled.cholesky[0] @ unlabelled.cholesky[0].T).numpy()
    expected = -stats.multivariate_normal(features.mean(0), covariance).logpdf(features)
    np.testing.assert_allclose(unlabelled.hardness_score(features), expected, rtol=1e-10)


def test_fit_refuses_degenerate_classes() -> None:
    points = np.array([[0.0, 1.0], [2.0, 0.0], [5.0, 5.0], [1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="class 1 has 1"):
        ClassGaussians.fit(points[:3], np.array([0, 0, 1]))
    two_points = ClassGaussians.fit(points[:2], np.array([0, 0]))  # Ledoit-Wolf alone is singular here
    assert np.isfinite(two_points.hardness_score(points[2:3])).all()
    with pytest.raises(ValueError, match="class 1: its embeddings are all identical"):
        ClassGaussians.fit(points, np.array([0, 0, 0, 1, 1]))


def test_avg_knn_distance_on_a_line() -> None:
    reference = np.array([[0.0], [1.0], [2.0], [4.0], [8.0]])
    query = np.array([[1.5], [8.0]])
    # 1.5: neighbours 1 and 2 (0.5 each); 8: neighbours 8 (0) and 4 (4)
    np.testing.assert_allclose(avg_knn_distance(query, reference, k=2), [0.5, 2.0], rtol=1e-6)


def test_knn_distances_exclude_self_even_among_duplicates() -> None:
    points = np.random.default_rng(0).normal(size=(50, 4))
    points[7] = points[3]  # a duplicate: row 7's nearest other point is row 3, at distance 0
    whole = knn_distances(points, points, 3, exclude_self=True)
    brute = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(whole, np.sort(brute, axis=1)[:, :3], rtol=1e-12, atol=1e-12)
    assert whole[7, 0] == 0.0 and whole[3, 0] == 0.0


def test_precision_is_the_same_in_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    real, generated = rng.normal(size=(60, 3)), rng.normal(0.5, 1.2, size=(45, 3))
    whole = precision(generated, real)
    monkeypatch.setattr(density, "DISTANCE_BLOCK_ELEMENTS", 7 * 60)  # blocks of 7 generated rows
    assert precision(generated, real) == whole
    radii = np.sort(np.linalg.norm(real[:, None] - real[None], axis=2), axis=1)[:, 3]  # k = 3, self at column 0
    inside = (np.linalg.norm(generated[:, None] - real[None], axis=2) <= radii[None]).any(axis=1)
    assert whole == pytest.approx(inside.mean())


def test_local_outlier_factor_matches_hand_computation() -> None:
    # Reference 0, 1, 3, 7 in 1-D, k = 2. k-distances 3, 2, 3, 6; lrd(3) = 0.4, lrd(7) = 0.2.
    # Query 4.5: neighbours 3 and 7, reach-distances max(3, 1.5) = 3 and max(6, 2.5) = 6, lrd = 2/9.
    # LOF = mean(0.4, 0.2) / (2/9) = 1.35.
    reference = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert local_outlier_factor(np.array([[4.5]]), reference, k=2)[0] == pytest.approx(1.35)


def test_local_outlier_factor_is_high_for_an_isolated_point() -> None:
    reference = np.random.default_rng(0).normal(size=(200, 2))
    lof = local_outlier_factor(np.array([[0.0, 0.0], [8.0, 8.0]]), reference)
    assert lof[0] < 1.3 < 3.0 < lof[1]


def test_precision_counts_points_on_the_support_boundary() -> None:
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every radius is 1
    generated = np.array([[3.5], [4.0], [5.0]])  # inside, on the surface (<=), outside
    assert precision(generated, real, k=1) == pytest.approx(2 / 3)


def test_precision_of_identical_sets_is_one() -> None:
    points = np.random.default_rng(0).normal(size=(300, 8))
    assert precision(points, points) == 1.0


def test_summarize_uses_a_student_t_interval() -> None:
    values = np.array([1.0, 2.0, 4.0, 7.0])
    summary = summarize(values)
    low, high = stats.t.interval(0.95, 3, loc=3.5, scale=np.std(values, ddof=1) / 2)
    assert (summary["mean"], summary["ci_low"], summary["ci_high"]) == pytest.approx((3.5, low, high))


def test_cohens_d_and_p_values() -> None:
    assert cohens_d(np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])) == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    same = compare_distributions(rng.normal(size=400), rng.normal(size=400))
    shifted = compare_distributions(rng.normal(size=400), rng.normal(1.0, 1.0, size=400))
    assert same["welch_t_p"] > 0.01 and same["mann_whitney_p"] > 0.01
    assert shifted["cohens_d"] == pytest.approx(1.0, abs=0.2)
    assert shifted["welch_t_p"] < 1e-10 and shifted["mann_whitney_p"] < 1e-10


def test_rejection_sampling_cost_table_1() -> None:
    baseline = np.array([1.0] * 8 + [5.0] * 2)  # 20% in [4, 6)
    guided = np.array([1.0] * 4 + [5.0] * 6)  # 60% in [4, 6)
    (row,) = rejection_sampling_cost(
        baseline, guided, [(4.0, 6.0)], seconds_per_baseline_sample=1.0, seconds_per_guided_sample=1.5, num_wanted=10
    )
    assert row["baseline_seconds"] == pytest.approx(50.0)
    assert row["guided_seconds"] == pytest.approx(25.0)
    assert row["reduction"] == pytest.approx(2.0)
