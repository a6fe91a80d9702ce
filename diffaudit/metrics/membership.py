"""Membership inference on a diffusion model: scores of training and held-out images, and the measures of how
well a score tells them apart.

Every score is oriented so that HIGHER means "more likely a training image" (a member):
- volume growth (Hasegawa and Yasuda, Algorithm 1 / Eq. 13; diffaudit.metrics.volume_growth): log l_T as is;
- denoising loss (Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239, Eq. 14, used as a
  membership score by Matsumoto et al., "Membership Inference Attacks against Diffusion Models", arXiv
  2302.03262, and Carlini et al., arXiv 2301.13188, Sec. 6): minus the mean of ||eps - eps_theta(x_t, t)||^2 over
  chosen timesteps and seeded noise draws;
- PIA (Kong et al., "An Efficient Membership Inference Attack for the Diffusion Model by Proximal
  Initialization", ICLR 2024, arXiv 2305.18355, Sec. 4): minus ||eps_theta(x_0, 0) - eps_theta(x_t, t)||_p with the
  proximal initial noise eps_theta(x_0, 0) put into the forward process, x_t = sqrt(abar_t) x_0 +
  sqrt(1 - abar_t) eps_theta(x_0, 0);
- SecMI (Duan et al., "Are Diffusion Models Vulnerable to Membership Inference Attacks?", ICML 2023, arXiv
  2302.01316, Sec. 4, the t-error): minus ||psi_theta(phi_theta(x~_t, t), t) - x~_t||^2, x~_t the deterministic
  DDIM inversion of x_0 to timestep t in steps of k (phi: one DDIM step towards noise, psi: one back).

Measures (higher score = member): ROC AUC (Mann-Whitney U, ties counted half), TPR at a fixed FPR read off the
empirical ROC curve WITHOUT interpolation (the largest TPR among the curve's points with FPR <= the target, the
conservative convention of Carlini et al., "Membership Inference Attacks From First Principles", arXiv
2112.03570, Sec. 4: with n held-out images an FPR below 1/n is the TPR at zero false positives), and the
histograms of both groups as bin counts on shared edges.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from diffaudit.errors import InvalidInput
from diffaudit.metrics.volume_growth import uint8_to_model_range, volume_growth

ScoreName = Literal["volume_growth", "denoising_loss", "pia", "secmi"]
SCORE_NAMES: tuple[ScoreName, ...] = ("volume_growth", "denoising_loss", "pia", "secmi")
ProgressFn = Callable[[int, int], None]
# score_fn(images (B, C, H, W) in [-1, 1], class labels (B,) or None, global index of images[0]) -> (B,) scores
ScoreFn = Callable[[torch.Tensor, torch.Tensor | None, int], np.ndarray]


# --- measures --------------------------------------------------------------------------------------------------


def _checked(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    members, nonmembers = np.asarray(members, np.float64).ravel(), np.asarray(nonmembers, np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership measures need at least one member and one non-member score")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("membership scores must be finite")
    return members, nonmembers


def roc_curve_points(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of "member when score >= threshold" at every distinct score, from (0, 0) to (1, 1)."""
    members, nonmembers = _checked(members, nonmembers)
    thresholds = np.unique(np.concatenate([members, nonmembers]))[::-1]  # descending
    members_sorted, nonmembers_sorted = np.sort(members), np.sort(nonmembers)
    tp = members.size - np.searchsorted(members_sorted, thresholds, side="left")
    fp = nonmembers.size - np.searchsorted(nonmembers_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / nonmembers.size])
    tpr = np.concatenate([[0.0], tp / members.size])
    return fpr, tpr


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + P(equal) / 2: the area under the ROC curve (Mann-Whitney U / n m)."""
    members, nonmembers = _checked(members, nonmembers)
    nonmembers_sorted = np.sort(nonmembers)
    below = np.searchsorted(nonmembers_sorted, members, side="left")
    equal = np.searchsorted(nonmembers_sorted, members, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (members.size * nonmembers.size))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The largest TPR among the empirical ROC points with FPR <= `fpr` (no interpolation between points)."""
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    fprs, tprs = roc_curve_points(members, nonmembers)
    return float(tprs[fprs <= fpr + 1e-12].max())


@dataclass(frozen=True)
class Histograms:
    edges: np.ndarray  # (bins + 1,) shared by both groups
    members: np.ndarray  # (bins,) int64 counts
    nonmembers: np.ndarray  # (bins,) int64 counts


