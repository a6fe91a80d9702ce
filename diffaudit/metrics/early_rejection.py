"""Early rejection of low-diversity checkpoints while sampling (supplement Sec. 7, Eq. 9, Sec. 11).

Each batch of generated samples arrives as the nearest training index of each sample, in generation order. Three
rules, each a small object with `update(nn_indices) -> Decision`:

- BoundRule, "bound": the paper's deterministic bound. Duplicates never disappear, so after d duplicates the final
  N_learned is at most n_planned - d; reject once n_planned - d <= k_min (Eq. 9). Rejects exactly the runs the final
  test would reject, so it never raises the error rate, but late.
- SequentialRule, "sequential": a group-sequential test over the fixed looks of irs.sequential_schedule, each a
  one-sided occupancy test of the distinct count so far under s_d = ceil(IRS_d * N_train), levels summing to alpha_e
  (weighted Bonferroni), so the false-rejection rate stays <= alpha_e whenever the true s >= s_d.
- SpendingRule, "spending" (the default): the same kind of test with a look at every sample from n_0 = ceil(sqrt(s_d))
  to 5.5 n_0, where bad models are rejected, and one at the end. The early thresholds spend alpha_e * 0.96 * t^0.7
  (t = (n - n_0) / (4.5 n_0)) of false-rejection probability, computed exactly by the forward recursion of the distinct
  count under s_d with rejected paths removed (an alpha-spending design, Lan and DeMets 1983); the final look gets
  the rest of alpha_e (union bound). The false-rejection rate at s_d is therefore <= alpha_e, and below it for every
  s > s_d (K_n is stochastically increasing in s, path by path).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from diffaudit.metrics.irs import k_min, sequential_schedule, target_distinct
from diffaudit.metrics.occupancy import lower_critical_value, occupancy_cdf

SPENDING_LAST_LOOK = 5.5  # early looks at every sample from n_0 = ceil(sqrt(s_d)) to floor(5.5 n_0)
SPENDING_SHARE = 0.96  # of alpha_e spent by the early looks; the rest at the final look
SPENDING_POWER = 0.7  # spending function alpha_e * SPENDING_SHARE * t^SPENDING_POWER
NEGLIGIBLE = 1e-20  # probabilities the recursion drops; counted as rejections, so the bound stays valid


@dataclass(frozen=True)
class Decision:
    """The state of a rule after a batch; when reject is True, the evidence at the point of rejection.

    threshold: the distinct count at or below which the rule rejects (for "bound", applied to n_planned - duplicates).
    probability: under a model with s_d images, the chance of a count this low (the p-value compared with alpha);
    None before the first look.
    """

    rule: str
    reject: bool
    samples_drawn: int
    distinct: int
    duplicates: int
    threshold: int
    probability: float | None
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DistinctCounter:
    """Distinct nearest training indices seen so far in a stream of samples."""

    def __init__(self, n_train: int) -> None:
        self.seen = np.zeros(n_train, dtype=bool)
        self.samples = 0
        self.distinct = 0

    def distinct_after_each(self, nn_indices: np.ndarray) -> np.ndarray:
        """Distinct count after each sample of the batch (in order); advances the stream past the batch."""
        nn = np.asarray(nn_indices, dtype=np.int64).ravel()
        if nn.size and (nn.min() < 0 or nn.max() >= self.seen.size):
            raise ValueError(f"nearest-neighbour indices must lie in [0, {self.seen.size})")
        is_new = np.zeros(nn.size, dtype=bool)
        values, first = np.unique(nn, return_index=True)
        is_new[first] = ~self.seen[values]
        self.seen[values] = True
        counts = self.distinct + np.cumsum(is_new)
        self.samples += nn.size
        self.distinct = int(counts[-1]) if nn.size else self.distinct
        return counts


class _Rule:
    name = ""

    def __init__(self, n_train: int, n_planned: int, target: float, alpha_e: float = 0.05) -> None:
        self.n_train, self.n_planned, self.target, self.alpha_e = n_train, n_planned, target, alpha_e
        self.target_distinct = target_distinct(n_train, target)
        self.counter = _DistinctCounter(n_train)
        self.decision: Decision | None = None

    def update(self, nn_indices: np.ndarray) -> Decision:
        """Take the next batch's nearest training indices; once rejected, the rejection stays."""
        if self.decision is not None and self.decision.reject:
            return self.decision
        start = self.counter.samples
        if start + np.asarray(nn_indices).size > self.n_planned:
            raise ValueError(f"more samples than the {self.n_planned} planned")
        self.decision = self._decide(start, self.counter.distinct_after_each(nn_indices))
        return self.decision

    def _decide(self, start: int, distinct: np.ndarray) -> Decision:
        raise NotImplementedError


