"""Early-rejection rules on streams of nearest-training-image indices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.metrics.early_rejection import BoundRule, SequentialRule, make_rule
from diffaudit.metrics.irs import k_min
from diffaudit.metrics.occupancy import occupancy_cdf


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


@pytest.mark.parametrize("rule_name", ["bound", "sequential"])
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
