"""Monte-Carlo check of the early-rejection rules (issue 3).

Generation is modelled as uniform draws among K training images. N_train = 50,000, IRS_d = 0.8 (s_d = 40,000),
alpha_e = 0.05, 50,000 planned samples; K = 50,000 and 40,000 meet the target (rejections are false), K = 25,000
and 12,500 do not. Per rule: rejection rate with its Monte-Carlo standard error and the median number of samples
drawn per run (a run that is never rejected draws all 50,000). The simulation is vectorised over runs and uses the
rules' own thresholds; a few runs per row are replayed through the rule objects, batch by batch, as a check.

Usage: .venv/bin/python bench/early_rejection.py [--runs 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffaudit.metrics.early_rejection import BoundRule, SequentialRule

N_TRAIN, TARGET, ALPHA_E, N_PLANNED = 50_000, 0.8, 0.05, 50_000
ROWS = (50_000, 40_000, 25_000, 12_500)
CHUNK = 50


def distinct_paths(rng: np.random.Generator, n_images: int, runs: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(runs, n) distinct counts after each draw for draws uniform among n_images, and the draws."""
    draws = rng.integers(0, n_images, size=(runs, n), dtype=np.int64)
    keys = (draws + np.arange(runs)[:, None] * n_images).ravel()
    is_new = np.zeros(keys.size, dtype=bool)
    is_new[np.unique(keys, return_index=True)[1]] = True
    return np.cumsum(is_new.reshape(runs, n), axis=1, dtype=np.int32), draws


def stopping_samples(paths: np.ndarray, bound: BoundRule, sequential: SequentialRule) -> list[np.ndarray]:
    """Samples drawn when each rule rejects each run (N_PLANNED and not rejected otherwise)."""
    drawn = np.arange(1, paths.shape[1] + 1)
    bound_hit = N_PLANNED - (drawn - paths) <= bound.k_min
    looks = np.array([look["samples"] for look in sequential.schedule])
    thresholds = np.array([look["threshold"] for look in sequential.schedule])
    seq_hit = paths[:, looks - 1] <= thresholds
    bound_at = np.where(bound_hit.any(1), drawn[bound_hit.argmax(1)], N_PLANNED)
    seq_at = np.where(seq_hit.any(1), looks[seq_hit.argmax(1)], N_PLANNED)
    return [bound_hit.any(1), bound_at, seq_hit.any(1), seq_at]


def replay(draws: np.ndarray, rule_class: type, batch: int = 97) -> tuple[bool, int]:
    """Run one simulated generation through a rule object, batch by batch."""
    rule = rule_class(N_TRAIN, N_PLANNED, TARGET, ALPHA_E)
    decision = None
    for start in range(0, draws.size, batch):
        decision = rule.update(draws[start : start + batch])
        if decision.reject:
            break
    assert decision is not None
    return decision.reject, decision.samples_drawn if decision.reject else N_PLANNED


def cell(rejected: np.ndarray, samples: np.ndarray) -> tuple[str, str]:
    p = rejected.mean()
    se = np.sqrt(p * (1 - p) / rejected.size)
    return f"{p:.3f} ± {se:.3f}", f"{int(np.median(samples)):,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    bound = BoundRule(N_TRAIN, N_PLANNED, TARGET, ALPHA_E)
    sequential = SequentialRule(N_TRAIN, N_PLANNED, TARGET, ALPHA_E)
    print(f"k_min = {bound.k_min}; sequential looks = {len(sequential.schedule)}; runs per row = {args.runs}\n")
    print("| K | meets target | bound: rejection rate | bound: median samples | sequential: rejection rate |"
          " sequential: median samples |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    began = time.perf_counter()
    for n_images in ROWS:
        outcome: list[list[np.ndarray]] = [[], [], [], []]
        for start in range(0, args.runs, CHUNK):
            paths, draws = distinct_paths(rng, n_images, min(CHUNK, args.runs - start), N_PLANNED)
            results = stopping_samples(paths, bound, sequential)
            for store, values in zip(outcome, results, strict=True):
                store.append(values)
            if start == 0:  # the rule objects must agree with the vectorised simulation
                for run in range(3):
                    assert replay(draws[run], BoundRule) == (bool(results[0][run]), int(results[1][run]))
                    assert replay(draws[run], SequentialRule) == (bool(results[2][run]), int(results[3][run]))
        b_rej, b_at, s_rej, s_at = (np.concatenate(v) for v in outcome)
        meets = "yes (false rejections)" if n_images >= TARGET * N_TRAIN else "no (true rejections)"
        print(f"| {n_images:,} | {meets} | {' | '.join(cell(b_rej, b_at))} | {' | '.join(cell(s_rej, s_at))} |")
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
