"""k-NN entropy and KL estimators against Gaussians with closed-form values."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.metrics.entropy import (
    equal_size_kl,
    half_sample_spread,
    information_estimates,
    kozachenko_leonenko_entropy,
    pca_basis,
    unit_ball_log_volume,
    wang_kulkarni_verdu_kl,
)


def gaussian_entropy(cov: np.ndarray) -> float:
    d = cov.shape[0]
    return 0.5 * (d * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])


def gaussian_kl(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    d = len(mu1)
    inv2 = np.linalg.inv(cov2)
    diff = mu2 - mu1
    return 0.5 * (
        np.trace(inv2 @ cov1) + diff @ inv2 @ diff - d + np.linalg.slogdet(cov2)[1] - np.linalg.slogdet(cov1)[1]
    )


COV = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]])


def test_unit_ball_volume() -> None:
    assert unit_ball_log_volume(1) == pytest.approx(np.log(2.0))
    assert unit_ball_log_volume(2) == pytest.approx(np.log(np.pi))
    assert unit_ball_log_volume(3) == pytest.approx(np.log(4 * np.pi / 3))


def test_entropy_of_gaussian() -> None:
    x = np.random.default_rng(0).multivariate_normal(np.zeros(3), COV, size=5000)
    assert kozachenko_leonenko_entropy(x, k=3) == pytest.approx(gaussian_entropy(COV), abs=0.06)


def test_kl_of_gaussians_both_directions() -> None:
    # the estimator is biased low by a few hundredths at n = 5000; tolerances say so
    rng = np.random.default_rng(1)
    mu1, mu2 = np.zeros(2), np.array([1.0, 0.0])
    cov1, cov2 = np.eye(2), np.diag([1.5, 1.0])
    p = rng.multivariate_normal(mu1, cov1, size=5000)
    q = rng.multivariate_normal(mu2, cov2, size=4000)
    assert gaussian_kl(mu1, cov1, mu2, cov2) == pytest.approx(0.3694, abs=1e-4)
    assert wang_kulkarni_verdu_kl(p, q) == pytest.approx(gaussian_kl(mu1, cov1, mu2, cov2), abs=0.08)
    assert wang_kulkarni_verdu_kl(q, p) == pytest.approx(gaussian_kl(mu2, cov2, mu1, cov1), abs=0.08)


def test_kl_of_identical_distributions_is_near_zero() -> None:
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(3000, 2)), rng.normal(size=(3000, 2))
    assert abs(wang_kulkarni_verdu_kl(p, q)) < 0.05


def mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    """A clustered 10-d sample (8 x 3 grid of clusters along two axes), like generated image features."""
    x = rng.normal(size=(n, 10)) * 0.3
    x[:, 0] += rng.integers(8, size=n)
    x[:, 1] += rng.integers(3, size=n)
    return x


@pytest.mark.parametrize(("n", "m"), [(256, 1438), (1438, 256)])
def test_equal_size_kl_removes_the_bias_of_unequal_sample_sizes(n: int, m: int) -> None:
    """D(P || P) = 0: Eq. 5 on 256 vs 1,438 points is off by about 0.45 nats (either sign); equal sizes are not."""
    rng = np.random.default_rng(7)
    pairs = [(mixture(rng, n), mixture(rng, m)) for _ in range(4)]
    plain = np.mean([wang_kulkarni_verdu_kl(p, q) for p, q in pairs])
    equal = np.mean([equal_size_kl(p, q) for p, q in pairs])
    assert abs(plain) > 0.3
    assert abs(equal) < 0.1


def test_equal_size_kl_is_eq5_when_sizes_match() -> None:
    rng = np.random.default_rng(8)
    p, q = rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 0.5
    assert equal_size_kl(p, q) == wang_kulkarni_verdu_kl(p, q)


def test_duplicate_points_are_refused() -> None:
    x = np.random.default_rng(3).normal(size=(50, 2))
    with pytest.raises(ValueError, match="distinct"):
        kozachenko_leonenko_entropy(np.concatenate([x, x, x, x]), k=3)


def test_half_sample_spread_matches_replication_spread() -> None:
    rng = np.random.default_rng(4)
    replicated = [kozachenko_leonenko_entropy(rng.normal(size=(1000, 2))) for _ in range(30)]
    x = rng.normal(size=(1000, 2))
    spread = half_sample_spread(kozachenko_leonenko_entropy, (x,), n_rounds=30, seed=0)
    assert 0.5 < spread / np.std(replicated, ddof=1) < 2.0


def test_pca_basis_matches_sklearn() -> None:
    from sklearn.decomposition import PCA

    x = np.random.default_rng(5).normal(size=(200, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5])
    mean, components = pca_basis(x, 3)
    reference = PCA(n_components=3).fit(x)
    np.testing.assert_allclose(mean, reference.mean_)
    np.testing.assert_allclose(np.abs(components @ reference.components_.T), np.eye(3), atol=1e-8)


def test_information_estimates_on_shifted_generated_set() -> None:
    rng = np.random.default_rng(6)
    train = rng.normal(size=(4000, 4))
    shift = np.array([1.0, 0.0, 0.0, 0.0])
    generated = rng.normal(size=(4000, 4)) + shift
    info = information_estimates(train, np.concatenate([generated, generated[:10]]), n_components=4, n_rounds=5)
    assert info["n_generated_distinct"] == 4000  # duplicates removed before estimating
    assert info["entropy_train"] == pytest.approx(gaussian_entropy(np.eye(4)), abs=0.1)
    assert info["kl_train_generated"] == pytest.approx(0.5, abs=0.15)  # |shift|^2 / 2
    assert info["kl_generated_train"] == pytest.approx(0.5, abs=0.15)
    assert 0 < info["kl_train_generated_se"] < 0.2
