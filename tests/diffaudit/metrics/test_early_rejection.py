"""Early-rejection rules on streams of nearest-training-image indices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.metrics.early_rejection import (
    DEFAULT_RULE,
    BoundRule,
    SequentialRule,
    SpendingRule,
    make_rule,
    spending_schedule,
)
from diffaudit.metrics.irs import k_min
from diffaudit.metrics.occupancy import lower_critical_value, occupancy_cdf
from diffaudit.spec import IRSSpec


def _stream_with_duplicates(n: int, duplicates: int) -> np.ndarray:
    """n samples of which exactly `duplicates` repeat an earlier image: distinct first, then repeats of image 0."""
    return np.concatenate([np.arange(n - duplicates), np.zeros(duplicates, dtype=np.int64)])


def test_bound_rule_rejects_imagenet_after_1257_duplicates_in_2000_samples():
    # Sec. 11: 50,000 planned samples, k_min = 48,744; "if within the first 2000 samples we already observe over 1257
    # duplicates we can immediately reject". Our rule (reject when 50,000 - d <= k_min) rejects from d = 1256 on,
    # so on this stream it stops one sample earlier, at the 1256th duplicate.
    rule = BoundRule(1_281_166, 50_000, 0.8, 0.05)
    assert rule.k_min == 48_744
    decision = rule.update(_stream_with_duplicates(2000, 1257))
    assert decision.reject and decision.rule == "bound" and decision.threshold == 48_744
    assert (decision.samples_drawn, decision.distinct, decision.duplicates) == (1999, 743, 1256)
    assert decision.probability is not None and decision.probability < 0.05
    assert decision.probability == pytest.approx(occupancy_cdf(48_744, 50_000, 1_024_933))
    assert not BoundRule(1_281_166, 50_000, 0.8, 0.05).update(_stream_with_duplicates(2000, 1255)).reject


def test_bound_rule_stops_at_the_sample_that_crosses_the_threshold():
    rule = BoundRule(100, 100, 0.8, 0.05)
    limit = 100 - rule.k_min  # duplicates at which n_planned - d <= k_min
    stream = _stream_with_duplicates(limit + 10, limit + 10 - 5)  # 5 distinct then repeats
    decision = rule.update(stream)
    assert decision.reject and decision.duplicates == limit and decision.samples_drawn == 5 + limit
    assert rule.update(np.arange(3)) == decision  # a rejection stays


def test_sequential_rule_rejects_a_collapsed_model_at_the_first_look():
    rule = SequentialRule(1000, 1000, 0.8, 0.05)
    first = rule.schedule[0]
    assert first["samples"] == 29  # ceil(sqrt(800))
    decision = rule.update(np.zeros(100, dtype=np.int64))
    assert decision.reject and decision.rule == "sequential"
    assert (decision.samples_drawn, decision.distinct, decision.duplicates) == (29, 1, 28)
    assert decision.threshold == first["threshold"] and decision.alpha == first["alpha"]
    assert decision.probability is not None and decision.probability < decision.alpha
    assert decision.probability == pytest.approx(occupancy_cdf(1, 29, 800))
    json.dumps(decision.to_dict())


def test_sequential_rule_passes_an_all_distinct_stream_and_reports_the_last_look():
    rule = SequentialRule(1000, 1000, 0.8, 0.05)
    decisions = [rule.update(batch) for batch in np.array_split(np.random.default_rng(0).permutation(1000), 7)]
    assert not any(d.reject for d in decisions)
    assert decisions[-1].samples_drawn == 1000 and decisions[-1].distinct == 1000
    assert decisions[-1].threshold == rule.schedule[-1]["threshold"]
    assert decisions[-1].threshold <= k_min(1000, 1000, 0.8, 0.05)
    with pytest.raises(ValueError, match="planned"):
        rule.update(np.arange(1))


@pytest.mark.parametrize("rule_name", ["bound", "sequential", "spending"])
def test_decision_does_not_depend_on_batch_sizes(rule_name):
    draws = np.random.default_rng(3).integers(0, 300, 1000)  # 300 images against a target of 800: rejected
    outcomes = []
    for batch in (1000, 64, 7):
        rule = make_rule(rule_name, 1000, 1000, 0.8, 0.05)
        for start in range(0, 1000, batch):
            decision = rule.update(draws[start : start + batch])
        outcomes.append(decision)
    assert outcomes[0] == outcomes[1] == outcomes[2] and outcomes[0].reject


def test_sequential_false_rejection_rate_at_the_target_is_held():
    rng = np.random.default_rng(7)
    runs, rejected = 300, 0
    for _ in range(runs):  # a model exactly at the target: 800 of 1000 images, uniform
        rule = SequentialRule(1000, 1000, 0.8, 0.05)
        rejected += rule.update(rng.integers(0, 800, 1000)).reject
    assert rejected / runs <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / runs)


def test_indices_outside_the_training_set_are_refused():
    with pytest.raises(ValueError, match="indices"):
        BoundRule(10, 10, 0.8).update(np.array([3, 10]))


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown rule"):
        make_rule("magic", 10, 10, 0.8)


def _rejected_by_schedule(rng: np.random.Generator, images: int, runs: int, looks: list[dict]) -> np.ndarray:
    """Whether each of `runs` generations, uniform among `images`, meets a look's threshold (vectorised)."""
    n = looks[-1]["samples"]
    draws = rng.integers(0, images, size=(runs, n)) + images * np.arange(runs)[:, None]
    is_new = np.zeros(draws.size, dtype=bool)
    is_new[np.unique(draws.ravel(), return_index=True)[1]] = True
    distinct = np.cumsum(is_new.reshape(runs, n), axis=1)
    samples = np.array([look["samples"] for look in looks])
    return (distinct[:, samples - 1] <= np.array([look["threshold"] for look in looks])).any(axis=1)


