"""Precision, recall, density and coverage against prdc and torch-fidelity; closed balls; golden cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from torch_fidelity.metric_prc import calculate_precision_recall_full

import diffaudit.metrics.prdc as prdc_module
from diffaudit.metrics.prdc import ball_memberships
from diffaudit.metrics.vendi import vendi_score


def gaussian(rng: np.random.Generator, n: int, d: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return (rng.standard_normal((n, d)) * scale + shift).astype(np.float32)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return gaussian(rng, 500, 16), gaussian(rng, 400, 16, scale=1.3, shift=0.2)


def test_all_four_match_prdc_and_precision_recall_match_torch_fidelity(pair: tuple[np.ndarray, np.ndarray]) -> None:
    real, fake = pair
    balls = ball_memberships(real, fake, k=3)
    theirs = compute_prdc(real, fake, 3)  # strict '<': equal to ours on continuous data (no ties)
    assert balls.precision == pytest.approx(theirs["precision"], rel=1e-12)
    assert balls.recall == pytest.approx(theirs["recall"], rel=1e-12)
    assert balls.density == pytest.approx(theirs["density"], rel=1e-12)
    assert balls.coverage == pytest.approx(theirs["coverage"], rel=1e-12)
    precision, recall = calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), 3)
    # torch-fidelity averages in float32: equal up to that rounding (the memberships themselves are equal)
    assert (balls.precision, balls.recall) == pytest.approx((precision, recall), rel=1e-7)
    assert 0 < balls.precision < 1 and 0 < balls.recall < 1  # the comparison is not between trivial values


def test_tiles_do_not_change_the_result(pair: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    real, fake = pair
    whole = ball_memberships(real, fake)
    monkeypatch.setattr(prdc_module, "TILE_ROWS", 37)  # many ragged tiles on both axes
    tiled = ball_memberships(real, fake)
    for name in ("fake_in_real", "fake_ball_counts", "real_in_fake", "real_covered"):
        np.testing.assert_array_equal(getattr(tiled, name), getattr(whole, name))


def test_a_point_exactly_on_a_radius_is_inside() -> None:
    real = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)  # k = 1: every radius is 1
    fake = np.array([[4.0], [-1.0], [5.5]], np.float32)  # 4 and -1 lie exactly on a real ball's boundary
    balls = ball_memberships(real, fake, k=1)
    assert balls.fake_in_real.tolist() == [True, True, False]
    assert compute_prdc(real, fake, 1)["precision"] == 0  # the strict '<' drops boundary points


def test_a_set_against_itself_has_coverage_one_even_with_duplicates() -> None:
    rng = np.random.default_rng(6)
    rows = np.repeat(gaussian(rng, 50, 8), 4, axis=0)  # each row 4 times: with k = 3 every radius is 0
    balls = ball_memberships(rows, rows, k=3)
    assert (balls.precision, balls.recall, balls.coverage) == (1.0, 1.0, 1.0)
    assert compute_prdc(rows, rows, 3)["coverage"] < 0.5  # the pitfall of a strict "<" (prdc: 0.12 here)


def test_two_samples_of_one_distribution_have_density_and_coverage_near_one() -> None:
    rng = np.random.default_rng(7)
    balls = ball_memberships(gaussian(rng, 2000, 8), gaussian(rng, 2000, 8), k=3)
    assert balls.density == pytest.approx(1.0, abs=0.08)
    # Naeem et al., arXiv 2002.09797, Sec. 3.2: E[coverage] = 1 - (N-1)...(N-k) / ((M+N-1)...(M+N-k)) ~ 1 - 2^-k
    assert balls.coverage == pytest.approx(1 - 2.0**-3, abs=0.03)
    assert balls.precision > 0.9 and balls.recall > 0.9


def test_a_collapsed_generator_has_recall_near_zero_and_low_vendi() -> None:
    rng = np.random.default_rng(8)
    real = gaussian(rng, 600, 16)
    collapsed = (real[0] + 0.01 * rng.standard_normal((600, 16))).astype(np.float32)
    balls = ball_memberships(real, collapsed)
    assert balls.recall < 0.02
    assert balls.precision > 0.9  # the collapsed samples are realistic: the one mode lies on the real manifold
    assert vendi_score(collapsed) < 1.01 < 10 < vendi_score(real)
