"""alpha-beta guided sampling towards low-density regions (Sehwag et al. Eq. 7, Algorithm 1, App. A.7).

At every step but the last, the guidance direction

    u(x_t) = alpha * Normalize(grad L_g1(x_t, y)) + beta * Normalize(grad L_g2(x_t))

is computed from the guidance classifier (hardness of class y, Eq. 4) and the real/synthetic
discriminator (Eq. 6), each gradient normalised per sample: to unit l2 norm (Algorithm 1's u / ||u||, the
default) or unit l-infinity norm (App. A.4). It enters the sampler:

- DDPM (ancestral): Eq. 7 / Algorithm 1 literally, x_{t-1} = mu + Sigma^{1/2} z + Sigma_theta u, with
  Sigma_theta the variance of the step's noise (fixed or learned), added after the scheduler's step.
- DDIM: Dhariwal and Nichol's classifier guidance for DDIM (their Algorithm 2, App. A.7), eps_hat = eps -
  sqrt(1 - abar_t) u, which moves the deterministic DDIM update by exactly
  c_t u, c_t = sqrt(abar_prev) (1 - abar_t) / sqrt(abar_t) - sqrt(1 - abar_prev) sqrt(1 - abar_t),
  added after the scheduler's step. It is not passed through the noise prediction because diffusers' DDIM
  clips the predicted x_0 (clip_sample, on in DDPM-trained configs): the x_0 shift (1 - abar_t) / sqrt(abar_t) u
  (about 150 u at the first steps) would be clipped while the noise term is not, so the two no longer cancel
  and x_{t-1} moves by about -sqrt(1 - abar_t) u, against the guidance. Dhariwal and Nichol clip the
  unguided x_0 and do not clip after the shift; the post-step shift does the same.
- every other scheduler (PNDM, DPM-Solver, UniPC, DEIS, Euler, Heun, ...; none clips by default): through the
  predicted noise, eps_hat = eps - sqrt(1 - abar_t) u, converted to the checkpoint's prediction type.
  To first order this moves x_{t-1} by the same beta_t u as the DDPM update.

Algorithm 1 applies no guidance at the last step (s = 0); the DDIM variant follows it.

The guidance is the per-step hook (`StepGuidance`) of the project's one sampling loop,
`diffaudit.checkpoints.sampling.sample_batches(..., guidance=LowDensityGuidance(...))`: it receives the model
output and returns the (possibly adjusted) model output and a shift to add to the scheduler's x_{t-1}.
With alpha = beta = 0 it changes nothing, so guided samples equal the baseline ones bit for bit (same
per-sample generators seed + i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffaudit.errors import InvalidInput
from diffaudit.guidance.losses import (
    GradientNorm,
    discriminator_guidance_loss,
    hardness_guidance_loss,
    normalize_gradient,
)
from diffaudit.metrics.density import ClassGaussians
from diffaudit.models.guidance import TimeConditionedCNN

# diffusers' schedulers (Scheduler subclasses) are opaque to mypy: typed as Any here.
Scheduler = Any


@dataclass
class LowDensityGuidance:
    """Sehwag et al.'s alpha-beta guidance (Eq. 7). Gaussians are keyed by the integer timestep they were fitted at.

    classifier / class_gaussians: embedding network and per-timestep class Gaussians of L_g1 (one class when
    the checkpoint is unconditional: the unlabelled hardness). discriminator / discriminator_gaussians: the
    same for L_g2, classes (synthetic, real); may be None when beta = 0. The two networks may be one object.
    """

    classifier: TimeConditionedCNN
    class_gaussians: dict[int, ClassGaussians]
    discriminator: TimeConditionedCNN | None = None
    discriminator_gaussians: dict[int, ClassGaussians] | None = None
    alpha: float = 0.5
    beta: float = 0.5
    tau: float = 1.0
    norm: GradientNorm = "l2"

    def __post_init__(self) -> None:
        if self.beta != 0 and (self.discriminator is None or self.discriminator_gaussians is None):
            raise ValueError("beta > 0 needs a discriminator and its Gaussians")

    @property
    def is_active(self) -> bool:
        return self.alpha != 0 or self.beta != 0

    def direction(self, x_t: torch.Tensor, t: int, labels: torch.Tensor | None) -> torch.Tensor:
        """u = alpha Normalize(grad L_g1(x_t, y)) + beta Normalize(grad L_g2(x_t)) (Sehwag et al. Algorithm 1)."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            timesteps = torch.full((len(x),), t, device=x.device, dtype=torch.int64)
            terms = []
            if self.alpha != 0:
                hardness = (
                    self.class_gaussians[t]
                    .to(x.device, x.dtype)
                    .hardness_all_classes(self.classifier.embed(x, timesteps))
                )
                terms.append((self.alpha, hardness_guidance_loss(hardness, labels, self.tau)))
            if self.beta != 0:
                assert self.discriminator is not None and self.discriminator_gaussians is not None
                hardness = (
                    self.discriminator_gaussians[t]
                    .to(x.device, x.dtype)
                    .hardness_all_classes(self.discriminator.embed(x, timesteps))
                )
                terms.append((self.beta, discriminator_guidance_loss(hardness, self.tau)))
            u = torch.zeros_like(x)
            for weight, loss in terms:
                (gradient,) = torch.autograd.grad(loss.sum(), x)  # samples are independent: grad of sum = per-sample
                u = u + weight * normalize_gradient(gradient, self.norm)
        return u.detach()

    def __call__(
        self,
        scheduler: Scheduler,
        model_input: torch.Tensor,
        t: torch.Tensor,
        model_output: torch.Tensor,
        class_labels: torch.Tensor | None,
        is_last: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_last or not self.is_active:  # Algorithm 1: s = 0 at the last step
            return model_output, None
        u = self.direction(model_input, timestep_index(t), class_labels)
        if isinstance(scheduler, DDPMScheduler):
            # Sehwag et al. Eq. 7: + alpha Sigma grad* L_g1 + beta Sigma grad* L_g2, after mu + Sigma^{1/2} z
            return model_output, ddpm_step_variance(scheduler, t, model_output, model_input) * u
        if isinstance(scheduler, DDIMScheduler):
            return model_output, ddim_shift_coefficient(scheduler, t) * u
        return shift_noise_prediction(scheduler, t, model_output, u), None


def timestep_index(t: torch.Tensor | float) -> int:
    """The integer training timestep nearest to a scheduler timestep (some solvers use fractional ones)."""
    return round(float(t))


def ddpm_step_variance(
    scheduler: Scheduler, t: torch.Tensor, model_output: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """Sigma_theta(x_t, t): the variance of the noise DDPMScheduler.step adds at t (a scalar, or per pixel)."""
    variance_type = scheduler.config.variance_type
    predicted_variance = None
    if model_output.shape[1] == 2 * sample.shape[1] and variance_type in ("learned", "learned_range"):
        predicted_variance = model_output[:, sample.shape[1] :]
    value = scheduler._get_variance(t, predicted_variance=predicted_variance)
    # DDPMScheduler.step scales its noise by: value (fixed_small_log, a std), exp(value / 2) (learned_range,
    # a log-variance), value ** 0.5 otherwise (a variance).
    if variance_type == "fixed_small_log":
        return value**2
    if variance_type == "learned_range":
        return torch.exp(value)
    if variance_type in ("fixed_small", "fixed_large", "learned"):
        return value
    raise InvalidInput(f"DDPM variance_type {variance_type!r} is not supported by guided sampling")


def ddim_shift_coefficient(scheduler: Scheduler, t: torch.Tensor) -> torch.Tensor:
    """c_t such that eps_hat = eps - sqrt(1 - abar_t) u moves the DDIM (eta = 0) x_{t-1} by c_t u.

    x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat with x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) /
    sqrt(abar_t) (Song et al. 2021, Eq. 12), and the previous timestep as DDIMScheduler.step takes it.
    """
    index = timestep_index(t)
    previous = index - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar = scheduler.alphas_cumprod[index]
    abar_prev = scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
    return abar_prev.sqrt() * (1 - abar) / abar.sqrt() - (1 - abar_prev).sqrt() * (1 - abar).sqrt()


def shift_noise_prediction(
    scheduler: Scheduler, t: torch.Tensor, model_output: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """The model output whose implied noise is eps_hat = eps - sqrt(1 - abar_t) u (Dhariwal and Nichol, Alg. 2).

    For v- and x0-prediction the same change of eps at fixed x_t is expressed in the model's output:
    v = sqrt(abar) eps - sqrt(1 - abar) x0 moves by -sqrt(1 - abar) / sqrt(abar) u; x0 moves by
    (1 - abar) / sqrt(abar) u. Learned-variance channels are left unchanged.
    """
    abar = scheduler.alphas_cumprod[timestep_index(t)].to(model_output.device, model_output.dtype)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        change = -(1 - abar).sqrt() * u
    elif prediction_type == "v_prediction":
        change = -(1 - abar).sqrt() / abar.sqrt() * u
    elif prediction_type == "sample":
        change = (1 - abar) / abar.sqrt() * u
    else:
        raise InvalidInput(f"prediction_type {prediction_type!r} is not supported by guided sampling")
    channels = u.shape[1]
    return torch.cat([model_output[:, :channels] + change, model_output[:, channels:]], dim=1)


def guidance_timesteps(scheduler: Scheduler, steps: int) -> list[int]:
    """The integer timesteps at which a sampler with `steps` steps calls the guidance (Gaussians to fit)."""
    scheduler.set_timesteps(steps)
    return sorted({timestep_index(t) for t in scheduler.timesteps})
