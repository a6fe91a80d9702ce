"""Built-in demo models, trained by diffaudit itself on the built-in digits (no downloads).

- "digits": a small class-conditional UNet2DModel trained on all 1,797 images of
  load_digits16(); a healthy model for trying the service end to end.
- "digits-overfit": the same architecture trained on 64 fixed images (the first 64 of
  load_digits16(), 4 to 8 of each class; no flips, digits are not flip-symmetric) for as many
  steps, so that it reproduces them: a low-diversity model by construction, used to show IRS
  rejection and memorization scores.

Each is saved as a diffusers pipeline folder (DDPMPipeline.save_pretrained, safetensors) in a
cache folder named for the recipe version, trained only when absent.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.pipelines.ddpm.pipeline_ddpm import DDPMPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from tqdm import tqdm

from diffaudit.datasets.digits import DIGITS_SIZE, load_digits16
from diffaudit.errors import InvalidInput

RECIPE_VERSION = 2  # bump when a recipe or the architecture changes: cached models are then retrained
NUM_DIGIT_CLASSES = 10
OVERFIT_IMAGES = 64
WARMUP_STEPS = 100


def demo_unet(num_class_embeds: int | None = NUM_DIGIT_CLASSES) -> UNet2DModel:
    """The demo architecture: 16x16 grey images, three resolutions, no attention (fast on a CPU)."""
    return UNet2DModel(
        sample_size=DIGITS_SIZE,
        in_channels=1,
        out_channels=1,
        num_class_embeds=num_class_embeds,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def demo_scheduler() -> DDPMScheduler:
    """The training noise schedule: DDPM, 1000 steps, linear betas."""
    return DDPMScheduler(num_train_timesteps=1000)


def all_digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits16()


def first_digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_digits16()
    return images[:OVERFIT_IMAGES], labels[:OVERFIT_IMAGES]


@dataclass(frozen=True)
class DemoRecipe:
    name: str
    description: str
    training_data: Callable[[], tuple[np.ndarray, np.ndarray]]  # uint8 NHWC images, int labels
    train_steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0


DEMO_MODELS: dict[str, DemoRecipe] = {
    "digits": DemoRecipe(
        name="digits",
        description="class-conditional UNet trained on all 1,797 built-in digits (16x16)",
        training_data=all_digits,
        train_steps=1500,
        batch_size=64,
        learning_rate=2e-3,
    ),
    "digits-overfit": DemoRecipe(
        name="digits-overfit",
        description=f"the same UNet trained on the first {OVERFIT_IMAGES} digits only: reproduces them",
        training_data=first_digits,
        train_steps=1500,
        batch_size=64,
        learning_rate=2e-3,
    ),
}


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC in [0, 255] -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def learning_rate_at(step: int, train_steps: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, train_steps - WARMUP_STEPS)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_demo(
    recipe: DemoRecipe, train_steps: int, progress: bool, unet: UNet2DModel | None = None
) -> tuple[UNet2DModel, DDPMScheduler]:
    """Train the demo UNet (or `unet`, e.g. one for other image sizes) with the DDPM noise-prediction loss (Ho et al.
    2020, Eq. 14), deterministically."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    images, labels = recipe.training_data()
    x0_all, labels_all = to_model_space(images), torch.from_numpy(labels).long()
    unet, scheduler = unet or demo_unet(), demo_scheduler()
    desc = f"training demo model {recipe.name!r}"
    train_noise_prediction(
        unet, scheduler, x0_all, labels_all, train_steps, generator, desc,
        batch_size=recipe.batch_size, learning_rate=recipe.learning_rate, progress=progress,
    )  # fmt: skip
    return unet.eval(), scheduler


def train_noise_prediction(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x0_all: torch.Tensor,
    labels_all: torch.Tensor,
    train_steps: int,
    generator: torch.Generator,
    desc: str,
    *,
    batch_size: int,
    learning_rate: float,
    progress: bool,
) -> None:
    """Train `unet` in place on `x0_all` (with class labels) with the DDPM noise-prediction loss (Ho et al. 2020,
    Eq. 14): AdamW, warm-up then cosine decay, batches drawn from `generator`."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    unet.train()
    bar = tqdm(range(train_steps), desc=desc, disable=not progress)
    for step in bar:
        index = torch.randint(len(x0_all), (batch_size,), generator=generator)
        x0, y = x0_all[index], labels_all[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = cast(
            torch.IntTensor, torch.randint(scheduler.config["num_train_timesteps"], (len(x0),), generator=generator)
        )
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, train_steps, learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)


def demo_folder_name(name: str, train_steps: int | None) -> str:
    suffix = f"-steps{train_steps}" if train_steps is not None else ""
    return f"{name}-r{RECIPE_VERSION}{suffix}"


def ensure_demo_model(name: str, cache_dir: Path, progress: bool = True, train_steps: int | None = None) -> Path:
    """The cached pipeline folder of demo model `name`, trained (into a temporary folder, then renamed) if absent."""
    if name not in DEMO_MODELS:
        raise InvalidInput(f"unknown demo model {name!r}; demo models: {sorted(DEMO_MODELS)}")
    recipe = DEMO_MODELS[name]
    target = Path(cache_dir) / demo_folder_name(name, train_steps)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    unet, scheduler = train_demo(recipe, train_steps or recipe.train_steps, progress)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)  # type: ignore[arg-type]  # mypy sees diffusers' dummies
        pipeline.save_pretrained(tmp, safe_serialization=True)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # another process did not finish it first: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def trained_or_test_model(name: str, model_dir: Path, test_model_dir: Path, test_steps: int = 400) -> tuple[Path, str]:
    """The demo model `name` if it is already trained in `model_dir`, else the test suite's shorter-trained one
    (trained now if absent), with a note saying which: for scripts that must not train the full model."""
    if (Path(model_dir) / demo_folder_name(name, None)).is_dir():
        return ensure_demo_model(name, model_dir, progress=False), f"demo model {name} (full recipe)"
    model = ensure_demo_model(name, test_model_dir, progress=False, train_steps=test_steps)
    return model, f"test model {name} (demo recipe stopped after {test_steps} steps; demo model not trained yet)"
