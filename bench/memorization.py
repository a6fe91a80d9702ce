"""Benchmark of the membership scores against the UNet forward passes they need, at equal batch sizes.

For the default membership score (diffaudit.spec.MembershipSpec: the denoising loss, its default timesteps and
draws) and, for reference, volume growth with one axis and one step (Hasegawa and Yasuda, Algorithm 1):
- scores per second through diffaudit.metrics.membership.batched_scores (uint8 conversion, seeded noise, UNet
  calls, the arithmetic of the score), in batches of B images;
- the UNet forward passes the same scores need, timed alone: exactly the calls the score makes (count and size):
  the denoising loss makes len(timesteps) x n_draws calls of B images per batch, volume growth one call of
  B (N + 1) images per step, so both sides run the UNet on the same batch sizes and the ratio measures the score's
  own overhead, not batching;
- ratio = forward time / score time (1.0 = the score costs nothing beyond its UNet calls); target >= 0.8. Both are
  timed batch by batch in pairs (one score batch, then the same batch's UNet calls alone, the order alternating)
  and the figure is the median of the pairs' ratios: a pair runs within a second, so the shared machine's load
  hits both sides of a pair alike (best-of-N totals timed seconds apart gave ratios above 1, which cannot be
  true since the score contains those calls).
Models: the demo architecture (diffaudit.demo.demo_unet: class-conditional UNet2DModel, 16x16x1) and the same
architecture at 28x28, random weights (throughput does not depend on them), the demo's DDPM noise schedule.

Threads, set deliberately: torch uses 1 thread. The machine has 2 cores shared with other work while this runs (at
a load of 10, two torch threads made single UNet calls up to 14x slower in one run and the ratios meaningless).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.models.unets.unet_2d import UNet2DModel

from diffaudit.demo import demo_scheduler, demo_unet
from diffaudit.metrics.membership import ScoreName, batched_scores, score_function, unet_calls_per_batch
from diffaudit.spec import MembershipSpec

TORCH_THREADS = 1
BATCH = 64  # images per score batch
N_IMAGES = 256
REPEATS = 8


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def forward_work(unet: UNet2DModel, call_size: int, n_calls: int) -> Callable[[], None]:
    """n_calls UNet forward passes of call_size random images."""
    generator = torch.Generator().manual_seed(0)
    size = int(unet.config["sample_size"])
    x = torch.randn(call_size, 1, size, size, generator=generator)
    labels = torch.randint(0, 10, (call_size,), generator=generator)

    @torch.no_grad()
    def work() -> None:
        for _ in range(n_calls):
            unet(x, torch.tensor(10), class_labels=labels)

    return work


def back_to_back(first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """The seconds of first and of second, run one right after the other so that both see the same load."""
    return seconds(first), seconds(second)


def measured(unet: UNet2DModel, score: ScoreName, options: dict[str, Any]) -> tuple[float, list[float], int, int]:
    """(scores/s, forward/score time ratio of every pair, UNet calls per batch, images per call) of one score.

    One pair = one batch of BATCH images scored through batched_scores, then the UNet calls that batch needs,
    timed alone; the order inside a pair alternates so that neither side always runs on a warmer cache."""
    size = int(unet.config["sample_size"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_IMAGES, size, size, 1), dtype=np.uint8)
    labels = np.arange(N_IMAGES) % 10
    score_fn = score_function(score, unet, dict(demo_scheduler().config), options)
    steps = unet_calls_per_batch(score, options)
    # volume growth sends the centre and the axes of every image in one call per step
    per_call = BATCH * (options["n_axes"] + 1) if score == "volume_growth" else BATCH
    calls = steps // (options["n_axes"] + 1) if score == "volume_growth" else steps
    forward_batch = forward_work(unet, per_call, calls)

    def score_batch(start: int) -> Callable[[], object]:
        stop = start + BATCH
        return lambda: batched_scores(score_fn, images[start:stop], labels[start:stop], first_index=start)

    score_batch(0)()  # warm-up
    forward_batch()
    score_times, ratios = [], []
    for repeat in range(REPEATS):
        for i, start in enumerate(range(0, N_IMAGES, BATCH)):
            if (repeat + i) % 2 == 0:
                score_s, forward_s = back_to_back(score_batch(start), forward_batch)
            else:
                forward_s, score_s = back_to_back(forward_batch, score_batch(start))
            score_times.append(score_s)
            ratios.append(forward_s / score_s)
    return BATCH / float(np.median(score_times)), ratios, calls, per_call


def main() -> None:
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    spec = MembershipSpec()
    default: ScoreName = spec.scores[0]
    models = {
        "demo 16x16": demo_unet().eval(),
        "28x28": UNet2DModel.from_config({**demo_unet().config, "sample_size": 28}).eval(),
    }
    variants: dict[str, tuple[ScoreName, dict[str, Any]]] = {
        f"{default} (default)": (default, spec.score_options(default)),
        "volume growth N=1, 1 step": ("volume_growth", {"n_axes": 1, "sigma": 0.05, "n_steps": 1}),
    }
    print(f"torch threads: {TORCH_THREADS}; random weights; {N_IMAGES} images, batches of {BATCH}; {REPEATS} passes")
    print(f"default score options: {spec.score_options(default)}")
    for model_name, unet in models.items():
        for label, (score, options) in variants.items():
            rate, ratios, calls, per_call = measured(unet, score, options)
            ratio = float(np.median(ratios))
            low, high = np.percentile(ratios, [25, 75])
            verdict = "met" if ratio >= 0.8 else "NOT met"
            print(
                f"{model_name:>10} | {label:<28} | {rate:8.1f} scores/s | {calls} UNet call(s) of {per_call} images "
                f"per batch | ratio forward time / score time, median of {len(ratios)} pairs {ratio:.3f} "
                f"(quartiles {low:.3f}-{high:.3f}; target >= 0.8: {verdict})",
                flush=True,
            )


if __name__ == "__main__":
    main()
