"""Low-density guided sampling (Sehwag et al.): guidance networks, hardness during sampling, losses, sampler hook."""

from diffaudit.guidance.hardness import fit_timestep_gaussians
from diffaudit.guidance.losses import discriminator_guidance_loss, hardness_guidance_loss, normalize_gradient
from diffaudit.guidance.sampling import LowDensityGuidance, guidance_timesteps
from diffaudit.models.guidance import (
    REAL,
    SYNTHETIC,
    TimeConditionedCNN,
    alphas_cumprod_from_config,
    images_to_model_range,
    network_from_bytes,
    network_to_bytes,
    train_discriminator,
    train_guidance_classifier,
)

__all__ = [
    "REAL",
    "SYNTHETIC",
    "LowDensityGuidance",
    "TimeConditionedCNN",
    "alphas_cumprod_from_config",
    "discriminator_guidance_loss",
    "fit_timestep_gaussians",
    "guidance_timesteps",
    "hardness_guidance_loss",
    "images_to_model_range",
    "network_from_bytes",
    "network_to_bytes",
    "normalize_gradient",
    "train_discriminator",
    "train_guidance_classifier",
]
