"""diffaudit's own sampling loop: one loop for every scheduler and every kind of checkpoint.

Sample i depends only on (seed + i): its initial noise and the noise of every stochastic step
come from its own torch.Generator seeded seed + i (diffusers' randn_tensor draws one tensor
per generator when given a list), so results do not depend on the batch size or on where
batches start. The generators live on the CPU, so the noise is also the same on every device.

The denoiser (`Denoiser`) is a UNet2DModel or a DiT, each called with its own timestep and class
convention. Its output is reduced to the noise prediction the scheduler steps with: a model that also
predicts its variance (ADM's learned variance, DiT's learned sigma: out_channels = 2 x in_channels) has
its first in_channels used, as diffusers' pipelines do, except by DDPM with a learned variance_type,
which reads the variance from the second half itself. With `guidance_scale` > 1 the noise prediction is
classifier-free guided towards the sample's class against the model's null class (DiTPipeline's
convention). A latent model's latents are decoded through its autoencoder batch by batch
(`decode_latents`, as LDMPipeline and DiTPipeline do).

An optional per-step hook (`StepGuidance`, e.g. diffaudit.guidance.LowDensityGuidance) sees each
step's model output (as the scheduler will read it) between the model call and scheduler.step: it may replace it and
return a shift added to the scheduler's x_{t-1}. Without a hook the loop is the plain sampler.

`check_cancelled`, when given, is called before every denoising step and stops sampling by raising
(a stage passes its context's check, which raises the pipeline's Cancelled), so a cancelled job stops
within one step, not one batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffaudit.checkpoints.schedulers import Scheduler

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
DIT_CLASSES = (DiTTransformer2DModel, Transformer2DModel)


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


@dataclass(frozen=True)
class Denoiser:
    """The network of the reverse process (UNet2DModel or DiT) with its call conventions."""

    network: torch.nn.Module
    channels: int  # of what it denoises (image or latent)
    sample_size: int
    null_class: int | None  # the label of classifier-free guidance's unconditional input

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.network.dtype  # type: ignore[assignment]  # diffusers' ModelMixin.dtype
        return dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The network's whole output (noise prediction, and the variance of a model that learns it)."""
        if not isinstance(self.network, DIT_CLASSES):  # UNet2DModel's convention
            return self.network(x, t, class_labels=class_labels).sample
        timesteps = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # DiTPipeline's convention
        return self.network(x, timestep=timesteps, class_labels=class_labels).sample


def as_denoiser(network: torch.nn.Module | Denoiser) -> Denoiser:
    """The denoiser interface over a DiT (DiTTransformer2DModel, Transformer2DModel), or a UNet2DModel (any other)."""
    if isinstance(network, Denoiser):
        return network
    config: Any = network.config
    size = config["sample_size"]
    null_class = config["num_embeds_ada_norm"] if isinstance(network, DIT_CLASSES) else None
    return Denoiser(network, config["in_channels"], size if isinstance(size, int) else size[0], null_class)


def reads_learned_variance(scheduler: Scheduler) -> bool:
    """DDPM with a learned variance_type splits the model output into noise and variance itself."""
    return isinstance(scheduler, DDPMScheduler) and scheduler.config.variance_type in LEARNED_VARIANCE_TYPES


