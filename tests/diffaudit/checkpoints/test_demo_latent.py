"""The digits-latent recipe, stopped after a few steps (the full recipe takes minutes): a latent-unet
checkpoint that validates, keeps its latents at unit scale, is cached, and samples 16x16 digits-shaped images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffaudit.checkpoints import load_checkpoint, make_scheduler, sample_batches, validate_checkpoint_dir
from diffaudit.demo import all_digits, to_model_space
from diffaudit.demo_latent import ensure_latent_demo_model

CPU = torch.device("cpu")


def test_the_recipe_makes_a_cached_latent_checkpoint(tmp_path: Path) -> None:
    folder = ensure_latent_demo_model(tmp_path, progress=False, autoencoder_steps=20, unet_steps=10)
    modified = folder.stat().st_mtime_ns
    assert ensure_latent_demo_model(tmp_path, progress=False, autoencoder_steps=20, unet_steps=10) == folder
    assert folder.stat().st_mtime_ns == modified  # cached, not retrained
    info = validate_checkpoint_dir(folder)
    assert (info.kind, info.latent_shape, info.image_size, info.num_class_embeds) == ("latent-unet", [2, 8, 8], 16, 10)
    checkpoint = load_checkpoint(folder, CPU)
    vae: Any = checkpoint.autoencoder
    assert vae is not None
    with torch.no_grad():
        latents = vae.encode(to_model_space(all_digits()[0][:256])).latent_dist.mean * vae.config.scaling_factor
    assert 0.8 < float(latents.std()) < 1.2  # scaling_factor = 1 / std of the training latents
    batches = sample_batches(
        checkpoint.denoiser,
        make_scheduler("ddim", checkpoint.scheduler_config),
        n=4,
        steps=2,
        seed=0,
        batch_size=4,
        class_labels=np.arange(4),
        device=CPU,
        autoencoder=checkpoint.autoencoder,
    )
    ((_, drawn),) = list(batches)
    assert drawn.shape == (4, 16, 16, 1) and drawn.dtype == np.uint8
