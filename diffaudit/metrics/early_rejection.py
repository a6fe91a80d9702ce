"""Early rejection of low-diversity checkpoints while sampling (supplement Sec. 7, Eq. 9, Sec. 11).

Each batch of generated samples arrives as the nearest training index of each sample, in generation order. Two
rules, each a small object with `update(nn_indices) -> Decision`:

- BoundRule, "bound": the paper's deterministic bound. Duplicates never disappear, so after d duplicates the final
  N_learned is at most n_planned - d; reject once n_planned - d <= k_min (Eq. 9). Rejects exactly the runs the final
  test would reject, so it never raises the error rate, but late.
- SequentialRule, "sequential": a group-sequential test over the fixed looks of irs.sequential_schedule, each a
  one-sided occupancy test of the distinct count so far under s_d = ceil(IRS_d * N_train), levels summing to alpha_e
  (weighted Bonferroni), so the false-rejection rate stays <= alpha_e whenever the true s >= s_d.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from diffaudit.metrics.irs import k_min, sequential_schedule, target_distinct
from diffaudit.metrics.occupancy import occupancy_cdf


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
        self.schedule = sequential_schedule(n_train, n_planned, target, alpha_e)
        self.next_look = 0
        self.last_tested: Decision | None = None

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


RULES: dict[str, type[_Rule]] = {BoundRule.name: BoundRule, SequentialRule.name: SequentialRule}
DEFAULT_RULE = SequentialRule.name


def make_rule(name: str, n_train: int, n_planned: int, target: float, alpha_e: float = 0.05) -> _Rule:
    """The early-rejection rule called `name` ("sequential", the default, or "bound")."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose from {sorted(RULES)}")
    return RULES[name](n_train, n_planned, target, alpha_e)
