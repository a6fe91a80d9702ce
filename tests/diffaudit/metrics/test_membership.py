"""Membership measures against hand-computed values and sklearn; membership scores on stand-in and tiny UNets."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from sklearn.metrics import roc_auc_score, roc_curve

from diffaudit.errors import InvalidInput
from diffaudit.metrics.membership import (
    SCORE_NAMES,
    alphas_cumprod_of,
    batched_scores,
    denoising_loss_score,
    membership_measures,
    pia_score,
    roc_auc,
    roc_curve_points,
    score_function,
    score_histograms,
    secmi_score,
    tpr_at_fpr,
    unet_calls_per_batch,
)

SCHEDULER_CONFIG = dict(DDPMScheduler(num_train_timesteps=1000).config)
OPTIONS: dict[str, dict[str, Any]] = {
    "volume_growth": {"n_axes": 1, "sigma": 0.05, "n_steps": 1},
    "denoising_loss": {"timesteps": (50, 200), "n_draws": 2, "seed": 3},
    "pia": {"timestep": 100, "p": 4.0},
    "secmi": {"timestep": 40, "interval": 10},
}


# --- measures ---------------------------------------------------------------------------------------------


def test_auc_of_separable_identical_and_reversed_groups() -> None:
    assert roc_auc(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])) == 1.0
    assert roc_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert roc_auc(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 0.5  # ties count half
    # hand count: pairs (member > non-member) of [1, 3] against [2, 2]: 3 > 2 twice, 1 < 2 twice -> 2 / 4
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    # [2, 3] against [1, 2]: 2>1, 2=2 (half), 3>1, 3>2 -> 3.5 / 4
    assert roc_auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == 0.875


def test_auc_and_roc_points_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.7, 1, 300).round(1), rng.normal(0, 1, 500).round(1)  # rounded: with ties
    truth = np.r_[np.ones(300), np.zeros(500)]
    scores = np.r_[members, nonmembers]
    assert roc_auc(members, nonmembers) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    ours_fpr, ours_tpr = roc_curve_points(members, nonmembers)
    np.testing.assert_allclose(ours_fpr, fpr)
    np.testing.assert_allclose(ours_tpr, tpr)


def test_tpr_at_fpr_on_a_small_known_example() -> None:
    # 4 members, 10 non-members; the best non-member scores 9, the next 5
    members = np.array([10.0, 9.5, 6.0, 1.0])
    nonmembers = np.array([9.0, 5.0, 4.0, 3.0, 2.0, 1.5, 0.5, 0.4, 0.3, 0.2])
    # FPR 0 up to threshold 9.5: TPR 2/4; FPR 1/10 from threshold 9 to 6: TPR 3/4
    assert tpr_at_fpr(members, nonmembers, 0.01) == 0.5  # below 1/10: the TPR at zero false positives
    assert tpr_at_fpr(members, nonmembers, 0.001) == 0.5
    assert tpr_at_fpr(members, nonmembers, 0.1) == 0.75
    assert tpr_at_fpr(members, nonmembers, 0.15) == 0.75  # no interpolation towards the next point
    assert tpr_at_fpr(members, nonmembers, 1.0) == 1.0
    truth, scores = np.r_[np.ones(4), np.zeros(10)], np.r_[members, nonmembers]
    fpr, tpr, _ = roc_curve(truth, scores)
    for target in (0.0, 0.01, 0.1, 0.15, 0.5, 0.75, 1.0):  # the rule stated in the module, through sklearn
        assert tpr_at_fpr(members, nonmembers, target) == tpr[fpr <= target].max()


def test_tpr_at_fpr_of_separable_and_identical_groups() -> None:
    assert tpr_at_fpr(np.arange(100.0) + 200, np.arange(100.0), 0.001) == 1.0
    same = np.arange(100.0)
    assert tpr_at_fpr(same, same, 0.01) == pytest.approx(0.01)  # member i ties non-member i: one of 100 at FPR 1%


def test_histograms_count_both_groups_on_shared_edges() -> None:
    histograms = score_histograms(np.array([0.0, 0.1, 0.9, 1.0]), np.array([0.5, 0.6]), bins=2)
    np.testing.assert_allclose(histograms.edges, [0.0, 0.5, 1.0])
    assert histograms.members.tolist() == [2, 2] and histograms.nonmembers.tolist() == [0, 2]


def test_measures_summary_and_refusals() -> None:
    summary = membership_measures(np.array([2.0, 3.0]), np.array([1.0, 2.0, 0.0, -1.0]))
    assert summary["auc"] == pytest.approx((2 * 4 - 0.5) / 8)
    assert summary["tpr_at_1pct_fpr"] == 0.5 and summary["smallest_measurable_fpr"] == 0.25
    with pytest.raises(ValueError, match="at least one"):
        roc_auc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        roc_auc(np.array([np.nan]), np.array([1.0]))


# --- scores on stand-in models with hand-computed values ---------------------------------------------------


class ScaledEpsilon(torch.nn.Module):
    """eps_theta(x, t) = c x: every score has a closed form."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: Any = None) -> Any:
        return SimpleNamespace(sample=self.c * sample)


