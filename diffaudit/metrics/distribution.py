"""Every distribution metric of generated against real features in one call, with bootstrap intervals.

FID (diffaudit.metrics.frechet), KID (kid), precision / recall / density / coverage (prdc) and the Vendi score of the
generated set (vendi), with the sample sizes they used, a percentile bootstrap interval per value and warnings where
the counts differ from those the numbers are usually quoted at. Memory stays bounded at 50,000 x 2,048 per side: no
N x N matrix is formed anywhere.

Bootstrap (Efron, percentile intervals): precision and density resample the generated rows' ball memberships,
recall and coverage the real rows', with the k-NN radii held at their full-sample values (resampling points inside
the radii, which a replicate would otherwise recompute at the cost of two k-NN searches); the KID interval
resamples the per-subset estimates. FID and Vendi recompute their moments from multinomially reweighted rows (two
d x d accumulations per replicate, hence their own, smaller, replicate count); a resample repeats rows, which biases
both (FID up, Vendi down, as fewer samples would), so their replicates give the spread only and the interval is the
estimate -/+ z * the replicates' standard deviation rather than the replicates' quantiles.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from diffaudit.errors import InvalidInput
from diffaudit.metrics.frechet import checked_features, feature_moments, frechet_distance, per_class_fid
from diffaudit.metrics.kid import kernel_inception_distance
from diffaudit.metrics.prdc import PRDC_K, ball_memberships
from diffaudit.metrics.vendi import vendi_score

FID = "fid"
KID_MEAN = "kid_mean"
KID_STD = "kid_std"
PRECISION = "precision"
RECALL = "recall"
DENSITY = "density"
COVERAGE = "coverage"
VENDI = "vendi"
METRIC_KEYS = (FID, KID_MEAN, KID_STD, PRECISION, RECALL, DENSITY, COVERAGE, VENDI)
N_REAL = "n_real"
N_FAKE = "n_fake"
INTERVALS = "intervals"
WARNINGS = "warnings"
FID_PER_CLASS = "fid_per_class"

FID_QUOTED_COUNT = 50_000  # FID is biased in N; it is usually quoted for 50,000 generated against 50,000 real rows
BOOTSTRAP_REPLICATES = 100
MOMENT_BOOTSTRAP_REPLICATES = 10
INTERVAL_LEVEL = 0.95


def distribution_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    k: int = PRDC_K,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    bootstrap: int = BOOTSTRAP_REPLICATES,
    moment_bootstrap: int = MOMENT_BOOTSTRAP_REPLICATES,
    level: float = INTERVAL_LEVEL,
    real_labels: np.ndarray | None = None,
    fake_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """FID, KID, precision, recall, density, coverage and Vendi of `fake` against `real` (feature rows).

    Keys: METRIC_KEYS, N_REAL, N_FAKE, INTERVALS ({metric: [low, high]} at `level`, KID_STD excepted), WARNINGS
    (list of sentences), the settings used, and FID_PER_CLASS ({label: FID}) when both label arrays are given.
    """
    real, fake = checked_features(real, "real features"), checked_features(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise InvalidInput(f"real and generated features differ in width: {real.shape[1]} and {fake.shape[1]}")
    if not 0 < level < 1:
        raise InvalidInput(f"the interval level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    real_moments, fake_moments = feature_moments(real), feature_moments(fake)
    kid = kernel_inception_distance(real, fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    balls = ball_memberships(real, fake, k)
    result: dict[str, Any] = {
        FID: frechet_distance(real_moments, fake_moments),
        KID_MEAN: kid.mean,
        KID_STD: kid.std,
        PRECISION: balls.precision,
        RECALL: balls.recall,
        DENSITY: balls.density,
        COVERAGE: balls.coverage,
        VENDI: vendi_score(fake),
        N_REAL: len(real),
        N_FAKE: len(fake),
        "k": k,
        "kid_subsets": kid_subsets,
        "kid_subset_size": kid_subset_size,
        "bootstrap": {"replicates": bootstrap, "moment_replicates": moment_bootstrap, "level": level, "seed": seed},
    }
    resampled = {
        PRECISION: _resampled_means(balls.fake_in_real, bootstrap, rng),
        DENSITY: _resampled_means(balls.fake_ball_counts / k, bootstrap, rng),
        RECALL: _resampled_means(balls.real_in_fake, bootstrap, rng),
        COVERAGE: _resampled_means(balls.real_covered, bootstrap, rng),
        KID_MEAN: _resampled_means(kid.subset_values, bootstrap, rng),
    }
    intervals = {key: _percentile_interval(values, level) for key, values in resampled.items()}
    for key, values in _reweighted_replicates(real, fake, moment_bootstrap, rng).items():
        intervals[key] = _standard_error_interval(result[key], values, level)
    result[INTERVALS] = intervals
    result[WARNINGS] = _count_warnings(len(real), len(fake))
    if real_labels is not None and fake_labels is not None:
        result[FID_PER_CLASS] = {str(c): v for c, v in per_class_fid(real, real_labels, fake, fake_labels).items()}
    return result


def _resampled_means(terms: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `replicates` resamples (with replacement, same size) of the per-row terms."""
    values = np.asarray(terms, dtype=np.float64)
    return np.array([values[rng.integers(0, len(values), len(values))].mean() for _ in range(replicates)])


def _percentile_interval(values: np.ndarray, level: float) -> list[float] | None:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles of the replicates (None without replicates)."""
    if len(values) == 0:
        return None
    return [float(v) for v in np.quantile(values, ((1 - level) / 2, (1 + level) / 2))]


def _standard_error_interval(estimate: float, values: np.ndarray, level: float) -> list[float] | None:
    """estimate -/+ z * (standard deviation of the replicates) (None with fewer than 2 replicates)."""
    if len(values) < 2:
        return None
    half_width = NormalDist().inv_cdf((1 + level) / 2) * float(np.std(values, ddof=1))
    return [estimate - half_width, estimate + half_width]


def _reweighted_replicates(
    real: np.ndarray, fake: np.ndarray, replicates: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """FID and Vendi of `replicates` bootstrap resamples, as multinomial row weights (no copies of the rows)."""
    fids, vendis = np.empty(replicates), np.empty(replicates)
    for i in range(replicates):
        w_real = rng.multinomial(len(real), np.full(len(real), 1 / len(real))).astype(np.float64)
        w_fake = rng.multinomial(len(fake), np.full(len(fake), 1 / len(fake))).astype(np.float64)
        fids[i] = frechet_distance(feature_moments(real, w_real), feature_moments(fake, w_fake))
        vendis[i] = vendi_score(fake, w_fake)
    return {FID: fids, VENDI: vendis}


def _count_warnings(n_real: int, n_fake: int) -> list[str]:
    if n_real == n_fake == FID_QUOTED_COUNT:
        return []
    return [
        f"FID depends on the sample sizes and is usually quoted for {FID_QUOTED_COUNT:,} generated against "
        f"{FID_QUOTED_COUNT:,} real images; this one used {n_fake:,} generated and {n_real:,} real, so compare it "
        f"only with FIDs computed at the same sizes"
    ]
