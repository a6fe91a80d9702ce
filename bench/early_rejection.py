"""Monte-Carlo check of the early-rejection rules (issues 3 and 18).

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

from diffaudit.metrics.early_rejection import RULES, BoundRule, SequentialRule, SpendingRule, make_rule

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


def stopping_samples(paths: np.ndarray, rule: object) -> tuple[np.ndarray, np.ndarray]:
    """Whether the rule rejects each run, and the samples drawn when it stops (N_PLANNED if never rejected)."""
    if isinstance(rule, SequentialRule):  # the looks of "sequential" and "spending"
        looks = np.array([look["samples"] for look in rule.schedule])
        hit = paths[:, looks - 1] <= np.array([look["threshold"] for look in rule.schedule])
    else:
        assert isinstance(rule, BoundRule)
        looks = np.arange(1, paths.shape[1] + 1)
        hit = N_PLANNED - (looks - paths) <= rule.k_min
    rejected = np.asarray(hit.any(1))
    return rejected, np.where(rejected, looks[hit.argmax(1)], N_PLANNED)


def replay(draws: np.ndarray, name: str, batch: int = 97) -> tuple[bool, int]:
    """Run one simulated generation through a rule object, batch by batch."""
    rule = make_rule(name, N_TRAIN, N_PLANNED, TARGET, ALPHA_E)
    decision = None
    for start in range(0, draws.size, batch):
        decision = rule.update(draws[start : start + batch])
        if decision.reject:
            break
    assert decision is not None
    return decision.reject, decision.samples_drawn if decision.reject else N_PLANNED


def cell(rejected: np.ndarray, samples: np.ndarray) -> str:
    p = rejected.mean()
    se = np.sqrt(p * (1 - p) / rejected.size)
    return f"{p:.3f} ± {se:.3f} | {int(np.median(samples)):,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    names = list(RULES)
    rules = {name: RULES[name](N_TRAIN, N_PLANNED, TARGET, ALPHA_E) for name in names}
    looks = {name: len(rule.schedule) for name, rule in rules.items() if isinstance(rule, SequentialRule)}
    bound = rules[BoundRule.name]
    assert isinstance(bound, BoundRule)
    spending = rules[SpendingRule.name]
    assert isinstance(spending, SpendingRule)
    print(f"k_min = {bound.k_min}; looks = {looks}; runs per row = {args.runs}")
    bound_at_target = spending.schedule[-1]["false_rejection"]
    print(f"spending: exact bound on its false-rejection rate at s_d (recursion + union bound) {bound_at_target:.4f}\n")
    header = " | ".join(f"{name}: rejection rate | {name}: median samples" for name in names)
    print(f"| K | meets target | {header} |")
    print("|---|---|" + "---|---|" * len(names))
    began = time.perf_counter()
    for n_images in ROWS:
        outcome: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in names}
        for start in range(0, args.runs, CHUNK):
            paths, draws = distinct_paths(rng, n_images, min(CHUNK, args.runs - start), N_PLANNED)
            for name, rule in rules.items():
                rejected, at = stopping_samples(paths, rule)
                outcome[name].append((rejected, at))
                if start == 0:  # the rule objects must agree with the vectorised simulation
                    for run in range(3):
                        assert replay(draws[run], name) == (bool(rejected[run]), int(at[run]))
        cells = [cell(*(np.concatenate(v) for v in zip(*outcome[name], strict=True))) for name in names]
        meets = "yes (false rejections)" if n_images >= TARGET * N_TRAIN else "no (true rejections)"
        print(f"| {n_images:,} | {meets} | {' | '.join(cells)} |")
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
