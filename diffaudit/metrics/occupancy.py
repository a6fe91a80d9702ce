"""The classical occupancy distribution behind IRS, in log space.

If a model can produce s distinct training images and n samples are drawn uniformly among them, the number K of
distinct images seen follows P(K = k | n, s) = S2(n, k) s! / ((s - k)! s^n), S2 the Stirling numbers of the second
kind (Dombrowski et al., "Image Generation Diversity Issues and How to Tame Them", Eqs. 6-8).

Three methods, chosen by size (`method="auto"`):
- "exact": log S2(n, .) by the recurrence S2(n, k) = k S2(n-1, k) + S2(n-1, k-1) in log space, O(n^2), n <= 1000.
- "asymptotic": Temme's uniform approximation of S2 (N. M. Temme, "Asymptotic estimates of Stirling numbers",
  Stud. Appl. Math. 89 (1993) 233-243), relative error about 0.06 / n, normalised over a window of k around the
  mean (+-40 sd + 50); used for n > 1000 while the window fits. Tail probabilities beyond the window sum the
  TAIL_TERMS terms next to k, which hold all but a negligible part since the pmf is log-concave.
- "normal": a discretised normal law with the exact mean and variance of K; used only when the window would exceed
  `MAX_WINDOW` values of k (standard deviations above 25,000, i.e. n of order 10^9 and more).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

EXACT_MAX_N = 1000
MAX_WINDOW = 2_000_000
WINDOW_SDS = 40.0
WINDOW_PAD = 50
TAIL_TERMS = 1000

METHODS = ("exact", "asymptotic", "normal")


def occupancy_mean(n: int, s: int) -> float:
    """E[K] = s (1 - (1 - 1/s)^n), exactly."""
    if s == 1:  # one image: every sample retrieves it (and log1p(-1) is undefined)
        return 1.0 if n >= 1 else 0.0
    return -s * math.expm1(n * math.log1p(-1.0 / s))


def occupancy_variance(n: int, s: int) -> float:
    """Var[K] = s(s-1)(1-2/s)^n + s(1-1/s)^n - s^2 (1-1/s)^{2n}, exactly (rearranged to avoid cancellation)."""
    if s == 1:
        return 0.0
    a = n * math.log1p(-1.0 / s)  # log (1-1/s)^n
    b = n * math.log1p(-2.0 / s) if s > 2 else -math.inf  # log (1-2/s)^n
    # s^2 [(1-2/s)^n - (1-1/s)^{2n}] + s [(1-1/s)^n - (1-2/s)^n], each bracket via expm1 of a log difference.
    first = s * s * math.exp(2 * a) * math.expm1(b - 2 * a) if b > -math.inf else -s * s * math.exp(2 * a)
    second = s * math.exp(a) * -math.expm1(b - a) if b > -math.inf else s * math.exp(a)
    return max(first + second, 0.0)


@lru_cache(maxsize=64)
def _exact_log_stirling2_row(n: int) -> np.ndarray:
    """log S2(n, k) for k = 0..n by the triangular recurrence, in log space."""
    row = np.array([0.0])  # S2(0, 0) = 1
    for i in range(1, n + 1):
        previous = np.append(row, -np.inf)
        shifted = np.concatenate(([-np.inf], row))
        ks = np.arange(i + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            row = np.logaddexp(np.log(ks) + previous, shifted)
    row.setflags(write=False)
    return row


def log_stirling2_exact(n: int, ks: np.ndarray) -> np.ndarray:
    """log S2(n, k) from the exact recurrence (-inf where S2 = 0)."""
    row = _exact_log_stirling2_row(n)
    ks = np.asarray(ks, dtype=np.int64)
    out = np.full(ks.shape, -np.inf)
    inside = (ks >= 0) & (ks <= n)
    out[inside] = row[ks[inside]]
    return out


def _saddle_point(v: np.ndarray) -> np.ndarray:
    """x0 > 0 with x0 / (1 - exp(-x0)) = v (v > 1): Newton from x = v, monotone for this convex equation."""
    x = v.copy()
    for _ in range(200):
        h = x + v * np.expm1(-x)
        dh = 1.0 - v * np.exp(-x)
        step = h / dh
        x = x - step
        if np.all(np.abs(step) <= 1e-15 * x):
            break
    return x


def log_stirling2_temme(n: int, ks: np.ndarray) -> np.ndarray:
    """log S2(n, k) by Temme's uniform approximation (Temme 1993, as written in Wikipedia's Stirling-numbers page).

    S2(n, k) ~ sqrt((n-k) / (n (1-G))) ((n-k)/e)^{n-k} C(n, k) / (G^k (v-G)^{n-k}), v = n/k, G = -W0(-v e^{-v}).
    With x0 = v - G the saddle point (x0 / (1 - e^-x0) = v), log G = log v - x0 and 1 - G = x0 - (v - 1), which
    avoids W0 near its branch point and the cancellation in v - x0 for large v.
    """
    ks = np.asarray(ks, dtype=np.int64)
    out = np.full(ks.shape, -np.inf)
    out[(ks == n) | ((ks == 1) & (n >= 1))] = 0.0
    inner = (ks > 1) & (ks < n)
    if not np.any(inner):
        return out
    k = ks[inner].astype(np.float64)
    m = n - k
    v = n / k
    x0 = _saddle_point(v)
    log_binomial = gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(m + 1.0)
    out[inner] = (
        0.5 * np.log(m)
        - 0.5 * np.log(n * (x0 - (v - 1.0)))
        - k * (np.log(v) - x0)
        - m * np.log(x0)
        + m * (np.log(m) - 1.0)
        + log_binomial
    )
    return out


def _log_falling_factorial_over_power(n: int, s: int, ks: np.ndarray) -> np.ndarray:
    """log( s! / ((s-k)! s^n) ), the s-dependent part of the occupancy probability."""
    k = ks.astype(np.float64)
    return gammaln(s + 1.0) - gammaln(s - k + 1.0) - n * math.log(s)


def _main_window(n: int, s: int) -> tuple[int, int]:
    """Range of k holding all but a negligible mass: mean +- 40 sd + 50, within the support 1..min(n, s)."""
    mean = occupancy_mean(n, s)
    sd = math.sqrt(occupancy_variance(n, s))
    return max(1, math.floor(mean - WINDOW_SDS * sd) - WINDOW_PAD), min(
        n, s, math.ceil(mean + WINDOW_SDS * sd) + WINDOW_PAD
    )


def choose_method(n: int, s: int) -> str:
    """Exact for small n, Temme's approximation while its window is affordable, the normal law beyond."""
    if n <= EXACT_MAX_N:
        return "exact"
    lo, hi = _main_window(n, s)
    return "asymptotic" if hi - lo + 1 <= MAX_WINDOW else "normal"


