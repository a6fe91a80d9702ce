"""Benchmark of the volume growth rate (Hasegawa and Yasuda Algorithm 1) against the UNet's own forward speed.

Model: the demo architecture (diffaudit.demo.demo_unet: class-conditional UNet2DModel, 16x16x1,
block_out_channels (32, 64, 64), layers_per_block 1, 10 classes) with random weights (throughput does not
depend on them) and the demo's DDPM noise schedule. Data: the first images of the built-in digits.

Measured in one run and printed:
- volume-growth scores per second with one axis and one step (the defaults), through
  volume_growth_dataset (uint8 conversion, axes, UNet, ODE step, Gram-Schmidt included), batch B images;
- UNet forward passes (images) per second with batches of 2B images (the size of the UNet call inside a
  score batch: centre + one axis per image) and, for reference, with batches of B images;
- volume growth's own overhead: the same scores with a zero-cost stand-in for the UNet, as a share of
  a real score's time (insensitive to the machine's load);
- the ratio of score throughput to half the forward throughput at 2B (each score needs two image
  passes); target >= 0.8.

Threads, set deliberately: torch uses 2 threads. The machine has 2 cores shared with other work while
this runs, so each figure is the best of a few repetitions, interleaved so that load hits all alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from diffaudit.datasets.digits import load_digits16
from diffaudit.demo import demo_scheduler, demo_unet
from diffaudit.metrics.volume_growth import volume_growth_dataset

TORCH_THREADS = 2
BATCH = 64  # images per score batch
N_IMAGES = 256
REPEATS = 4


class ZeroEpsilon(torch.nn.Module):
    """A UNet stand-in that costs nothing: what remains of a score's time is volume growth's own overhead."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None) -> Any:
        return SimpleNamespace(sample=sample * self.weight)


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def forward_work(unet: torch.nn.Module, batch: int, n_images: int) -> Callable[[], None]:
    """UNet forward passes over n_images random images in batches of `batch`."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 16, 16, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)

    @torch.no_grad()
    def work() -> None:
        for _ in range(n_images // batch):
            unet(x, torch.tensor(0), class_labels=labels)

    return work


def main() -> None:
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    unet = demo_unet().eval()
    scheduler: Any = demo_scheduler()
    config = dict(scheduler.config)
    images, labels = load_digits16()
    images, labels = images[:N_IMAGES], labels[:N_IMAGES]
    runs: dict[str, Callable[[], object]] = {
        "scores": lambda: volume_growth_dataset(unet, config, images, labels, batch_size=BATCH),
        "overhead": lambda: volume_growth_dataset(ZeroEpsilon(), config, images, labels, batch_size=BATCH),
        "forward_2b": forward_work(unet, 2 * BATCH, 2 * N_IMAGES),
        "forward_b": forward_work(unet, BATCH, 2 * N_IMAGES),
    }
    for work in runs.values():  # warm-up
        work()
    best = {name: seconds(work) for name, work in runs.items()}
    for _ in range(REPEATS - 1):  # interleaved, so that the shared machine's load hits every figure alike
        best = {name: min(best[name], seconds(work)) for name, work in runs.items()}
    score_rate = N_IMAGES / best["scores"]
    forward_2b, forward_b = 2 * N_IMAGES / best["forward_2b"], 2 * N_IMAGES / best["forward_b"]
    ratio = score_rate / (forward_2b / 2)
    print(f"torch threads: {TORCH_THREADS}; demo architecture, random weights; {N_IMAGES} digits; best of {REPEATS}")
    print(f"volume growth (N=1 axis, 1 step), batches of {BATCH} images: {score_rate:8.1f} scores/s")
    print(f"UNet forward, batches of {2 * BATCH} images:                {forward_2b:8.1f} images/s")
    print(f"UNet forward, batches of {BATCH} images:                 {forward_b:8.1f} images/s")
    print(f"volume growth's own overhead (zero-cost UNet): {best['overhead'] / best['scores']:.2%} of a score's time")
    verdict = "met" if ratio >= 0.8 else "NOT met"
    print(f"ratio scores/s / (forward/s at {2 * BATCH} / 2): {ratio:.3f}  (target >= 0.8: {verdict})")
    print(f"ratio scores/s / (forward/s at {BATCH} / 2):  {score_rate / (forward_b / 2):.3f}")


if __name__ == "__main__":
    main()
