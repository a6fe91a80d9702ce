"""Time of one A/B comparison (POST /v1/comparisons) at 50,000 samples, and the paired interval's width against
an unpaired one's (the ratio pairing buys).

Two jobs of 50,000 samples and 50,000 training images: IRS from nearest-neighbour identities, a copy flag, a
nearest-neighbour distance, a DS flag per sample, and volume growth of 10,000 training images; the candidate
shares most of the baseline's per-sample variation (as two checkpoints sampled from the same seeds do). Prints
the seconds of diffaudit.comparison's statistics at the default replicates, and for the distances the width of
the paired interval over the width an unpaired bootstrap gives (two independent resamples).

Usage: .venv/bin/python bench/comparison.py [--n 50000] [--replicates 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffaudit.metrics.comparison import DEFAULT_REPLICATES, mean_at, paired_bootstrap, paired_irs


def unpaired_width(baseline: np.ndarray, candidate: np.ndarray, replicates: int, rng: np.random.Generator) -> float:
    """Width of the 95% percentile interval of mean(candidate) - mean(baseline), resampling each side alone."""
    n = baseline.size
    differences = [
        candidate[rng.integers(0, n, n)].mean() - baseline[rng.integers(0, n, n)].mean() for _ in range(replicates)
    ]
    low, high = np.quantile(differences, [0.025, 0.975])
    return float(high - low)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES)
    args = parser.parse_args()
    n, replicates = args.n, args.replicates
    rng = np.random.default_rng(0)
    nearest = rng.integers(0, n, n)
    collapsed = np.where(rng.random(n) < 0.9, nearest, rng.integers(0, n // 10, n))
    distance = rng.gamma(4.0, size=n)
    candidate_distance = distance * 0.99 + rng.normal(0, 0.05, n)
    copies = rng.random(n) < 0.01
    ds = rng.random(n) < 0.2
    growth = rng.normal(size=n // 5)
    started = time.perf_counter()
    irs = paired_irs(nearest, collapsed, n, replicates=replicates)
    print(
        f"irs_inf: {irs.verdict}, difference {irs.difference:.4g} {irs.interval}, {time.perf_counter() - started:.1f} s"
    )
    pairs = {
        "copy_rate": (copies, copies | (rng.random(n) < 0.005), mean_at, False),
        "nn_distance": (distance, candidate_distance, mean_at, True),
        "ds_rate": (ds, ds & (rng.random(n) < 0.95), mean_at, True),
        "volume_growth_mean": (growth, growth + rng.normal(0, 0.1, growth.size), mean_at, False),
    }
    for name, (baseline, candidate, statistic, higher) in pairs.items():
        metric_started = time.perf_counter()
        found = paired_bootstrap(
            name, baseline, candidate, higher_is_better=higher, statistic=statistic, replicates=replicates
        )
        print(
            f"{name}: {found.verdict}, difference {found.difference:.4g} {found.interval}, "
            f"{time.perf_counter() - metric_started:.1f} s"
        )
    print(f"all five metrics, {n} samples, {replicates} replicates: {time.perf_counter() - started:.1f} s")
    paired = paired_bootstrap("nn_distance", distance, candidate_distance, higher_is_better=True, replicates=replicates)
    ratio = (paired.interval[1] - paired.interval[0]) / unpaired_width(distance, candidate_distance, replicates, rng)
    print(f"nn_distance interval width, paired / unpaired: {ratio:.3f}")


if __name__ == "__main__":
    main()
