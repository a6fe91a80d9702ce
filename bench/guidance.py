"""Benchmark: time per sampling step of alpha-beta guided sampling (Sehwag et al. Eq. 7) versus unguided.

Model: the demo architecture (diffaudit.demo.demo_unet: class-conditional UNet2DModel, 16x16x1,
block_out_channels (32, 64, 64), layers_per_block 1, 10 classes) with seeded random weights (time does not
depend on them) and the demo's noise schedule. Guidance: the service's own networks (TimeConditionedCNN with
its default size, a 10-class classifier and a real/synthetic discriminator, random weights) with
identity-precision Gaussians at every timestep, alpha = beta = 0.5. Same scheduler, steps, batch and seeds
for both; both runs are diffaudit.checkpoints.sampling.denoise, the project's one loop (guided: with the hook).

Printed, measured in one run: seconds per step of each (best of REPEATS, after a warm-up), their ratio
(target <= 1.5), for DDPM (Eq. 7) and DDIM (noise-prediction shift); and the one-off cost of fitting the
per-timestep class means on the digits (App. A.1), which a job pays once per (dataset, schedule, steps).

Threads, set deliberately: torch uses 1 thread (the machine has 2 cores shared with other agents; a single
thread keeps the two timings comparable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from diffaudit.checkpoints.sampling import denoise
from diffaudit.checkpoints.schedulers import make_scheduler
from diffaudit.datasets.digits import load_digits16
from diffaudit.demo import demo_scheduler, demo_unet
from diffaudit.guidance.hardness import fit_timestep_gaussians
from diffaudit.guidance.sampling import LowDensityGuidance, guidance_timesteps
from diffaudit.metrics.density import ClassGaussians
from diffaudit.models.guidance import TimeConditionedCNN, images_to_model_range

TORCH_THREADS = 1
BATCH = 32
STEPS = 20
REPEATS = 3
CPU = torch.device("cpu")


def best_seconds(work: Callable[[], Any]) -> float:
    """Seconds of the fastest of REPEATS runs, after one warm-up run."""
    work()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def service_guidance(timesteps: list[int]) -> LowDensityGuidance:
    torch.manual_seed(0)
    classifier, discriminator = TimeConditionedCNN(num_classes=10), TimeConditionedCNN(num_classes=2)
    dim = classifier.config["embedding_dim"]
    return LowDensityGuidance(
        classifier=classifier.eval(),
        class_gaussians={t: ClassGaussians.identity(torch.randn(10, dim)) for t in timesteps},
        discriminator=discriminator.eval(),
        discriminator_gaussians={t: ClassGaussians.identity(torch.randn(2, dim)) for t in timesteps},
        alpha=0.5,
        beta=0.5,
    )


def time_scheduler(name: str, unet: Any) -> float:
    config = dict(demo_scheduler().config)
    guidance = service_guidance(guidance_timesteps(make_scheduler(name, config), STEPS))
    seeds, labels = list(range(BATCH)), torch.arange(BATCH) % 10

    def unguided() -> None:
        with torch.inference_mode():
            denoise(unet, make_scheduler(name, config), seeds=seeds, steps=STEPS, class_labels=labels, device=CPU)

    def guided() -> None:
        scheduler = make_scheduler(name, config)
        with torch.inference_mode():
            denoise(unet, scheduler, seeds=seeds, steps=STEPS, class_labels=labels, device=CPU, guidance=guidance)

    base, steered = best_seconds(unguided) / STEPS, best_seconds(guided) / STEPS
    ratio = steered / base
    print(f"{name:5s} unguided {1000 * base:7.2f} ms/step  guided {1000 * steered:7.2f} ms/step  ratio {ratio:.2f}")
    return ratio


def time_fitting() -> None:
    images, labels = load_digits16()
    timesteps = guidance_timesteps(make_scheduler("ddim", dict(demo_scheduler().config)), STEPS)
    network = TimeConditionedCNN(num_classes=10).eval()
    alphas_cumprod = demo_scheduler().alphas_cumprod.double()
    started = time.perf_counter()
    fit_timestep_gaussians(network, images_to_model_range(images), torch.from_numpy(labels), timesteps, alphas_cumprod)
    seconds = time.perf_counter() - started
    print(f"fitting class means at {len(timesteps)} timesteps on {len(images)} digits: {seconds:.1f} s (once per job)")


def main() -> None:
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    unet = demo_unet().eval()
    print(f"demo UNet, batch {BATCH}, {STEPS} steps, {TORCH_THREADS} torch thread(s), best of {REPEATS}")
    ratios = [time_scheduler(name, unet) for name in ("ddpm", "ddim")]
    print(f"worst guided/unguided ratio {max(ratios):.2f} (target <= 1.5)")
    time_fitting()


if __name__ == "__main__":
    main()
