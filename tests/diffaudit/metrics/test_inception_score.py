"""Inception Score against torch-fidelity's, from logits and from probabilities; golden values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_isc import isc_features_to_metric

from diffaudit.metrics.inception_score import inception_score


def test_inception_score_matches_torch_fidelity() -> None:
    logits = np.random.default_rng(11).standard_normal((500, 20)) * 3
    mean, std = inception_score(logits)
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    assert (mean, std) == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-10)


def test_probabilities_give_the_same_score_as_logits() -> None:
    logits = np.random.default_rng(12).standard_normal((200, 8))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert inception_score(probabilities=probabilities) == pytest.approx(inception_score(logits), rel=1e-10)


def test_confident_and_balanced_predictions_score_the_number_of_classes() -> None:
    probabilities = np.repeat(np.eye(4), 25, axis=0)  # every split holds the four classes equally? shuffled: nearly
    mean, _ = inception_score(probabilities=probabilities, splits=1)
    assert mean == pytest.approx(4.0, rel=1e-12)
    assert inception_score(probabilities=np.full((40, 4), 0.25), splits=2)[0] == pytest.approx(1.0, rel=1e-12)
