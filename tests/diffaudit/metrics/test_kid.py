"""KID against torch-fidelity and clean-fid on identical features and subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cleanfid.fid import kernel_distance as cleanfid_kernel_distance
from torch_fidelity.metric_kid import kid_features_to_metric

from diffaudit.errors import InvalidInput
from diffaudit.metrics.kid import kernel_inception_distance


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    real = np.abs(rng.standard_normal((300, 40))).astype(np.float32)
    fake = np.abs(rng.standard_normal((250, 40)) * 1.2 + 0.1).astype(np.float32)
    return real, fake


def test_kid_matches_torch_fidelity_on_the_same_subsets(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    ours = kernel_inception_distance(
        real.astype(np.float64), fake.astype(np.float64), subsets=20, subset_size=100, seed=7
    )
    # torch-fidelity: input 1 is the generated set; float64 features on both sides, so both compute in float64
    theirs = kid_features_to_metric(
        torch.from_numpy(fake).double(),
        torch.from_numpy(real).double(),
        kid_subsets=20,
        kid_subset_size=100,
        rng_seed=7,
        verbose=False,
    )
    assert ours.mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    assert ours.std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-9)


def test_float32_features_give_kid_within_float32_rounding_of_float64(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    single = kernel_inception_distance(real, fake, subsets=5, subset_size=100)
    double = kernel_inception_distance(real.astype(np.float64), fake.astype(np.float64), subsets=5, subset_size=100)
    assert single.mean == pytest.approx(double.mean, rel=1e-5)
    theirs = kid_features_to_metric(
        torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=5, kid_subset_size=100, rng_seed=0, verbose=False
    )  # torch-fidelity on float32 features computes everything in float32
    assert single.mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)


def test_kid_matches_clean_fid_on_the_same_subsets(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    ours = kernel_inception_distance(
        real.astype(np.float64), fake.astype(np.float64), subsets=10, subset_size=100, seed=3
    )
    np.random.seed(3)  # clean-fid draws from the global numpy RNG, generated rows (its feats2) first
    theirs = cleanfid_kernel_distance(real.astype(np.float64), fake.astype(np.float64), 10, 100)
    assert ours.mean == pytest.approx(theirs, rel=1e-9)


def test_kid_of_one_distribution_is_near_zero_and_of_shifted_ones_is_not(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    other = np.abs(np.random.default_rng(5).standard_normal(real.shape)).astype(np.float32)  # real's distribution
    same = kernel_inception_distance(real, other, subsets=10, subset_size=100)
    apart = kernel_inception_distance(real, fake + 1.0, subsets=10, subset_size=100)
    assert abs(same.mean) < 3 * same.std
    assert apart.mean > 20 * apart.std > 0


def test_kid_refuses_a_subset_larger_than_a_set(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    with pytest.raises(InvalidInput, match="lower the subset size"):
        kernel_inception_distance(real, fake, subset_size=len(fake) + 1)