def score_histograms(members: np.ndarray, nonmembers: np.ndarray, bins: int = 30) -> Histograms:
    """Bin counts of both groups on the same edges (spanning both groups' scores)."""
    members, nonmembers = _checked(members, nonmembers)
    edges = np.histogram_bin_edges(np.concatenate([members, nonmembers]), bins=bins)
    return Histograms(
        edges=edges,
        members=np.histogram(members, edges)[0].astype(np.int64),
        nonmembers=np.histogram(nonmembers, edges)[0].astype(np.int64),
    )


FPR_TARGETS = (0.01, 0.001)


def membership_measures(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, Any]:
    """AUC, TPR at 1% and 0.1% FPR, group sizes and means, JSON-able."""
    members, nonmembers = _checked(members, nonmembers)
    return {
        "auc": roc_auc(members, nonmembers),
        "tpr_at_1pct_fpr": tpr_at_fpr(members, nonmembers, FPR_TARGETS[0]),
        "tpr_at_0_1pct_fpr": tpr_at_fpr(members, nonmembers, FPR_TARGETS[1]),
        "smallest_measurable_fpr": 1.0 / nonmembers.size,
        "n_members": int(members.size),
        "n_nonmembers": int(nonmembers.size),
        "member_mean": float(members.mean()),
        "nonmember_mean": float(nonmembers.mean()),
    }


# --- scores ----------------------------------------------------------------------------------------------------


def alphas_cumprod_of(scheduler_config: Mapping[str, Any]) -> torch.Tensor:
    """abar_t (float64) of the checkpoint's training noise schedule, t = 0..T-1."""
    return DDPMScheduler.from_config(dict(scheduler_config)).alphas_cumprod.double()


def _eps(unet: torch.nn.Module, x: torch.Tensor, timestep: int, labels: torch.Tensor | None) -> torch.Tensor:
    """eps_theta(x, t) in float64, the UNet run in its own device and dtype."""
    parameter = next(unet.parameters())
    t = torch.tensor(timestep, device=parameter.device)
    out = unet(x.to(parameter.device, parameter.dtype), t, class_labels=None if labels is None else labels.to(t.device))
    return out.sample.double()


def _check_timestep(timestep: int, alphas_cumprod: torch.Tensor, what: str) -> None:
    if not 0 <= timestep < len(alphas_cumprod):
        raise InvalidInput(f"{what} must be between 0 and {len(alphas_cumprod) - 1}, got {timestep}")


def seeded_noise(shape: Sequence[int], *, seed: int, first_index: int) -> torch.Tensor:
    """(B, draws, C, H, W) standard normal float64; image i's draws come from seed + first_index + i."""
    noise = torch.empty(*shape, dtype=torch.float64)
    for i in range(shape[0]):
        noise[i] = torch.randn(*shape[1:], generator=torch.Generator().manual_seed(seed + first_index + i))
    return noise


@torch.no_grad()
def denoising_loss_score(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    timesteps: Sequence[int],
    n_draws: int,
    seed: int = 0,
    first_index: int = 0,
) -> np.ndarray:
    """Minus the DDPM loss ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 (Ho et al., arXiv
    2006.11239, Eq. 14; per pixel), averaged over the timesteps and n_draws seeded noises per image and timestep.

    One UNet call of B images per (timestep, draw). Image i's noise depends only on seed + first_index + i.
    """
    for t in timesteps:
        _check_timestep(t, alphas_cumprod, "denoising_loss timesteps")
    x0 = images.double()
    noise = seeded_noise((len(x0), len(timesteps) * n_draws, *x0.shape[1:]), seed=seed, first_index=first_index)
    total = torch.zeros(len(x0), dtype=torch.float64)
    for j, t in enumerate(t for t in timesteps for _ in range(n_draws)):
        abar, eps = alphas_cumprod[t], noise[:, j]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps  # Ho et al., Eq. 4
        total += (eps - _eps(unet, x_t, t, labels).cpu()).pow(2).flatten(1).mean(1)
    return (-total / (len(timesteps) * n_draws)).numpy()


@torch.no_grad()
def pia_score(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    timestep: int,
    p: float,
) -> np.ndarray:
    """Minus PIA's error ||eps_theta(x_0, 0) - eps_theta(x_t, t)||_p, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t)
    eps_theta(x_0, 0) (Kong et al., arXiv 2305.18355, Sec. 4: the proximal initialisation and its error
    R_{t,p}); the p-norm is taken per pixel (a mean, not a sum, so that image sizes compare). Two UNet calls of B."""
    _check_timestep(timestep, alphas_cumprod, "pia timestep")
    x0 = images.double()
    eps0 = _eps(unet, x0, 0, labels).cpu()
    abar = alphas_cumprod[timestep]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps0
    error = (eps0 - _eps(unet, x_t, timestep, labels).cpu()).abs().pow(p).flatten(1).mean(1).pow(1 / p)
    return (-error).numpy()


