"""distribution_metrics: its keys, values equal to the kernels', intervals, warnings, per-class FID, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.errors import InvalidInput
from diffaudit.metrics import distribution as dist
from diffaudit.metrics.frechet import fid
from diffaudit.metrics.kid import kernel_inception_distance
from diffaudit.metrics.prdc import ball_memberships
from diffaudit.metrics.vendi import vendi_score


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(13)
    real = np.abs(rng.standard_normal((240, 12))).astype(np.float32)
    fake = np.abs(rng.standard_normal((200, 12)) * 1.2 + 0.1).astype(np.float32)
    return real, fake


def test_every_metric_with_its_interval_and_sample_sizes(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    out = dist.distribution_metrics(real, fake, kid_subsets=10, kid_subset_size=100, seed=1, bootstrap=50)
    assert set(dist.METRIC_KEYS) == {
        "fid",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "density",
        "coverage",
        "vendi",
    }
    assert set(dist.METRIC_KEYS) <= set(out)
    assert (out[dist.N_REAL], out[dist.N_FAKE]) == (240, 200)
    balls = ball_memberships(real, fake)
    kid = kernel_inception_distance(real, fake, subsets=10, subset_size=100, seed=1)
    expected = {
        "fid": fid(real, fake),
        "kid_mean": kid.mean,
        "kid_std": kid.std,
        "precision": balls.precision,
        "recall": balls.recall,
        "density": balls.density,
        "coverage": balls.coverage,
        "vendi": vendi_score(fake),
    }
    assert {key: out[key] for key in dist.METRIC_KEYS} == pytest.approx(expected, rel=1e-12)
    intervals = out[dist.INTERVALS]
    assert set(intervals) == set(dist.METRIC_KEYS) - {"kid_std"}
    for key, (low, high) in intervals.items():
        assert low <= out[key] <= high, key
        assert low < high, key


def test_a_warning_unless_both_sides_have_the_usual_fifty_thousand(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    out = dist.distribution_metrics(real, fake, kid_subsets=2, kid_subset_size=50, bootstrap=0, moment_bootstrap=0)
    assert len(out[dist.WARNINGS]) == 1 and "200 generated and 240 real" in out[dist.WARNINGS][0]
    assert out[dist.INTERVALS]["fid"] is None and out[dist.INTERVALS]["precision"] is None
    assert dist._count_warnings(50_000, 50_000) == []


def test_per_class_fid_when_labels_are_given(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    out = dist.distribution_metrics(
        real,
        fake,
        kid_subsets=2,
        kid_subset_size=50,
        bootstrap=0,
        moment_bootstrap=0,
        real_labels=np.arange(240) % 2,
        fake_labels=np.arange(200) % 2,
    )
    assert set(out[dist.FID_PER_CLASS]) == {"0", "1"}
    assert dist.FID_PER_CLASS not in dist.distribution_metrics(real, fake, kid_subset_size=50, bootstrap=0)


def test_unusable_features_are_refused_with_what_to_fix(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    with pytest.raises(InvalidInput, match="differ in width"):
        dist.distribution_metrics(real, fake[:, :5])
    with pytest.raises(InvalidInput, match="2-D float array"):
        dist.distribution_metrics(real, fake.astype(np.int64))
