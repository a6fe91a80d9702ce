"""Calibrate the membership scores on a family of partly memorizing models the project trains itself.

Each model is the demo recipe (diffaudit.demo.train_demo: class-conditional UNet, DDPM loss, AdamW, warm-up and
cosine decay) trained on the first `n_train` built-in digits at `size` x `size` pixels (the 8x8 originals upsampled
bilinearly) for `steps` steps. For each model it measures
- the copy rate: the share of `n_samples` DDIM samples (sample seed 0..) that the extraction test (Carlini et al.,
  Hasegawa and Yasuda Eq. 7, pixels, defaults of the memorization stage) flags as copies of a training image;
- for every score variant in VARIANTS: AUC and TPR at 1% FPR of the members (a seeded subset of at most `n_eval`
  training images) against as many held-out digits (never trained on), as the membership stage computes them.
and prints one table row per model (Markdown). Models are cached in --cache (retrained only when absent).

    DIFFAUDIT_TORCH_THREADS=1 .venv/bin/python scripts/membership_calibration.py [--full | --models NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.pipelines.ddpm.pipeline_ddpm import DDPMPipeline

from diffaudit.checkpoints.sampling import sample_batches
from diffaudit.checkpoints.schedulers import make_scheduler
from diffaudit.datasets.digits import load_digits16
from diffaudit.demo import DEMO_MODELS, DemoRecipe, demo_unet, train_demo
from diffaudit.device import configure_threads
from diffaudit.metrics.membership import ScoreName, batched_scores, membership_measures, score_function
from diffaudit.metrics.memorization import extraction_test

ROOT = Path(__file__).resolve().parent.parent
# (label, score, options): the variants compared; the membership stage's defaults are chosen from this table
VARIANTS: tuple[tuple[str, ScoreName, dict[str, Any]], ...] = (
    ("VG N1 s.05 T1", "volume_growth", {"n_axes": 1, "sigma": 0.05, "n_steps": 1}),
    ("VG N4 s.05 T1", "volume_growth", {"n_axes": 4, "sigma": 0.05, "n_steps": 1}),
    ("loss t50 x4", "denoising_loss", {"timesteps": (50,), "n_draws": 4, "seed": 0}),
    ("loss t200 x4", "denoising_loss", {"timesteps": (200,), "n_draws": 4, "seed": 0}),
    ("PIA t100 p4", "pia", {"timestep": 100, "p": 4.0}),
    ("PIA t200 p4", "pia", {"timestep": 200, "p": 4.0}),
    ("SecMI t100 k10", "secmi", {"timestep": 100, "interval": 10}),
)


@dataclass(frozen=True)
class Model:
    n_train: int
    steps: int
    size: int

    @property
    def name(self) -> str:
        return f"n{self.n_train}-s{self.steps}-{self.size}px"

    @staticmethod
    def parse(name: str) -> Model:
        """The model named like Model.name ("n100-s1200-28px")."""
        match = re.fullmatch(r"n(\d+)-s(\d+)-(\d+)px", name)
        if match is None:
            raise argparse.ArgumentTypeError(f"model names look like n100-s1200-28px, not {name!r}")
        return Model(*(int(group) for group in match.groups()))


# cheapest first: the rows print as they finish, so a run stopped early still gives the small models
QUICK = (
    Model(64, 300, 16),
    Model(64, 1200, 16),
    Model(64, 300, 28),
    Model(256, 300, 16),
    Model(256, 1200, 16),
    Model(64, 1200, 28),
    Model(100, 1200, 28),  # the case: 100 images at another image size
    Model(256, 300, 28),
    Model(256, 1200, 28),
)
FULL = tuple(Model(n, s, size) for size in (16, 28) for n in (64, 100, 256, 1000) for s in (300, 1200, 3000))


def digits_at(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The built-in digits (16x16) resized bilinearly to size x size, uint8 NHWC, and their labels."""
    images, labels = load_digits16()
    if size == images.shape[1]:
        return images, labels
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), labels


def unet_at(size: int) -> UNet2DModel:
    """The demo architecture (diffaudit.demo.demo_unet) at size x size, initialised from seed 0."""
    config = {**demo_unet().config, "sample_size": size}
    torch.manual_seed(0)
    return UNet2DModel.from_config(config)


def trained(model: Model, cache: Path) -> tuple[UNet2DModel, dict[str, Any]]:
    folder = cache / model.name
    if not folder.is_dir():
        images, labels = digits_at(model.size)
        base = DEMO_MODELS["digits"]
        recipe = DemoRecipe(
            name=model.name,
            description="membership calibration",
            training_data=lambda: (images[: model.n_train], labels[: model.n_train]),
            train_steps=model.steps,
            batch_size=base.batch_size,
            learning_rate=base.learning_rate,
        )
        unet, scheduler = train_demo(recipe, model.steps, progress=False, unet=unet_at(model.size))
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)  # type: ignore[arg-type]
    pipeline = DDPMPipeline.from_pretrained(folder)
    return pipeline.unet.eval(), dict(pipeline.scheduler.config)


def copy_rate(unet: UNet2DModel, config: dict[str, Any], training: np.ndarray, n_samples: int) -> float:
    labels = np.arange(n_samples) % 10
    batches = sample_batches(
        unet,
        make_scheduler("ddim", config),
        n=n_samples,
        steps=20,
        seed=0,
        batch_size=64,
        class_labels=labels,
        device=torch.device("cpu"),
    )
    samples = np.concatenate([images for _, images in batches])
    return extraction_test(samples, training, n_neighbours=min(50, len(training))).fraction_flagged


def row(model: Model, cache: Path, n_eval: int, n_samples: int) -> list[str]:
    started = time.perf_counter()
    unet, config = trained(model, cache)
    images, labels = digits_at(model.size)
    rng = np.random.default_rng(0)
    members = np.sort(rng.choice(model.n_train, size=min(n_eval, model.n_train), replace=False))
    heldout = np.sort(rng.choice(np.arange(model.n_train, len(images)), size=len(members), replace=False))
    cells = [model.name, f"{copy_rate(unet, config, images[: model.n_train], n_samples):.0%}"]
    for _label, score, options in VARIANTS:
        score_fn = score_function(score, unet, config, options)
        member_scores = batched_scores(score_fn, images[members], labels[members], first_index=0)
        heldout_scores = batched_scores(score_fn, images[heldout], labels[heldout], first_index=len(members))
        measures = membership_measures(member_scores, heldout_scores)
        cells.append(f"{measures['auc']:.3f} / {measures['tpr_at_1pct_fpr']:.2f}")
    cells.append(f"{time.perf_counter() - started:.0f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the larger family (hours on a CPU)")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "membership-calibration")
    parser.add_argument("--n-eval", type=int, default=128, help="members and held-out images scored per model")
    parser.add_argument("--n-samples", type=int, default=128, help="samples of the extraction test per model")
    parser.add_argument("--models", type=Model.parse, nargs="+", help="only these models, e.g. n100-s1200-28px")
    args = parser.parse_args()
    configure_threads(int(os.environ.get("DIFFAUDIT_TORCH_THREADS", "0")))
    header = ["model", "copy rate", *[f"{label}: AUC / TPR@1%" for label, _, _ in VARIANTS], "seconds"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for model in args.models or (FULL if args.full else QUICK):
        print("| " + " | ".join(row(model, args.cache, args.n_eval, args.n_samples)) + " |", flush=True)


if __name__ == "__main__":
    main()
