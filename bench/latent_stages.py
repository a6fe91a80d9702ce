"""Benchmark: where the wall time of a latent job goes, per stage (sample: denoising vs decoding; features:
extraction).

Runs diffaudit.pipeline with the stages sample, features, irs on a latent checkpoint (random weights of the
digits-latent recipe's architecture, diffaudit/demo_latent.py: `latent-unet`; or bench/latent_sampling.py's DiT
with the same AutoencoderKL and classifier-free guidance: `dit`) and the built-in digits, with timers wrapped around the
sampling loop's denoising and decoding (diffaudit.checkpoints.sampling) and around the feature extractor's call.
Production code is unchanged. Each stage's seconds are the pipeline's own (`seconds` of its summary).

    .venv/bin/python bench/latent_stages.py --threads 1 --kind latent-unet --n 1024 --steps 20  (or --kind dit)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.dit.pipeline_dit import DiTPipeline
from latent_sampling import bench_dit

from diffaudit.checkpoints import sampling
from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.demo import demo_scheduler
from diffaudit.demo_latent import latent_demo_autoencoder, latent_demo_unet
from diffaudit.device import configure_threads, pick_device
from diffaudit.features.extractors import NetworkExtractor
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec
from diffaudit.store import LocalStore

STAGES = ("sample", "features", "irs")
TIMED = ("denoising", "decoding", "extraction")


def save_latent_checkpoint(folder: Path, kind: str) -> Path:
    """A latent-unet folder (unet/, vae/, scheduler/) or a DiTPipeline folder, random weights."""
    torch.manual_seed(0)
    vae, scheduler = latent_demo_autoencoder().eval(), demo_scheduler()
    if kind == "dit":
        DiTPipeline(transformer=bench_dit(), vae=vae, scheduler=scheduler).save_pretrained(folder)  # type: ignore[arg-type]
    else:
        latent_demo_unet().eval().save_pretrained(folder / "unet")
        vae.save_pretrained(folder / "vae")
        scheduler.save_pretrained(folder / "scheduler")
    return folder


def timed(totals: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, adding the seconds of every call to totals[name]."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - started

    return wrapper


def install_timers(totals: dict[str, float]) -> None:
    """Timers around the denoising of a batch, its decoding and every feature extraction (module globals the
    sampling loop and the features stage look up at call time)."""
    sampling.denoise = timed(totals, "denoising", sampling.denoise)
    sampling.decode_latents = timed(totals, "decoding", sampling.decode_latents)
    NetworkExtractor.__call__ = timed(totals, "extraction", NetworkExtractor.__call__)  # type: ignore[method-assign]


def share(part: float, whole: float) -> str:
    return f"{part:7.2f} s {100 * part / whole:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--kind", choices=("latent-unet", "dit"), default="latent-unet")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="the DiT's classifier-free guidance")
    args = parser.parse_args()
    configure_threads(args.threads)
    device = pick_device()
    totals: dict[str, float] = defaultdict(float)
    install_timers(totals)
    per_stage: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}

    def stage_done(name: str, summary: dict[str, Any]) -> None:
        per_stage[name] = {t: totals[t] - sum(s[t] for s in per_stage.values()) for t in TIMED}
        seconds[name] = float(summary["seconds"])

    sample: dict[str, Any] = {"n": args.n, "steps": args.steps, "batch_size": args.batch}
    if args.kind == "dit":
        sample["guidance_scale"] = args.guidance_scale
    spec = EvaluationSpec(stages=STAGES, sample=sample, irs={"early_rejection": False})
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_latent_checkpoint(Path(tmp) / "model", args.kind)
        store = LocalStore(Path(tmp) / "store")
        write_builtin_dataset("digits", store, "datasets/digits")
        dataset = Dataset.open(store, "datasets/digits")
        started = time.perf_counter()
        run(spec, checkpoint_dir=folder, dataset=dataset, store=store, job_prefix="evaluations/b", device=device,
            on_stage_done=stage_done)  # fmt: skip
        wall = time.perf_counter() - started
    print(
        f"device {device}, threads {args.threads}, kind {args.kind}, n {args.n}, DDIM steps {args.steps}, "
        f"batch {args.batch}" + (f", guidance scale {args.guidance_scale:g}" if args.kind == "dit" else "")
        + f"; features random-cnn on {dataset.info.count} training + {args.n} generated images (cache cold)"
    )  # fmt: skip
    print(f"whole job {wall:.2f} s (stages {sum(seconds.values()):.2f} s); share of the stage, then of the job")
    for name in STAGES:
        stage = seconds[name]
        timers = {t: v for t, v in per_stage[name].items() if v > 0}
        parts = [f"{t} {share(v, stage)} ({100 * v / wall:4.1f}% of the job)" for t, v in timers.items()]
        other = stage - sum(timers.values())
        print(f"{name:>9}: {stage:7.2f} s | " + " | ".join([*parts, f"other {share(other, stage)}"]))


if __name__ == "__main__":
    main()
