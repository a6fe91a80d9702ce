"""Tiny checkpoints of every kind, built from configs with seeded random weights and saved with save_pretrained.

Images are 16x16 grey (IMAGE_SIZE) like the built-in digits; the autoencoders halve them once, to
2-channel 8x8 latents (LATENT_CHANNELS, LATENT_SIZE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vq_model import VQModel
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.pipelines.deprecated.latent_diffusion_uncond.pipeline_latent_diffusion_uncond import LDMPipeline
from diffusers.pipelines.dit.pipeline_dit import DiTPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from diffaudit.demo_latent import latent_dit

IMAGE_SIZE, IMAGE_CHANNELS = 16, 1
LATENT_SIZE, LATENT_CHANNELS = 8, 2
TRAIN_STEPS = 100
AUTOENCODER_OPTIONS: dict[str, Any] = {
    "in_channels": IMAGE_CHANNELS,
    "out_channels": IMAGE_CHANNELS,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 8],
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 4,
    "sample_size": IMAGE_SIZE,
}


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**AUTOENCODER_OPTIONS, scaling_factor=0.5).eval()


def tiny_vqvae(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(**AUTOENCODER_OPTIONS, num_vq_embeddings=16, scaling_factor=0.8).eval()


def tiny_latent_unet(seed: int = 0, num_class_embeds: int | None = None) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_class_embeds=num_class_embeds,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def tiny_dit(seed: int = 0, num_classes: int = 10, legacy: bool = False) -> torch.nn.Module:
    """A one-layer DiT with learned sigma (out_channels = 2 x in_channels); legacy: the Transformer2DModel DiTPipeline
    saved."""
    torch.manual_seed(seed)
    return latent_dit(num_classes, legacy=legacy).eval()


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn at random (DiT zero-initialises its output layers, which would hide its conditioning)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def save_ldm(folder: Path, autoencoder: str = "vqvae", scheduler: Any = None) -> Path:
    """An LDMPipeline folder (unet/, vqvae/, scheduler/); autoencoder="vae": an AutoencoderKL in vae/ instead."""
    scheduler = scheduler or DDIMScheduler(num_train_timesteps=TRAIN_STEPS)
    unet = tiny_latent_unet()
    if autoencoder == "vqvae":
        LDMPipeline(vqvae=tiny_vqvae(), unet=unet, scheduler=scheduler).save_pretrained(folder)
    else:
        unet.save_pretrained(folder / "unet")
        tiny_vae().save_pretrained(folder / "vae")
        scheduler.save_pretrained(folder / "scheduler")
    return folder


def save_dit(folder: Path, num_classes: int = 10, legacy: bool = False, id2label: dict[int, str] | None = None) -> Path:
    """A DiTPipeline folder (transformer/, vae/, scheduler/, model_index.json with id2label when given)."""
    dit = randomise(tiny_dit(num_classes=num_classes, legacy=legacy), seed=1)
    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_STEPS)
    pipeline = DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=scheduler, id2label=id2label)  # type: ignore[arg-type]
    pipeline.save_pretrained(folder)
    return folder


def save_adm(folder: Path) -> Path:
    """A pixel UNet2DModel predicting a learned variance (out_channels = 2 x in_channels), ADM-style."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=IMAGE_CHANNELS,
        out_channels=2 * IMAGE_CHANNELS,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=TRAIN_STEPS, variance_type="learned_range").save_pretrained(folder / "scheduler")
    return folder