def _resolved(n: int, s: int, method: str) -> str:
    if n < 1 or s < 1:
        raise ValueError(f"need n >= 1 and s >= 1, got n={n}, s={s}")
    if method == "auto":
        return choose_method(n, s)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS} or 'auto'")
    return method


def _unnormalised_log_pmf(n: int, s: int, ks: np.ndarray, method: str) -> np.ndarray:
    if method == "normal":  # N(mean, var) mass on [k - 1/2, k + 1/2]
        mean, sd = occupancy_mean(n, s), max(math.sqrt(occupancy_variance(n, s)), 1e-12)
        upper, lower = norm.logcdf((ks + 0.5 - mean) / sd), norm.logcdf((ks - 0.5 - mean) / sd)
        with np.errstate(divide="ignore"):
            return upper + np.log(-np.expm1(lower - upper))
    log_stirling2 = log_stirling2_exact if method == "exact" else log_stirling2_temme
    return log_stirling2(n, ks) + _log_falling_factorial_over_power(n, s, ks)


@lru_cache(maxsize=1024)
def _log_normaliser(n: int, s: int, method: str) -> float:
    """log of the total mass of the approximate pmf over the main window (0 for the exact pmf)."""
    if method == "exact":
        return 0.0
    lo, hi = _main_window(n, s)
    return float(logsumexp(_unnormalised_log_pmf(n, s, np.arange(lo, hi + 1), method)))