class BoundRule(_Rule):
    """Reject once n_planned - duplicates <= k_min: the final N_learned can no longer pass (Eq. 9, Sec. 11)."""

    name = "bound"

    def __init__(self, n_train: int, n_planned: int, target: float, alpha_e: float = 0.05) -> None:
        super().__init__(n_train, n_planned, target, alpha_e)
        self.k_min = k_min(n_train, n_planned, target, alpha_e)

    def _decide(self, start: int, distinct: np.ndarray) -> Decision:
        drawn = start + 1 + np.arange(distinct.size)
        over = np.flatnonzero(self.n_planned - (drawn - distinct) <= self.k_min)
        i = int(over[0]) if over.size else distinct.size - 1
        n, k = (int(drawn[i]), int(distinct[i])) if distinct.size else (start, self.counter.distinct)
        best_final = self.n_planned - (n - k)
        return Decision(
            rule=self.name,
            reject=bool(over.size),
            samples_drawn=n,
            distinct=k,
            duplicates=n - k,
            threshold=self.k_min,
            probability=occupancy_cdf(best_final, self.n_planned, self.target_distinct),
            alpha=self.alpha_e,
        )


class SequentialRule(_Rule):
    """Reject at the first look n_j with distinct count <= threshold_j (irs.sequential_schedule)."""

    name = "sequential"

    def __init__(self, n_train: int, n_planned: int, target: float, alpha_e: float = 0.05) -> None:
        super().__init__(n_train, n_planned, target, alpha_e)
        self.schedule = self.looks()
        self.next_look = 0
        self.last_tested: Decision | None = None

    def looks(self) -> list[dict[str, Any]]:
        """The looks in order: samples, alpha (threshold = largest k with P(K_n <= k | s_d) < alpha), threshold."""
        return sequential_schedule(self.n_train, self.n_planned, self.target, self.alpha_e)

    def _decide(self, start: int, distinct: np.ndarray) -> Decision:
        look, k = None, self.counter.distinct
        while self.next_look < len(self.schedule) and self.schedule[self.next_look]["samples"] <= self.counter.samples:
            look = self.schedule[self.next_look]
            k = int(distinct[look["samples"] - start - 1])
            self.next_look += 1
            if k <= look["threshold"]:
                return self._at_look(look, k, reject=True)
        if look is not None:
            self.last_tested = self._at_look(look, k, reject=False)
        n, k = self.counter.samples, self.counter.distinct
        upcoming = self.schedule[min(self.next_look, len(self.schedule) - 1)]
        return Decision(
            rule=self.name,
            reject=False,
            samples_drawn=n,
            distinct=k,
            duplicates=n - k,
            threshold=self.last_tested.threshold if self.last_tested else upcoming["threshold"],
            probability=self.last_tested.probability if self.last_tested else None,
            alpha=self.last_tested.alpha if self.last_tested else upcoming["alpha"],
        )

    def _at_look(self, look: dict[str, Any], k: int, reject: bool) -> Decision:
        n = look["samples"]
        return Decision(
            rule=self.name,
            reject=reject,
            samples_drawn=n,
            distinct=k,
            duplicates=n - k,
            threshold=look["threshold"],
            probability=occupancy_cdf(k, n, self.target_distinct),
            alpha=look["alpha"],
        )


class SpendingRule(SequentialRule):
    """Reject at the first look n_j with distinct count <= threshold_j (spending_schedule)."""

    name = "spending"

    def looks(self) -> list[dict[str, Any]]:
        return spending_schedule(self.n_train, self.n_planned, self.target, self.alpha_e)


