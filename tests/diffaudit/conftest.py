"""Tiny diffusers checkpoints for the checkpoint, sampling and stage tests (built, never downloaded).

Tiny models: 8x8 grey images (TINY_SIZE), a DDPM schedule of 100 training steps (TINY_TRAIN_STEPS).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.pipelines.ddpm.pipeline_ddpm import DDPMPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

TINY_SIZE = 8
TINY_TRAIN_STEPS = 100


def tiny_unet(num_class_embeds: int | None = None, seed: int = 0) -> UNet2DModel:
    """A ~40k-parameter UNet2DModel on 8x8 grey images with seeded random weights."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=TINY_SIZE,
        in_channels=1,
        out_channels=1,
        num_class_embeds=num_class_embeds,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def tiny_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TINY_TRAIN_STEPS)


@pytest.fixture
def make_tiny_unet() -> Callable[..., UNet2DModel]:
    """make(num_class_embeds=None, seed=0): the tiny UNet the tiny checkpoints are saved from."""
    return tiny_unet


@pytest.fixture
def make_tiny_checkpoint() -> Callable[..., Path]:
    """make(folder, num_class_embeds=None, flat=False) saves a tiny checkpoint (pipeline or flat layout)."""

    def make(folder: Path, num_class_embeds: int | None = None, flat: bool = False) -> Path:
        unet, scheduler = tiny_unet(num_class_embeds), tiny_scheduler()
        if flat:
            unet.save_pretrained(folder, safe_serialization=True)
            scheduler.save_pretrained(folder)
        else:
            DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)  # type: ignore[arg-type]
        return folder

    return make