def occupancy_log_pmf_range(n: int, s: int, lo: int, hi: int, method: str = "auto") -> np.ndarray:
    """log P(K = k | n, s) for k = lo..hi (-inf outside the support 1..min(n, s))."""
    method = _resolved(n, s, method)
    ks = np.arange(lo, hi + 1)
    out = np.full(ks.shape, -np.inf)
    inside = (ks >= 1) & (ks <= min(n, s))
    out[inside] = _unnormalised_log_pmf(n, s, ks[inside], method) - _log_normaliser(n, s, method)
    return out


def occupancy_log_pmf_window(n: int, s: int, method: str = "auto") -> tuple[int, np.ndarray]:
    """(lo, log P(K = k | n, s) for k = lo..hi) over a window holding all the mass (the whole support if exact)."""
    method = _resolved(n, s, method)
    lo, hi = (1, min(n, s)) if method == "exact" else _main_window(n, s)
    return lo, occupancy_log_pmf_range(n, s, lo, hi, method)


def occupancy_log_pmf(k: int, n: int, s: int, method: str = "auto") -> float:
    """log P(K = k | n, s); -inf outside the support."""
    return float(occupancy_log_pmf_range(n, s, k, k, method)[0])


def occupancy_log_cdf(k: int, n: int, s: int, method: str = "auto") -> float:
    """log P(K <= k | n, s): summed over the window and TAIL_TERMS terms below k (the pmf is log-concave)."""
    lo, hi = _main_window(n, s)
    if k >= min(n, s):
        return 0.0
    if k > hi:
        return math.log1p(-math.exp(occupancy_log_sf(k + 1, n, s, method)))
    return min(0.0, float(logsumexp(occupancy_log_pmf_range(n, s, max(1, min(lo, k - TAIL_TERMS)), k, method))))


def occupancy_log_sf(k: int, n: int, s: int, method: str = "auto") -> float:
    """log P(K >= k | n, s), computed like occupancy_log_cdf from the other side."""
    lo, hi = _main_window(n, s)
    if k <= 1:
        return 0.0
    if k < lo:
        return math.log1p(-math.exp(occupancy_log_cdf(k - 1, n, s, method)))
    return min(0.0, float(logsumexp(occupancy_log_pmf_range(n, s, k, min(n, s, max(hi, k + TAIL_TERMS)), method))))


def occupancy_cdf(k: int, n: int, s: int, method: str = "auto") -> float:
    """P(K <= k | n, s)."""
    return math.exp(occupancy_log_cdf(k, n, s, method))


def occupancy_sf(k: int, n: int, s: int, method: str = "auto") -> float:
    """P(K >= k | n, s)."""
    return math.exp(occupancy_log_sf(k, n, s, method))


@lru_cache(maxsize=4096)
def lower_critical_value(n: int, s: int, alpha: float, method: str = "auto") -> int:
    """The largest k with P(K <= k | n, s) < alpha (0 when there is none): K <= it rejects s at level alpha."""
    lo, log_pmf = occupancy_log_pmf_window(n, s, method)
    below = np.flatnonzero(np.logaddexp.accumulate(log_pmf) < math.log(alpha))
    return int(lo + below[-1]) if below.size else lo - 1


@lru_cache(maxsize=4096)
def upper_critical_value(n: int, s: int, alpha: float, method: str = "auto") -> int:
    """The smallest k with P(K >= k | n, s) < alpha (min(n, s) + 1 when there is none)."""
    lo, log_pmf = occupancy_log_pmf_window(n, s, method)
    log_sf = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    below = np.flatnonzero(log_sf < math.log(alpha))
    return int(lo + below[0]) if below.size else lo + len(log_pmf)
