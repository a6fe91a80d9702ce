"""Vendi score against vendi-score (its d x d and N x N forms), golden values, row weights."""

from __future__ import annotations

import numpy as np
import pytest
from vendi_score import vendi

from diffaudit.metrics.vendi import vendi_score


def test_vendi_matches_vendi_score_both_ways() -> None:
    x = np.random.default_rng(9).standard_normal((300, 24)).astype(np.float32)
    ours = vendi_score(x)
    assert ours == pytest.approx(vendi.score_dual(x.astype(np.float64)), rel=1e-9)
    assert ours == pytest.approx(vendi.score_X(x.astype(np.float64)), rel=1e-9)


def test_vendi_counts_orthogonal_modes() -> None:
    modes = np.eye(5, dtype=np.float32)
    assert vendi_score(np.repeat(modes, 7, axis=0)) == pytest.approx(5.0, rel=1e-12)
    assert vendi_score(np.repeat(modes[:1], 30, axis=0)) == pytest.approx(1.0, rel=1e-12)


def test_row_weights_equal_repeated_rows() -> None:
    x = np.random.default_rng(10).standard_normal((50, 6))
    weights = np.arange(50) % 3
    assert vendi_score(x, weights.astype(float)) == pytest.approx(vendi_score(np.repeat(x, weights, 0)), rel=1e-10)
