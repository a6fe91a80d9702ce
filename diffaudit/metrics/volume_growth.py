"""Volume growth rate: how easily a diffusion model reproduces a training image.

Hasegawa and Yasuda, "Quantifying the Ease of Reproducing Training Data in Unconditional Diffusion
Models" (Hasegawa and Yasuda), Algorithm 1 and Eq. 13: put N orthogonal axes of length sigma around an image, carry the
centre and the axis ends along the deterministic probability-flow ODE (Eq. 8) towards noise, and accumulate
in log space how much the small parallelepiped they span grows, re-orthogonalising the axes (Gram-Schmidt,
largest stretch first) and resetting them to length sigma after every step. Images the model can generate
occupy a larger region of the latent space, so their neighbourhood grows more (Fig. 2): higher is easier to
reproduce.

The ODE step. Eq. 8 is solved with the first-order DDIM update in the inverse direction (diffusers'
`DDIMInverseScheduler`, built from the checkpoint's own scheduler config, so the noise schedule is the one
the model was trained with): from noise level abar_a to abar_b,
    x_b = sqrt(abar_b) * (x_a - sqrt(1 - abar_a) * eps) / sqrt(abar_a) + sqrt(1 - abar_b) * eps,
with eps = eps_theta(x_a, t_b) (the model is queried at the destination timestep, diffusers' convention).
The grid has `num_inference_steps` levels (default: one per training timestep, i.e. the paper's T = 1000 for
a 1000-step model), starting from the clean image at abar = 1.

"One step" (the paper's Fig. 3 finding, Figs. 7-8: N = 1, sigma = 0.05, step = 1) is therefore the first
step of the full-length ODE: from the clean image (t = 0, abar = 1) to the first training noise level
(timestep 0, abar_0 = 1 - beta_0), with eps_theta evaluated at the image itself and timestep 0:
x_1 = sqrt(abar_0) x_0 + sqrt(1 - abar_0) eps_theta(x_0, 0). Its log growth is log ||J v|| for the
Jacobian J = sqrt(abar_0) I + sqrt(1 - abar_0) d eps_theta / dx along a random unit direction v, measured
by a finite difference of length sigma.

What is accumulated. Algorithm 1 (line 10) adds the log of each axis' stretch ||x^k_{t+1} - x^0_{t+1}|| /
sigma. With `measure="volume"` (the default) the stretch of axis k is taken after Gram-Schmidt against the
axes sorted before it (the diagonal of R in a QR factorisation), so the sum is exactly the log of the
parallelepiped's volume ratio, which is what the paper says Eq. 13 measures (and, for N = D axes and a
linear model, the log-determinant of the step's Jacobian; the standard Lyapunov-spectrum method).
`measure="stretch"` adds the raw axis lengths, Eq. 13 to the letter and what the authors' code does
(github.com/masa-longriver/Quantifying_the_Ease_of_Reproduction, src/evaluation/growth_rate_calculator.py),
an upper bound of the volume ratio (Hadamard's inequality). For N = 1 the two are identical.

The authors' code takes Euler steps of Eq. 8 for their continuous VP-SDE on linspace(eps, 1, T), the first
at t = eps on the clean image, with images in [-1, 1] (so sigma = 0.05 is in those units, as here); the
DDIM step above is the discrete-schedule counterpart for diffusers checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim_inverse import DDIMInverseScheduler

from diffaudit.errors import InvalidInput

Measure = Literal["volume", "stretch"]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class VolumeGrowth:
    """log l_T per image (Eq. 13) and, on request, the whole curve log l_t for t = 1..T."""

    scores: np.ndarray  # (B,) float64, log volume growth after n_steps; higher = easier to reproduce
    curve: np.ndarray | None = None  # (B, n_steps) float64, log l_t after each step


def sort_by_stretch(axes: torch.Tensor) -> torch.Tensor:
    """The axes (B, N, D) of each image in descending order of length (Algorithm 1, line 11)."""
    order = axes.norm(dim=-1).argsort(dim=-1, descending=True, stable=True)
    return torch.take_along_dim(axes, order[..., None], dim=1)


def gram_schmidt(axes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormalise the N axes (B, N, D) of each image in order (Gram-Schmidt, projections done twice).

    Returns the orthonormal axes (B, N, D) and the length of each axis after removing its components along
    the earlier ones (B, N): the diagonal of R in axes^T = Q R, whose product is the parallelepiped's volume.
    """
    unit_axes = torch.empty_like(axes)
    lengths = torch.empty(axes.shape[:2], dtype=axes.dtype, device=axes.device)
    for k in range(axes.shape[1]):
        v = axes[:, k]
        earlier = unit_axes[:, :k]  # (B, k, D)
        for _ in range(2):  # a second pass removes what rounding left of the earlier directions
            v = v - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", earlier, v), earlier)
        lengths[:, k] = v.norm(dim=-1)
        unit_axes[:, k] = v / lengths[:, k, None]
    return unit_axes, lengths


def initial_axes(n_images: int, n_axes: int, dim: int, *, seed: int, first_index: int = 0) -> torch.Tensor:
    """Random orthonormal axes (n_images, n_axes, dim) (Algorithm 1, lines 3-4).

    Image i draws its Gaussian directions from a generator seeded with seed + first_index + i, so an image's
    axes do not depend on the batch it is in.
    """
    gaussians = torch.empty(n_images, n_axes, dim, dtype=torch.float64)
    for i in range(n_images):
        generator = torch.Generator().manual_seed(seed + first_index + i)
        gaussians[i] = torch.randn(n_axes, dim, generator=generator, dtype=torch.float64)
    return gram_schmidt(gaussians)[0]