def test_pia_closed_form() -> None:
    c, t = 0.3, 100
    abar = alphas_cumprod_of(SCHEDULER_CONFIG)[t].item()
    x0 = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    # eps0 = c x0, x_t = (sqrt(abar) + sqrt(1 - abar) c) x0, eps_t = c x_t
    factor = abs(c - c * (np.sqrt(abar) + np.sqrt(1 - abar) * c))
    expected = -factor * (x0.abs().pow(4).mean().item() ** 0.25)
    score = pia_score(ScaledEpsilon(c), alphas_cumprod_of(SCHEDULER_CONFIG), x0, None, timestep=t, p=4)
    assert score == pytest.approx([expected], rel=1e-12)


def test_secmi_is_zero_for_an_exactly_invertible_model() -> None:
    # with eps = 0 a DDIM step is x -> sqrt(abar_to / abar_from) x: the round trip is exact, the t-error 0
    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = secmi_score(ScaledEpsilon(0.0), alphas_cumprod_of(SCHEDULER_CONFIG), x0, None, timestep=100, interval=10)
    np.testing.assert_allclose(score, 0.0, atol=1e-24)
    assert (
        secmi_score(ScaledEpsilon(0.5), alphas_cumprod_of(SCHEDULER_CONFIG), x0, None, timestep=100, interval=10) < 0
    ).all()


def test_denoising_loss_of_a_zero_model_is_the_noise_energy() -> None:
    x0 = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    score = denoising_loss_score(
        ScaledEpsilon(0.0), alphas_cumprod_of(SCHEDULER_CONFIG), x0, None, timesteps=(10, 500), n_draws=8
    )
    np.testing.assert_allclose(score, -1.0, atol=0.05)  # mean of eps^2 over 4096 normal draws per image


def test_invalid_score_parameters_are_refused() -> None:
    abar, x0 = alphas_cumprod_of(SCHEDULER_CONFIG), torch.zeros(1, 1, 4, 4)
    with pytest.raises(InvalidInput, match="timestep"):
        pia_score(ScaledEpsilon(0.1), abar, x0, None, timestep=1000, p=2)
    with pytest.raises(InvalidInput, match="multiple of interval"):
        secmi_score(ScaledEpsilon(0.1), abar, x0, None, timestep=95, interval=10)
    with pytest.raises(InvalidInput, match="timesteps"):
        denoising_loss_score(ScaledEpsilon(0.1), abar, x0, None, timesteps=(-1,), n_draws=1)


# --- scores on a tiny UNet: shapes, determinism, batch-size independence -----------------------------------


@pytest.mark.parametrize("score", SCORE_NAMES)
def test_scores_are_deterministic_and_batch_independent(score: str, make_tiny_unet: Callable[..., Any]) -> None:
    unet = make_tiny_unet(num_class_embeds=3)  # tests/diffaudit/conftest.py's tiny UNet
    pixels = np.random.default_rng(4).integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    score_fn = score_function(score, unet, SCHEDULER_CONFIG, OPTIONS[score])  # type: ignore[arg-type]
    calls: list[tuple[int, int]] = []
    whole = batched_scores(score_fn, pixels, labels, batch_size=5)
    ones = batched_scores(score_fn, pixels, labels, batch_size=2, progress=lambda d, n: calls.append((d, n)))
    assert whole.shape == (5,) and whole.dtype == np.float64 and np.isfinite(whole).all()
    assert len(set(np.round(whole, 9))) == 5  # not a constant
    np.testing.assert_allclose(ones, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(batched_scores(score_fn, pixels, labels, batch_size=5), whole)  # deterministic
    assert calls == [(2, 5), (4, 5), (5, 5)]
    chunk = batched_scores(score_fn, pixels[3:], labels[3:], first_index=3)  # a chunk of a larger set
    np.testing.assert_allclose(chunk, whole[3:], rtol=1e-5, atol=1e-7)


def test_unet_calls_per_batch() -> None:
    assert [unet_calls_per_batch(s, OPTIONS[s]) for s in SCORE_NAMES] == [2, 4, 2, 5]  # type: ignore[arg-type]