def spending_schedule(n_train: int, n_sample: int, target: float, alpha_e: float = 0.05) -> list[dict[str, Any]]:
    """Looks of the spending rule: samples, alpha, threshold, and false_rejection, a bound on P(rejected by then | s_d).

    Early looks at n = n_0 + 1 .. min(n_1, N_sample - 1), n_0 = ceil(sqrt(s_d)), n_1 = floor(5.5 n_0), those with a
    threshold >= 1 kept: threshold_n is the largest k with P(rejected by look n | s_d) <= alpha_e * SPENDING_SHARE *
    t^SPENDING_POWER, t = (n - n_0) / (n_1 - n_0), exact from the distinct-count recursion (Lan-DeMets alpha
    spending, each sample a look); alpha_n = P(K_n <= threshold_n + 1 | s_d), the largest pointwise level with that
    threshold. The final look at N_sample: the remaining level alpha_e - (spent early), threshold as in Eq. 9 at that
    level (union bound).
    """
    s_d = target_distinct(n_train, target)
    first = math.ceil(math.sqrt(s_d))
    end = math.floor(SPENDING_LAST_LOOK * first)
    last = min(end, n_sample - 1)
    looks: list[dict[str, Any]] = []
    spent, lo = 0.0, 1
    dist = np.ones((2, 1))  # P(K_n = lo + i) after n = 1 sample: row 0 all paths, row 1 paths not yet rejected
    for n in range(2, last + 1):
        dist = _next_distinct(lo, dist, s_d)
        lo, dist, dropped = _drop_negligible(lo, dist)
        spent += dropped
        if n <= first:
            continue
        budget = alpha_e * SPENDING_SHARE * ((n - first) / (end - first)) ** SPENDING_POWER
        alive = np.cumsum(dist[1])
        below = int(np.searchsorted(alive, budget - spent, side="right"))  # states k < lo + below reject
        if below == 0:
            continue
        spent += float(alive[below - 1])
        dist[1, :below] = 0.0
        level = float(dist[0, : below + 1].sum())
        looks.append({"samples": n, "alpha": level, "threshold": lo + below - 1, "false_rejection": spent})
    final_alpha = alpha_e - spent
    threshold = lower_critical_value(n_sample, s_d, final_alpha)
    final_spent = spent + (occupancy_cdf(threshold, n_sample, s_d) if threshold >= 1 else 0.0)
    looks.append({"samples": n_sample, "alpha": final_alpha, "threshold": threshold, "false_rejection": final_spent})
    return looks


def _next_distinct(lo: int, dist: np.ndarray, s: int) -> np.ndarray:
    """The distribution of K after one more uniform draw among s images: K stays with probability K / s, else + 1."""
    k = lo + np.arange(dist.shape[1])
    out = np.zeros((dist.shape[0], dist.shape[1] + 1))
    out[:, :-1] += dist * (k / s)
    out[:, 1:] += dist * ((s - k) / s)
    return out


def _drop_negligible(lo: int, dist: np.ndarray) -> tuple[int, np.ndarray, float]:
    """Trim the ends where every probability is below NEGLIGIBLE; the dropped not-yet-rejected mass."""
    keep = np.flatnonzero(dist[0] >= NEGLIGIBLE)
    first, last = int(keep[0]), int(keep[-1])
    dropped = float(dist[1, :first].sum() + dist[1, last + 1 :].sum())
    return lo + first, dist[:, first : last + 1], dropped


RULES: dict[str, type[_Rule]] = {
    SpendingRule.name: SpendingRule,
    SequentialRule.name: SequentialRule,
    BoundRule.name: BoundRule,
}
DEFAULT_RULE = SpendingRule.name


def make_rule(name: str, n_train: int, n_planned: int, target: float, alpha_e: float = 0.05) -> _Rule:
    """The early-rejection rule called `name` ("spending", the default, "sequential" or "bound")."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose from {sorted(RULES)}")
    return RULES[name](n_train, n_planned, target, alpha_e)
