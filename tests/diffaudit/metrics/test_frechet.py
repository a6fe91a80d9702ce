"""FID against torch-fidelity, pytorch-fid and clean-fid on identical features; singular covariances against a
50-digit reference; per-class FID."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as cleanfid_frechet
from pytorch_fid.fid_score import calculate_frechet_distance as pytorch_fid_frechet
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from diffaudit.errors import InvalidInput
from diffaudit.metrics.frechet import feature_moments, fid, frechet_distance, per_class_fid


def structured(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Correlated, non-negative-ish features like pooled activations: a random linear mix of Gaussians."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (np.abs(rng.standard_normal((n, d)) @ mix + shift) + 0.1).astype(np.float32)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return structured(rng, 400, 48), structured(rng, 300, 48, shift=0.3)


def test_fid_matches_torch_fidelity_pytorch_fid_and_clean_fid(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    ours = fid(real, fake)
    s_fake = fid_features_to_statistics(torch.from_numpy(fake))
    s_real = fid_features_to_statistics(torch.from_numpy(real))
    assert ours == pytest.approx(
        fid_statistics_to_metric(s_fake, s_real, False)["frechet_inception_distance"], rel=1e-6
    )
    mu = (real.mean(0, dtype=np.float64), fake.mean(0, dtype=np.float64))
    sigma = (np.cov(real, rowvar=False), np.cov(fake, rowvar=False))
    assert ours == pytest.approx(pytorch_fid_frechet(mu[0], sigma[0], mu[1], sigma[1]), rel=1e-6)
    assert ours == pytest.approx(cleanfid_frechet(mu[0], sigma[0], mu[1], sigma[1]), rel=1e-6)


def test_a_set_against_itself_has_fid_zero(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, _ = pair
    assert fid(real, real) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(real, rowvar=False)))


def _reference_trace_sqrt(a: np.ndarray, b: np.ndarray) -> mpmath.mpf:
    """tr (S_a S_b)^(1/2) at 50 digits: eigenvalues of S_a^(1/2) S_b S_a^(1/2), moments from the float64 rows."""

    def covariance(x: np.ndarray) -> mpmath.matrix:
        rows = mpmath.matrix(x.astype(np.float64).tolist())
        n, d = rows.rows, rows.cols
        mean = [mpmath.fsum(rows[i, j] for i in range(n)) / n for j in range(d)]
        centred = mpmath.matrix([[rows[i, j] - mean[j] for j in range(d)] for i in range(n)])
        return centred.T * centred / (n - 1)

    sa, sb = covariance(a), covariance(b)
    values, vectors = mpmath.eigsy(sa)
    root = vectors * mpmath.diag([mpmath.sqrt(max(v, 0)) for v in values]) * vectors.T
    inner, _ = mpmath.eigsy(root * sb * root)
    return mpmath.fsum(mpmath.sqrt(max(v, 0)) for v in inner)


def test_singular_covariances_give_a_real_fid_matching_a_high_precision_reference() -> None:
    mpmath.mp.dps = 50
    rng = np.random.default_rng(2)
    a, b = structured(rng, 12, 24), structured(rng, 9, 24, shift=0.2)  # both covariances of rank < d
    ma, mb = feature_moments(a), feature_moments(b)
    reference_trace = float(_reference_trace_sqrt(a, b))
    exact = (ma.mean - mb.mean) @ (ma.mean - mb.mean) + np.trace(ma.covariance) + np.trace(mb.covariance)
    value = frechet_distance(ma, mb)
    assert isinstance(value, float) and np.isfinite(value)
    assert value == pytest.approx(exact - 2 * reference_trace, rel=1e-10)


def test_weighted_moments_equal_moments_of_repeated_rows(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, _ = pair
    weights = np.random.default_rng(3).integers(0, 3, len(real))
    weights[:2] = 1  # at least two rows
    weighted, repeated = feature_moments(real, weights.astype(float)), feature_moments(np.repeat(real, weights, 0))
    np.testing.assert_allclose(weighted.mean, repeated.mean, rtol=1e-12)
    np.testing.assert_allclose(weighted.covariance, repeated.covariance, rtol=1e-9, atol=1e-14)
    assert weighted.count == repeated.count


def test_per_class_fid_is_the_fid_of_each_class_present_on_both_sides(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    real_labels = np.arange(len(real)) % 3
    fake_labels = np.arange(len(fake)) % 2  # class 2 never generated: no FID for it
    per_class = per_class_fid(real, real_labels, fake, fake_labels)
    assert set(per_class) == {0, 1}
    assert per_class[1] == pytest.approx(fid(real[real_labels == 1], fake[fake_labels == 1]), rel=1e-12)


def test_fid_refuses_non_finite_features(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    fake = fake.copy()
    fake[0, 0] = np.nan
    with pytest.raises(InvalidInput, match="non-finite"):
        fid(real, fake)