def inverse_ddim_scheduler(
    scheduler_config: Mapping[str, Any], num_inference_steps: int | None
) -> DDIMInverseScheduler:
    """The probability-flow ODE towards noise on the checkpoint's noise schedule, starting at abar = 1.

    Clipping of the predicted clean image is switched off: it would bend the flow near the pixel range's
    edges and distort the finite differences.
    """
    scheduler = DDIMInverseScheduler.from_config(
        dict(scheduler_config),
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        steps_offset=0,
    )
    # float64 noise levels: the axes' stretches are small differences of nearly equal numbers
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.initial_alpha_cumprod = scheduler.initial_alpha_cumprod.double()
    scheduler.set_timesteps(num_inference_steps or scheduler.config.num_train_timesteps)
    return scheduler


def stretch_log(axes: torch.Tensor, measure: Measure) -> tuple[torch.Tensor, torch.Tensor]:
    """Log growth of the axes (B, N, D) over one step, and the re-orthonormalised axes (Alg. 1, lines 10-12)."""
    ordered = sort_by_stretch(axes)
    unit_axes, orthogonal_lengths = gram_schmidt(ordered)
    lengths = orthogonal_lengths if measure == "volume" else ordered.norm(dim=-1)
    return lengths.log().sum(dim=-1), unit_axes


@torch.no_grad()
def volume_growth(
    unet: torch.nn.Module,
    scheduler_config: Mapping[str, Any],
    images: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    *,
    n_axes: int = 1,
    sigma: float = 0.05,
    n_steps: int = 1,
    num_inference_steps: int | None = None,
    measure: Measure = "volume",
    seed: int = 0,
    first_index: int = 0,
    return_curve: bool = False,
) -> VolumeGrowth:
    """Log volume growth rate log l_T of each image (Hasegawa and Yasuda, Algorithm 1 / Eq. 13).

    images: (B, C, H, W) in [-1, 1]; class_labels: (B,) for a class-conditional UNet, else None.
    The centre and the N axis ends of all B images go through the UNet together, one call of B (N + 1)
    images per step. `num_inference_steps` sets the ODE grid (default: every training timestep); `n_steps`
    of its steps are taken. `first_index` is the global index of images[0] (it seeds the axes).
    """
    n_images, dim = images.shape[0], images[0].numel()
    if not 1 <= n_axes <= dim:
        raise InvalidInput(f"n_axes must be between 1 and the image dimension {dim}, got {n_axes}")
    scheduler = inverse_ddim_scheduler(scheduler_config, num_inference_steps)
    if not 1 <= n_steps <= len(scheduler.timesteps):
        raise InvalidInput(f"n_steps must be between 1 and {len(scheduler.timesteps)}, got {n_steps}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    parameter = next(unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    centre = images.to(device=device, dtype=torch.float64).reshape(n_images, 1, dim)
    axes = initial_axes(n_images, n_axes, dim, seed=seed, first_index=first_index).to(device)
    labels = None if class_labels is None else class_labels.to(device).repeat_interleave(n_axes + 1)
    log_growth = torch.zeros(n_images, dtype=torch.float64, device=device)
    curve = []
    for timestep in scheduler.timesteps[:n_steps]:
        points = torch.cat([centre, centre + sigma * axes], dim=1)  # (B, N + 1, D): Alg. 1, lines 4 and 13
        batch = points.reshape(n_images * (n_axes + 1), *images.shape[1:]).to(dtype)
        eps = unet(batch, timestep.to(device), class_labels=labels).sample
        moved = scheduler.step(eps.double(), int(timestep), batch.double(), return_dict=False)[0]  # Eq. 8, l. 6-7
        moved = moved.reshape(n_images, n_axes + 1, dim)
        centre = moved[:, :1]
        step_log, axes = stretch_log((moved[:, 1:] - centre) / sigma, measure)
        log_growth = log_growth + step_log  # Eq. 13 in log space, Alg. 1 lines 8-10
        curve.append(log_growth)
    return VolumeGrowth(
        scores=log_growth.cpu().numpy(),
        curve=torch.stack(curve, dim=1).cpu().numpy() if return_curve else None,
    )


def uint8_to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, C) as floats (B, C, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def volume_growth_dataset(
    unet: torch.nn.Module,
    scheduler_config: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    first_index: int = 0,
    progress: ProgressFn | None = None,
    **options: Any,
) -> VolumeGrowth:
    """`volume_growth` of every image of a uint8 (N, H, W, C) array, in batches, with progress(done, total).

    `options` are volume_growth's keyword arguments (n_axes, sigma, n_steps, return_curve, ...). The scores
    do not depend on batch_size. `first_index` is the global index of images[0] (the array may be one chunk
    of a larger set: image i's axes come from seed + first_index + i). `progress` is called after every
    batch (it may raise to cancel).
    """
    n_images = images.shape[0]
    parts: list[VolumeGrowth] = []
    for start in range(0, n_images, batch_size):
        stop = min(start + batch_size, n_images)
        batch_labels = None if labels is None else torch.from_numpy(np.asarray(labels[start:stop], dtype=np.int64))
        parts.append(
            volume_growth(
                unet,
                scheduler_config,
                uint8_to_model_range(images[start:stop]),
                batch_labels,
                first_index=first_index + start,
                **options,
            )
        )
        if progress is not None:
            progress(stop, n_images)
    return VolumeGrowth(
        scores=np.concatenate([p.scores for p in parts]) if parts else np.zeros(0),
        curve=np.concatenate([p.curve for p in parts]) if parts and parts[0].curve is not None else None,
    )
