"""Benchmark: images/s of diffaudit's sampling loop vs diffusers' own DDIMPipeline.

Same UNet (the demo architecture, unconditional, random weights), same DDIM scheduler, steps
and batch size. Repetitions alternate between the two so that machine noise hits both alike;
the ratio of medians is printed (target >= 0.95). Threads are set deliberately (--threads).

    .venv/bin/python bench/sampling.py --threads 1 --batch 64 --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from diffusers.pipelines.ddim.pipeline_ddim import DDIMPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler

from diffaudit.checkpoints import make_scheduler, sample_batches
from diffaudit.demo import demo_scheduler, demo_unet
from diffaudit.device import configure_threads, pick_device


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    configure_threads(args.threads)
    device = pick_device()
    torch.manual_seed(0)
    unet = demo_unet(num_class_embeds=None).eval()
    unet.to(device)  # type: ignore[arg-type]  # diffusers wraps Module.to; mypy misreads it
    config = dict(demo_scheduler().config)
    ours_scheduler = make_scheduler("ddim", config)
    pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(config))
    pipeline.set_progress_bar_config(disable=True)

    def ours() -> object:
        options = {"n": args.batch, "steps": args.steps, "seed": 0, "batch_size": args.batch, "class_labels": None}
        return list(sample_batches(unet, ours_scheduler, device=device, **options))

    def theirs() -> object:
        generator = torch.Generator("cpu").manual_seed(0)
        return pipeline(batch_size=args.batch, generator=generator, num_inference_steps=args.steps, output_type="np")

    ours(), theirs()  # warm-up
    times: dict[str, list[float]] = {"diffaudit": [], "diffusers": []}
    for _ in range(args.repeats):
        times["diffaudit"].append(seconds(ours))
        times["diffusers"].append(seconds(theirs))
    rates = {name: args.batch / statistics.median(t) for name, t in times.items()}
    print(
        f"device {device}, threads {args.threads}, batch {args.batch}, DDIM steps {args.steps}, {args.repeats} repeats"
    )
    for name, rate in rates.items():
        print(f"{name:>10}: {rate:8.2f} images/s (median of {[round(t, 3) for t in times[name]]} s)")
    print(f"ratio diffaudit / diffusers: {rates['diffaudit'] / rates['diffusers']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