def guided_output(output: torch.Tensor, channels: int, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance of a (conditional; unconditional) batch's noise prediction, variance kept conditional.

    Ho and Salimans, Classifier-Free Diffusion Guidance, arXiv:2207.12598, Eq. 6:
    eps = eps(x, null) + w (eps(x, c) - eps(x, null)), with w = guidance_scale as DiTPipeline counts it.
    """
    conditional, unconditional = output.chunk(2)
    eps = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
    return torch.cat([eps, conditional[:, channels:]], dim=1)


def model_output(
    denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None, guidance_scale: float
) -> torch.Tensor:
    """The denoiser's output at x, classifier-free guided when guidance_scale > 1."""
    if guidance_scale <= 1:
        return denoiser(x, t, class_labels)
    if class_labels is None or denoiser.null_class is None:
        raise ValueError("classifier-free guidance needs a class-conditional model with a null class")
    null = torch.full_like(class_labels, denoiser.null_class)
    output = denoiser(torch.cat([x, x]), t, torch.cat([class_labels, null]))
    return guided_output(output, denoiser.channels, guidance_scale)


def decode_latents(autoencoder: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1]: latents / scaling_factor through the decoder (a VQModel quantises first).

    As LDMPipeline (VQModel) and DiTPipeline (AutoencoderKL) decode.
    """
    return autoencoder.decode(latents / autoencoder.config.scaling_factor).sample


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """Model-space images (N, C, H, W) in [-1, 1] -> uint8 NHWC in [0, 255], rounded."""
    pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def denoise(
    model: torch.nn.Module | Denoiser,
    scheduler: Scheduler,
    *,
    seeds: list[int],
    steps: int,
    class_labels: torch.Tensor | None,
    device: torch.device,
    guidance: StepGuidance | None = None,
    guidance_scale: float = 1.0,
    check_cancelled: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One batch through the reverse process, sample j driven by a generator seeded seeds[j]; returns x_0.

    model: the denoiser network (UNet2DModel or DiT) or its Denoiser.
    guidance: called at every step between the model and scheduler.step (is_last tells it the final step).
    guidance_scale: classifier-free guidance's scale; 1 is none.
    check_cancelled: called before every step; it raises to stop sampling.
    """
    denoiser = as_denoiser(model)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    size = denoiser.sample_size
    shape = (len(seeds), denoiser.channels, size, size)
    scheduler.set_timesteps(steps, device=device)
    x = randn_tensor(shape, generator=generators, device=device, dtype=denoiser.dtype) * scheduler.init_noise_sigma
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    step_options = {"generator": generators} if stochastic else {}
    keep_variance = reads_learned_variance(scheduler)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if check_cancelled is not None:
            check_cancelled()
        model_input = scheduler.scale_model_input(x, t)
        output = model_output(denoiser, model_input, t, class_labels, guidance_scale)
        if not keep_variance:
            output = output[:, : denoiser.channels]
        shift = None
        if guidance is not None:
            is_last = i == len(timesteps) - 1
            output, shift = guidance(scheduler, model_input, t, output, class_labels, is_last)
        x = scheduler.step(output, t, x, **step_options).prev_sample
        if shift is not None:
            x = x + shift
    return x


def sample_batches(
    model: torch.nn.Module | Denoiser,
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
    guidance_scale: float = 1.0,
    autoencoder: Any = None,
    check_cancelled: Callable[[], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Samples start..n-1 in batches: yields (index of the batch's first sample, uint8 NHWC images).

    model: the denoiser network (UNet2DModel or DiT) or its Denoiser.
    guidance: a per-step hook (see `denoise`); it leaves inference mode itself if it needs gradients.
    guidance_scale: classifier-free guidance's scale (1: none; > 1 needs a model with a null class).
    autoencoder: a latent model's AutoencoderKL or VQModel; each batch's latents are decoded through it.
    check_cancelled: called before every denoising step; it raises to stop sampling.
    """
    denoiser = as_denoiser(model)
    for first in range(start, n, batch_size):
        count = min(batch_size, n - first)
        labels = None
        if class_labels is not None:
            labels = torch.as_tensor(class_labels[first : first + count], dtype=torch.long, device=device)
        with torch.inference_mode():
            x = denoise(
                denoiser,
                scheduler,
                seeds=[seed + i for i in range(first, first + count)],
                steps=steps,
                class_labels=labels,
                device=device,
                guidance=guidance,
                guidance_scale=guidance_scale,
                check_cancelled=check_cancelled,
            )
            if autoencoder is not None:
                x = decode_latents(autoencoder, x)
        yield first, to_uint8_images(x)
