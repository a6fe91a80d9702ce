"""Image Retrieval Score (IRS): N_learned, IRS_alpha, IRS_inf with bounds, the adjusted score, k_min, per class.

Paper: Dombrowski et al., "Image Generation Diversity Issues and How to Tame Them", its supplementary material
and the main paper's Eqs. 1-8. Occupancy probabilities come from diffaudit.metrics.occupancy.

Reading of Eq. 9 used throughout: k_min is the largest k with P(K <= k | N_sample, s_d) < alpha_e, s_d =
ceil(IRS_d * N_train) (the smallest whole number of images meeting the target), and a checkpoint is rejected when
N_learned <= k_min: an exact one-sided test at level alpha_e. This reproduces Sec. 7's examples (N_train = 39 rejects
10 distinct images after 15 samples; N_train = 32 accepts 10..14) and Sec. 11's k_min = 48,744. Sec. 11's prose
("reject if N_learned < 48744") is one image more lenient than the test; every rejection it states is also ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from diffaudit.metrics.occupancy import (
    lower_critical_value,
    occupancy_log_cdf,
    occupancy_log_sf,
    occupancy_mean,
    upper_critical_value,
)
from diffaudit.retrieval.knn import nearest_neighbours

SCHEDULE_RATIO = 2**0.25
FINAL_LOOK_SHARE = 0.5


def n_learned(nn_indices: np.ndarray) -> int:
    """Number of distinct training images that are the nearest neighbour of at least one generated sample."""
    return int(np.unique(np.asarray(nn_indices)).size)


def irs_alpha(n_learned: int, n_train: int) -> float:
    """IRS_alpha = N_learned / N_train (supplement Eq. 13), alpha = N_sample / N_train."""
    return n_learned / n_train


def ideal_irs(alpha: float) -> float:
    """IRS of an ideal model in the large-N_train limit: 1 - exp(-alpha) (supplement Eq. 15, Tables 4-5)."""
    return -math.expm1(-alpha)


def expected_ideal_irs(n_sample: int, n_train: int) -> float:
    """Exact finite-N expectation for an ideal model: 1 - (1 - 1/N_train)^N_sample (supplement Eq. 14, K = N_train)."""
    return occupancy_mean(n_sample, n_train) / n_train


def target_distinct(n_train: int, target: float) -> int:
    """s_d = ceil(IRS_d * N_train): the fewest distinct images a model meeting the target IRS_d can produce."""
    return max(1, math.ceil(target * n_train - 1e-9))


def k_min(n_train: int, n_sample: int, target: float, alpha_e: float = 0.05) -> int:
    """Eq. 9: the largest k with P(K <= k | N_sample, IRS_d * N_train) < alpha_e; reject when N_learned <= k_min."""
    return lower_critical_value(n_sample, target_distinct(n_train, target), alpha_e)


def accepted_range(n_sample: int, s: int, alpha_e: float = 0.05) -> tuple[int, int]:
    """Distinct counts not rejected by either one-sided test at alpha_e for s images (Sec. 7, Fig. 9)."""
    return lower_critical_value(n_sample, s, alpha_e) + 1, upper_critical_value(n_sample, s, alpha_e) - 1


def log_likelihood_distinct(k: int, n: int, s: int) -> float:
    """log P(k | n, s) up to the s-free term log S2(n, k): log s! - log (s-k)! - n log s."""
    return math.lgamma(s + 1) - math.lgamma(s - k + 1) - n * math.log(s)


def _likelihood_rises(k: int, n: int, s: int) -> bool:
    """P(k | n, s + 1) > P(k | n, s), i.e. log((s+1)/(s+1-k)) > n log(1 + 1/s)."""
    return -math.log1p(-k / (s + 1)) > n * math.log1p(1 / s)


def _last_true(predicate: Callable[[int], bool], lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with predicate(x), for a predicate true up to some point then false (lo-1 if none)."""
    if not predicate(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if predicate(mid) else (lo, mid - 1)
    return lo


def mle_distinct(k: int, n: int, n_train: int) -> int:
    """IRS_inf's s: the integer s in [k, N_train] maximising P(k | n, s) (the likelihood is unimodal in s)."""
    _check_observation(k, n, n_train)
    return _last_true(lambda s: s == k or _likelihood_rises(k, n, s - 1), k, n_train)


def upper_bound_distinct(k: int, n: int, n_train: int, alpha_e: float = 0.05) -> int:
    """The largest s in [k, N_train] with P_s(K <= k) >= alpha_e (P_s(K <= k) falls as s grows)."""
    _check_observation(k, n, n_train)
    return _last_true(lambda s: occupancy_log_cdf(k, n, s) >= math.log(alpha_e), k, n_train)


def lower_bound_distinct(k: int, n: int, n_train: int, alpha_e: float = 0.05) -> int:
    """The smallest s in [k, N_train] with P_s(K >= k) >= alpha_e (N_train when none; P_s(K >= k) rises with s)."""
    _check_observation(k, n, n_train)
    return _last_true(lambda s: occupancy_log_sf(k, n, s) < math.log(alpha_e), k, n_train) + 1


def _check_observation(k: int, n: int, n_train: int) -> None:
    if not (n >= 1 and 1 <= k <= min(n, n_train)):
        raise ValueError(f"need 1 <= k <= min(n, N_train), got k={k}, n={n}, N_train={n_train}")


def irs_inf(k: int, n: int, n_train: int, alpha_e: float = 0.05) -> dict[str, Any]:
    """IRS_inf = s_hat / N_train with its bounds at alpha_e, from k distinct nearest neighbours of n queries."""
    s_hat = mle_distinct(k, n, n_train)
    s_lower = min(lower_bound_distinct(k, n, n_train, alpha_e), n_train)
    s_upper = upper_bound_distinct(k, n, n_train, alpha_e)
    return {
        "n_learned": k,
        "n_queries": n,
        "s_hat": s_hat,
        "s_lower": s_lower,
        "s_upper": s_upper,
        "irs_inf": s_hat / n_train,
        "irs_inf_lower": s_lower / n_train,
        "irs_inf_upper": s_upper / n_train,
    }


def irs_adjusted(s_hat_synthetic: int, s_hat_real: int) -> float:
    """IRS_inf,a: the synthetic estimate over the held-out real estimate for the same number of queries."""
    return s_hat_synthetic / s_hat_real


def sequential_schedule(n_train: int, n_sample: int, target: float, alpha_e: float = 0.05) -> list[dict[str, Any]]:
    """Looks of the sequential early-rejection test and the threshold and level of each.

    Looks at n_j = ceil(n_first * 2^(j/4)), n_first = ceil(sqrt(s_d)) (duplicates only start to carry evidence
    around sqrt(s_d) samples), ending at N_sample. Level: half of alpha_e at the final look (so a run to the end is
    tested almost as strictly as the single Eq. 9 test), the other half split equally among the earlier looks
    (weighted Bonferroni: the false-rejection rate is at most the sum, alpha_e, for every s >= s_d, since K is
    stochastically increasing in s). Each look rejects when the distinct count K_{n_j} <= threshold_j, the largest k
    with P(K_{n_j} <= k | n_j, s_d) < alpha_j.
    """
    s_d = target_distinct(n_train, target)
    looks = _look_sizes(math.ceil(math.sqrt(s_d)), n_sample)
    if len(looks) == 1:  # too few samples for an earlier look: one test at the end, at the full level
        alphas = [alpha_e]
    else:
        alphas = [alpha_e * (1 - FINAL_LOOK_SHARE) / (len(looks) - 1)] * (len(looks) - 1) + [alpha_e * FINAL_LOOK_SHARE]
    return [
        {"samples": n, "alpha": a, "threshold": lower_critical_value(n, s_d, a)}
        for n, a in zip(looks, alphas, strict=True)
    ]


def _look_sizes(n_first: int, n_sample: int) -> list[int]:
    looks: list[int] = []
    n = float(max(2, n_first))
    while math.ceil(n) < n_sample:
        looks.append(math.ceil(n))
        n *= SCHEDULE_RATIO
    return [*looks, n_sample]


def irs_threshold_report(n_train: int, n_sample: int, target: float, alpha_e: float = 0.05) -> dict[str, Any]:
    """k_min (Eq. 9), the accepted range for a model at the target, and the sequential rule's schedule."""
    s_d = target_distinct(n_train, target)
    kmin = k_min(n_train, n_sample, target, alpha_e)
    return {
        "n_train": n_train,
        "n_sample": n_sample,
        "target": target,
        "alpha_e": alpha_e,
        "target_distinct": s_d,
        "k_min": kmin,
        "reject_if_n_learned_at_most": kmin,
        "max_duplicates_before_rejection": n_sample - kmin - 1,
        "accepted_range": list(accepted_range(n_sample, s_d, alpha_e)),
        "expected_n_learned_at_target": occupancy_mean(n_sample, s_d),
        "sequential_schedule": sequential_schedule(n_train, n_sample, target, alpha_e),
    }


def irs_summary(nn_indices: np.ndarray, n_train: int, alpha_e: float = 0.05) -> dict[str, Any]:
    """N_learned, IRS_alpha, the ideal values and IRS_inf with bounds for one set of nearest-neighbour indices."""
    n = int(np.asarray(nn_indices).size)
    k = n_learned(nn_indices)
    alpha = n / n_train
    return {
        "n_train": n_train,
        "n_sample": n,
        "alpha": alpha,
        "n_learned": k,
        "irs_alpha": irs_alpha(k, n_train),
        "ideal_irs_alpha": ideal_irs(alpha),
        "expected_ideal_irs_alpha": expected_ideal_irs(n, n_train),
        **irs_inf(k, n, n_train, alpha_e),
    }


def irs_per_class(
    train: np.ndarray,
    gen: np.ndarray,
    train_labels: np.ndarray,
    gen_labels: np.ndarray,
    metric: str = "euclidean",
    alpha_e: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Intra-class IRS: each class's generated samples retrieved among that class's training images only."""
    train_labels, gen_labels = np.asarray(train_labels), np.asarray(gen_labels)
    out: dict[str, dict[str, Any]] = {}
    for label in np.unique(train_labels):
        in_train, in_gen = train_labels == label, gen_labels == label
        if not in_gen.any():
            continue
        nn = nearest_neighbours(gen[in_gen], train[in_train], 1, metric).indices[:, 0]
        out[str(label.item())] = irs_summary(nn, int(in_train.sum()), alpha_e)
    return out


def irs_report(
    train: np.ndarray,
    gen: np.ndarray,
    test: np.ndarray | None = None,
    metric: str = "euclidean",
    alpha_e: float = 0.05,
    train_labels: np.ndarray | None = None,
    gen_labels: np.ndarray | None = None,
    gen_nn: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every IRS quantity from features: synthetic (and held-out real) retrieval in the training features.

    The adjusted score uses the first m = min(N_gen, N_test) queries of each set, so both estimates see the same
    number of queries. `gen_nn`: the generated samples' nearest training indices when already retrieved.
    """
    n_train = len(train)
    if gen_nn is None:
        gen_nn = nearest_neighbours(gen, train, 1, metric).indices[:, 0]
    report: dict[str, Any] = {"metric": metric, "alpha_e": alpha_e, "synthetic": irs_summary(gen_nn, n_train, alpha_e)}
    if test is not None:
        m = min(len(gen), len(test))
        test_nn = nearest_neighbours(test[:m], train, 1, metric).indices[:, 0]
        real = irs_summary(test_nn, n_train, alpha_e)
        synthetic_m = report["synthetic"] if m == len(gen) else irs_summary(gen_nn[:m], n_train, alpha_e)
        report["real"] = real
        report["adjusted"] = {
            "n_queries": m,
            "irs_inf_a": irs_adjusted(synthetic_m["s_hat"], real["s_hat"]),
        }
    if train_labels is not None and gen_labels is not None:
        report["per_class"] = irs_per_class(train, gen, train_labels, gen_labels, metric, alpha_e)
    return report