def ddim_step(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    t_from: int,
    t_to: int,
) -> torch.Tensor:
    """One deterministic DDIM step from timestep t_from to t_to (either direction), eps_theta at t_from
    (Song et al., "Denoising Diffusion Implicit Models", arXiv 2010.02502, Eq. 12 with sigma = 0; SecMI's
    phi_theta towards noise and psi_theta back, Duan et al., arXiv 2302.01316, Sec. 4)."""
    eps = _eps(unet, x, t_from, labels).cpu()
    abar_from, abar_to = alphas_cumprod[t_from], alphas_cumprod[t_to]
    x0_pred = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    return abar_to.sqrt() * x0_pred + (1 - abar_to).sqrt() * eps


@torch.no_grad()
def secmi_score(
    unet: torch.nn.Module,
    alphas_cumprod: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    timestep: int,
    interval: int,
) -> np.ndarray:
    """Minus SecMI's t-error ||psi_theta(phi_theta(x~_t, t), t + k) - x~_t||^2 per pixel (Duan et al., arXiv
    2302.01316, Sec. 4; SecMI_stat): x~_t is x_0 carried by deterministic DDIM steps 0 -> k -> ... -> t, then one
    step to t + k and one back to t. As in the authors' code, t = t_sec - k for their t_sec: with timestep 100 and
    interval 10 the inversion ends at 90 and the error is measured there. t / k + 1 UNet calls of B images."""
    if interval < 1 or timestep < 2 * interval or timestep % interval:
        raise InvalidInput(f"secmi timestep ({timestep}) must be a multiple of interval ({interval}), at least 2x it")
    _check_timestep(timestep, alphas_cumprod, "secmi timestep")
    x = images.double()
    grid = list(range(0, timestep, interval))  # 0, k, ..., t_sec - k
    for t_from, t_to in itertools.pairwise(grid):
        x = ddim_step(unet, alphas_cumprod, x, labels, t_from, t_to)
    t = grid[-1]
    reconstructed = ddim_step(
        unet, alphas_cumprod, ddim_step(unet, alphas_cumprod, x, labels, t, t + interval), labels, t + interval, t
    )
    return (-(reconstructed - x).pow(2).flatten(1).mean(1)).numpy()


def unet_calls_per_batch(score: ScoreName, options: Mapping[str, Any]) -> int:
    """UNet calls of B images (one per image of the batch) that one batch of B scores needs."""
    if score == "volume_growth":
        return (options["n_axes"] + 1) * options["n_steps"]
    if score == "denoising_loss":
        return len(options["timesteps"]) * options["n_draws"]
    if score == "pia":
        return 2
    return options["timestep"] // options["interval"] + 1


def score_function(
    score: ScoreName, unet: torch.nn.Module, scheduler_config: Mapping[str, Any], options: Mapping[str, Any]
) -> ScoreFn:
    """The chosen score as score_fn(images, labels, first_index) -> (B,) scores, higher = more likely a member.

    options: volume_growth: n_axes, sigma, n_steps (and volume_growth's other keywords); denoising_loss:
    timesteps, n_draws, seed; pia: timestep, p; secmi: timestep, interval.
    """
    if score == "volume_growth":
        return lambda x, y, first: volume_growth(unet, scheduler_config, x, y, first_index=first, **options).scores
    abar = alphas_cumprod_of(scheduler_config)
    if score == "denoising_loss":
        return lambda x, y, first: denoising_loss_score(unet, abar, x, y, first_index=first, **options)
    if score == "pia":
        return lambda x, y, _first: pia_score(unet, abar, x, y, **options)
    if score == "secmi":
        return lambda x, y, _first: secmi_score(unet, abar, x, y, **options)
    raise ValueError(f"unknown membership score {score!r}")


def batched_scores(
    score_fn: ScoreFn,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    first_index: int = 0,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """score_fn over uint8 images (N, H, W, C) in batches, with progress(done, total) after each (it may raise to
    cancel). Scores do not depend on batch_size; `first_index` is the global index of images[0] (it seeds)."""
    parts = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        batch_labels = None if labels is None else torch.from_numpy(np.asarray(labels[start:stop], dtype=np.int64))
        parts.append(score_fn(uint8_to_model_range(images[start:stop]), batch_labels, first_index + start))
        if progress is not None:
            progress(stop, len(images))
    return np.concatenate(parts) if parts else np.zeros(0)
