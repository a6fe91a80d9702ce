"""Benchmark: images/s of diffaudit's sampling loop vs diffusers' own LDMPipeline and DiTPipeline.

Same components (random weights): for the LDM the digits-latent recipe's unconditional latent UNet and
AutoencoderKL (diffaudit/demo_latent.py); for the DiT a 4-layer DiT (width 128, learned sigma, 1,000 classes so
that DiTPipeline's null label 1000 exists) with the same AutoencoderKL, sampled with classifier-free guidance
(--guidance-scale). Same DDIM scheduler, steps and batch size; the warm-up checks that each pair draws the same
images. Repetitions alternate between the loops so that machine noise hits all alike; the best of the repetitions
is compared (target >= 0.95 each).

    .venv/bin/python bench/latent_sampling.py --threads 1 --batch 128 --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.deprecated.latent_diffusion_uncond.pipeline_latent_diffusion_uncond import LDMPipeline
from diffusers.pipelines.dit.pipeline_dit import DiTPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from diffaudit.checkpoints import make_scheduler, sample_batches
from diffaudit.demo import demo_scheduler
from diffaudit.demo_latent import latent_demo_autoencoder, latent_demo_unet, latent_dit
from diffaudit.device import configure_threads, pick_device

PAIRS = (("diffaudit LDM", "LDMPipeline"), ("diffaudit DiT", "DiTPipeline"))
DIT_CLASSES = 1000  # DiTPipeline's null class is label 1000


def bench_dit() -> torch.nn.Module:
    """The DiT of the benchmarks: 4 layers, 4 heads of 32 (width 128), on the digits-latent 8x8 latents."""
    return latent_dit(DIT_CLASSES, num_layers=4, num_attention_heads=4, attention_head_dim=32).eval()


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="the DiT's classifier-free guidance")
    args = parser.parse_args()
    configure_threads(args.threads)
    device = pick_device()
    torch.manual_seed(0)
    unet = latent_demo_unet(num_class_embeds=None).eval().to(device)  # type: ignore[arg-type]  # diffusers' .to
    vae = latent_demo_autoencoder().eval().to(device)  # type: ignore[arg-type]
    dit = bench_dit().to(device)
    config = dict(demo_scheduler().config)
    ldm = LDMPipeline(vqvae=vae, unet=unet, scheduler=DDIMScheduler.from_config(config))
    dit_pipeline = DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler.from_config(config))  # type: ignore[arg-type]
    for pipeline in (ldm, dit_pipeline):
        pipeline.set_progress_bar_config(disable=True)
    labels = np.arange(args.batch, dtype=np.int64) % 10
    options = {"n": args.batch, "steps": args.steps, "seed": 0, "batch_size": args.batch, "device": device}

    def generators() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(i) for i in range(args.batch)]

    runs: dict[str, Callable[[], object]] = {
        "diffaudit LDM": lambda: list(
            sample_batches(unet, make_scheduler("ddim", config), class_labels=None, autoencoder=vae, **options)
        ),
        "LDMPipeline": lambda: ldm(
            batch_size=args.batch, generator=generators(), num_inference_steps=args.steps, output_type="np"
        ),
        "diffaudit DiT": lambda: list(
            sample_batches(
                dit,
                make_scheduler("ddim", config),
                class_labels=labels,
                autoencoder=vae,
                guidance_scale=args.guidance_scale,
                **options,
            )
        ),
        "DiTPipeline": lambda: dit_pipeline(
            class_labels=labels.tolist(),
            guidance_scale=args.guidance_scale,
            generator=generators(),
            num_inference_steps=args.steps,
            output_type="np",
        ),
    }
    warm_up: dict[str, Any] = {name: run() for name, run in runs.items()}
    for ours, theirs in PAIRS:  # the same images (uint8 rounding aside), so both sides do the same work
        difference = np.abs(warm_up[ours][0][1] / 255.0 - warm_up[theirs].images).max()
        if difference > 1 / 255:
            raise SystemExit(f"{ours} and {theirs} differ by {difference:.4f}: not the same sampler")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(seconds(run))
    rates = {name: args.batch / min(t) for name, t in times.items()}
    print(
        f"device {device}, threads {args.threads}, batch {args.batch}, DDIM steps {args.steps}, "
        f"DiT guidance scale {args.guidance_scale:g}, {args.repeats} repeats, best of each"
    )
    for name, rate in rates.items():
        print(f"{name:>14}: {rate:8.2f} images/s (best of {[round(t, 3) for t in times[name]]} s)")
    for ours, theirs in PAIRS:
        print(f"ratio {ours} / {theirs}: {rates[ours] / rates[theirs]:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
