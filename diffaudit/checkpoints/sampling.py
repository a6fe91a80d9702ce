"""diffaudit's own sampling loop: one loop for every scheduler.

Sample i depends only on (seed + i): its initial noise and the noise of every stochastic step
come from its own torch.Generator seeded seed + i (diffusers' randn_tensor draws one tensor
per generator when given a list), so results do not depend on the batch size or on where
batches start. The generators live on the CPU, so the noise is also the same on every device.

An optional per-step hook (`StepGuidance`, e.g. diffaudit.guidance.LowDensityGuidance) sees each
step's model output between the UNet call and scheduler.step: it may replace the output and
return a shift added to the scheduler's x_{t-1}. Without a hook the loop is the plain sampler.

`check_cancelled`, when given, is called before every denoising step and stops sampling by raising
(a stage passes its context's check, which raises the pipeline's Cancelled), so a cancelled job stops
within one step, not one batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from diffaudit.checkpoints.schedulers import Scheduler


class StepGuidance(Protocol):
    """A per-step hook of the sampling loop: returns (model output to use, shift added to x_{t-1} or None)."""

    def __call__(
        self,
        scheduler: Scheduler,
        model_input: torch.Tensor,
        t: torch.Tensor,
        model_output: torch.Tensor,
        class_labels: torch.Tensor | None,
        is_last: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def class_labels_for(n: int, num_classes: int | None, class_label: int | None) -> np.ndarray | None:
    """The class label of each of n samples: one class, or i % num_classes; None for unconditional models."""
    if num_classes is None:
        if class_label is not None:
            raise ValueError("class_label is set but the checkpoint is unconditional (no num_class_embeds)")
        return None
    if class_label is None:
        return np.arange(n, dtype=np.int64) % num_classes
    if not 0 <= class_label < num_classes:
        raise ValueError(f"class_label {class_label} is out of range: the checkpoint has {num_classes} classes")
    return np.full(n, class_label, dtype=np.int64)


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """Model-space images (N, C, H, W) in [-1, 1] -> uint8 NHWC in [0, 255], rounded."""
    pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def denoise(
    unet: UNet2DModel,
    scheduler: Scheduler,
    *,
    seeds: list[int],
    steps: int,
    class_labels: torch.Tensor | None,
    device: torch.device,
    guidance: StepGuidance | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One batch through the reverse process, sample j driven by a generator seeded seeds[j].

    guidance: called at every step between the UNet and scheduler.step (is_last tells it the final step).
    check_cancelled: called before every step; it raises to stop sampling.
    """
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    size = unet.config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    shape = (len(seeds), unet.config["in_channels"], height, width)
    scheduler.set_timesteps(steps, device=device)
    x = randn_tensor(shape, generator=generators, device=device, dtype=unet.dtype) * scheduler.init_noise_sigma
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    step_options = {"generator": generators} if stochastic else {}
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if check_cancelled is not None:
            check_cancelled()
        model_input = scheduler.scale_model_input(x, t)
        model_output = unet(model_input, t, class_labels=class_labels).sample
        shift = None
        if guidance is not None:
            is_last = i == len(timesteps) - 1
            model_output, shift = guidance(scheduler, model_input, t, model_output, class_labels, is_last)
        x = scheduler.step(model_output, t, x, **step_options).prev_sample
        if shift is not None:
            x = x + shift
    return x


def sample_batches(
    unet: UNet2DModel,
    scheduler: Scheduler,
    *,
    n: int,
    steps: int,
    seed: int,
    batch_size: int,
    class_labels: np.ndarray | None,
    device: torch.device,
    start: int = 0,
    guidance: StepGuidance | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Samples start..n-1 in batches: yields (index of the batch's first sample, uint8 NHWC images).

    guidance: a per-step hook (see `denoise`); it leaves inference mode itself if it needs gradients.
    check_cancelled: called before every denoising step; it raises to stop sampling.
    """
    for first in range(start, n, batch_size):
        count = min(batch_size, n - first)
        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels[first : first + count], dtype=torch.long, device=device)
        with torch.inference_mode():
            x = denoise(
                unet,
                scheduler,
                seeds=[seed + i for i in range(first, first + count)],
                steps=steps,
                class_labels=labels,
                device=device,
                guidance=guidance,
                check_cancelled=check_cancelled,
            )
        yield first, to_uint8_images(x)