def test_spending_is_the_default_rule():
    assert DEFAULT_RULE == "spending" == IRSSpec().rule
    assert isinstance(make_rule(DEFAULT_RULE, 1000, 1000, 0.8), SpendingRule)


def test_spending_schedule_is_deterministic_and_spends_at_most_alpha_e():
    looks = spending_schedule(50_000, 50_000, 0.8, 0.05)
    assert looks == spending_schedule(50_000, 50_000, 0.8, 0.05)
    early, final = looks[:-1], looks[-1]
    samples = [look["samples"] for look in looks]
    assert samples == sorted(set(samples)) and final["samples"] == 50_000
    assert early[0]["samples"] > 200 and early[-1]["samples"] <= 1100  # from sqrt(s_d) to 5.5 sqrt(s_d)
    spent = [look["false_rejection"] for look in looks]
    assert spent == sorted(spent) and 0.045 < early[-1]["false_rejection"] <= 0.05 * 0.96 + 1e-12
    assert spent[-1] <= 0.05
    # the final look is Eq. 9 at the level left over; slightly stricter than k_min
    assert final["alpha"] == pytest.approx(0.05 - early[-1]["false_rejection"])
    assert final["threshold"] == lower_critical_value(50_000, 40_000, final["alpha"]) <= k_min(50_000, 50_000, 0.8)


def test_spending_look_levels_are_the_occupancy_distribution():
    """Each early look's alpha, from the forward recursion, is P(K_n <= threshold + 1 | n, s_d) of the occupancy law."""
    looks = spending_schedule(1000, 1000, 0.8, 0.05)[:-1]
    for look in looks[:: max(1, len(looks) // 10)]:
        n, threshold = look["samples"], look["threshold"]
        assert look["alpha"] == pytest.approx(occupancy_cdf(threshold + 1, n, 800), rel=1e-9)
        assert occupancy_cdf(threshold, n, 800) < look["alpha"]


def test_spending_false_rejection_rate_at_the_target_is_held_and_matches_the_recursion():
    looks = spending_schedule(1000, 1000, 0.8, 0.05)
    runs = 4000
    rejected = _rejected_by_schedule(np.random.default_rng(11), 800, runs, looks)
    se = np.sqrt(0.05 * 0.95 / runs)
    assert rejected.mean() <= 0.05 + 3 * se
    early = looks[:-1]
    early_rejected = _rejected_by_schedule(np.random.default_rng(12), 800, runs, early)
    assert early_rejected.mean() == pytest.approx(early[-1]["false_rejection"], abs=4 * se)
    # a model above the target is rejected less often (K_n grows with s)
    assert _rejected_by_schedule(np.random.default_rng(13), 1000, runs, looks).mean() < rejected.mean()


def test_spending_rule_held_through_the_rule_object():
    rng = np.random.default_rng(5)
    runs, rejected = 300, 0
    for _ in range(runs):
        rule = SpendingRule(1000, 1000, 0.8, 0.05)
        rejected += rule.update(rng.integers(0, 800, 1000)).reject
    assert rejected / runs <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / runs)


def test_spending_rule_rejects_a_collapsed_model_at_its_first_look():
    rule = SpendingRule(50_000, 50_000, 0.8, 0.05)
    first = rule.schedule[0]
    decision = rule.update(np.zeros(1000, dtype=np.int64))
    assert decision.reject and decision.rule == "spending"
    assert (decision.samples_drawn, decision.distinct) == (first["samples"], 1) and first["samples"] == 201
    assert decision.threshold == first["threshold"] and decision.alpha == first["alpha"]
    assert decision.probability is not None and decision.probability < decision.alpha
    json.dumps(decision.to_dict())


def test_spending_rule_rejects_a_model_at_a_quarter_of_the_target_within_a_few_hundred_samples():
    # 10,000 images against s_d = 40,000: the sequential rule's looks and the bound need far more samples
    draws = np.random.default_rng(2).integers(0, 10_000, 50_000)
    stops = {}
    for name in ("spending", "sequential", "bound"):
        rule = make_rule(name, 50_000, 50_000, 0.8, 0.05)
        for start in range(0, draws.size, 500):
            decision = rule.update(draws[start : start + 500])
            if decision.reject:
                break
        assert decision.reject
        stops[name] = decision.samples_drawn
    assert stops["spending"] <= 400 and stops["spending"] < stops["sequential"] < stops["bound"]


def test_spending_rule_with_fewer_samples_than_the_first_look_tests_once_at_alpha_e():
    looks = spending_schedule(1438, 16, 0.5, 0.05)
    assert len(looks) == 1 and looks[0]["samples"] == 16 and looks[0]["alpha"] == 0.05
    assert looks[0]["threshold"] == k_min(1438, 16, 0.5, 0.05)
