"""The latent demo model `digits-latent`, trained by diffaudit itself on the built-in digits (no downloads).

A small AutoencoderKL (16x16 grey digits <-> 2-channel 8x8 latents) is trained first with a
reconstruction loss and a small KL term; its scaling_factor is then set to 1 / std of the training
latents, as the LDM paper does (Rombach et al., arXiv:2112.10752, Sec. 4.3.2 / App. G); then a
class-conditional latent UNet2DModel is trained on the scaled latents with the DDPM loss (Ho et al.
2020, Eq. 14). Saved as a diffusers folder (unet/, vae/, scheduler/, safetensors), the `latent-unet`
kind of docs/checkpoints.md, in a cache folder named for the recipe version, trained only when absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from tqdm import tqdm

from diffaudit.datasets.digits import DIGITS_SIZE
from diffaudit.demo import (
    NUM_DIGIT_CLASSES,
    all_digits,
    demo_scheduler,
    learning_rate_at,
    to_model_space,
    train_noise_prediction,
)

LATENT_RECIPE_VERSION = 1  # bump when the recipe or the architecture changes: cached models are then retrained
LATENT_CHANNELS = 2
LATENT_SIZE = DIGITS_SIZE // 2
AUTOENCODER_STEPS = 800
UNET_STEPS = 1500
BATCH_SIZE = 64
KL_WEIGHT = 1e-4
AUTOENCODER_LEARNING_RATE = 2e-3
UNET_LEARNING_RATE = 2e-3


def latent_demo_autoencoder() -> AutoencoderKL:
    """16x16 grey images <-> 2 x 8 x 8 latents (one downsampling)."""
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=DIGITS_SIZE,
    )


def latent_demo_unet(num_class_embeds: int | None = NUM_DIGIT_CLASSES) -> UNet2DModel:
    """The denoiser of the 8x8 latents (class-conditional unless num_class_embeds is None): two resolutions, no
    attention."""
    return UNet2DModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_class_embeds=num_class_embeds,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


def latent_dit(
    num_classes: int,
    num_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 8,
    legacy: bool = False,
) -> torch.nn.Module:
    """A DiT on the 8x8 latents with learned sigma (out_channels = 2 x in_channels), patch size 2, a null class
    (label num_classes); legacy: the Transformer2DModel older DiTPipelines saved. Used by tests and bench/."""
    dit_class = Transformer2DModel if legacy else DiTTransformer2DModel
    dit: torch.nn.Module = dit_class(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
    )
    return dit


def train_autoencoder(x0_all: torch.Tensor, steps: int, generator: torch.Generator, progress: bool) -> AutoencoderKL:
    """Reconstruction (MSE) plus KL_WEIGHT x the KL divergence to N(0, I) (Kingma and Welling, arXiv:1312.6114)."""
    vae = latent_demo_autoencoder()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=AUTOENCODER_LEARNING_RATE)
    vae.train()
    for step in tqdm(range(steps), desc="training the digits-latent autoencoder", disable=not progress):
        x0 = x0_all[torch.randint(len(x0_all), (BATCH_SIZE,), generator=generator)]
        posterior = vae.encode(x0).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(z).sample, x0) + KL_WEIGHT * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, steps, AUTOENCODER_LEARNING_RATE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vae.eval()


def encode_scaled(vae: AutoencoderKL, x0_all: torch.Tensor) -> torch.Tensor:
    """The training images' latent means, with scaling_factor set to 1 / their std (arXiv:2112.10752, App. G)."""
    with torch.no_grad():
        latents = torch.cat([vae.encode(x).latent_dist.mean for x in x0_all.split(256)])
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    return latents * scaling_factor


def train_latent_unet(
    latents: torch.Tensor, labels: torch.Tensor, steps: int, generator: torch.Generator, progress: bool
) -> tuple[UNet2DModel, DDPMScheduler]:
    """The latent UNet with the DDPM noise-prediction loss (Ho et al. 2020, Eq. 14)."""
    unet, scheduler = latent_demo_unet(), demo_scheduler()
    desc = "training the digits-latent UNet"
    train_noise_prediction(
        unet, scheduler, latents, labels, steps, generator, desc,
        batch_size=BATCH_SIZE, learning_rate=UNET_LEARNING_RATE, progress=progress,
    )  # fmt: skip
    return unet.eval(), scheduler


def ensure_latent_demo_model(
    cache_dir: Path, progress: bool = True, autoencoder_steps: int = AUTOENCODER_STEPS, unet_steps: int = UNET_STEPS
) -> Path:
    """The cached `digits-latent` folder, trained (into a temporary folder, then renamed) if absent."""
    steps = (
        ""
        if (autoencoder_steps, unet_steps) == (AUTOENCODER_STEPS, UNET_STEPS)
        else f"-{autoencoder_steps}-{unet_steps}"
    )
    target = Path(cache_dir) / f"digits-latent-r{LATENT_RECIPE_VERSION}{steps}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images, labels = all_digits()
    x0_all = to_model_space(images)
    vae = train_autoencoder(x0_all, autoencoder_steps, generator, progress)
    latents = encode_scaled(vae, x0_all)
    unet, scheduler = train_latent_unet(latents, torch.from_numpy(labels).long(), unet_steps, generator, progress)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # another process did not finish it first: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
