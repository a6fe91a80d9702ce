"""Issue 6, "Reproduce the paper's validation": volume growth separates training images from unseen ones on an
overfitted model (Hasegawa and Yasuda, Fig. 2 left), and the extraction test flags its samples as copies.

1. Membership: the "digits-overfit" demo model (trained on the first 64 digits) scores those 64 images and the
   next 64 digits, which it never saw, with the volume growth rate (Hasegawa and Yasuda Algorithm 1; N = 1 axis,
   sigma = 0.05,
   one step by default, plus a few other settings). Reported: both means, Welch's t-test p-value, and the ROC
   AUC of the score as a detector of training membership (score higher = member, the direction of Hasegawa and
   Yasuda, Fig. 2).
   Control: the same 128 images under the model trained on all digits, for which all of them are members.
2. Copies: the extraction test (Hasegawa and Yasuda Eq. 7, Carlini et al.'s alpha = 0.5, n = 50, threshold 1) on
samples of
   each model against that model's own training set; nearest-neighbour distances (Sehwag et al., Sec. 5) of the overfit
   model's samples and of the 64 unseen digits to its training set.
3. Hasegawa and Yasuda Figs. 7-8 on the digits: the 64 images of the all-digits model's training set with the
highest and the
   lowest volume growth.
4. Figures for docs/memorization.md (docs/img/memorization_*.png), the numbers as JSON, and a markdown table
   printed to stdout.

The model trained on all digits is the cached demo model in var/models when present (the demo recipe), else the
test suite's 400-step model in var/test-models (the same recipe stopped after 400 steps); the output says which.
Threads, set deliberately: torch uses 1 thread (2 cores shared with other agents).
Usage: .venv/bin/python scripts/memorization_validation.py [--samples 256] [--steps 50] [--no-curves]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from diffaudit.checkpoints import Checkpoint, class_labels_for, load_checkpoint, make_scheduler, sample_batches
from diffaudit.datasets.digits import load_digits16
from diffaudit.demo import OVERFIT_IMAGES, ensure_demo_model, trained_or_test_model
from diffaudit.device import pick_device
from diffaudit.imaging import image_grid
from diffaudit.metrics.memorization import Extraction, extraction_test, nearest_neighbour_distances
from diffaudit.metrics.volume_growth import volume_growth_dataset

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"
MODELS = ROOT / "var" / "models"
TEST_MODELS = ROOT / "var" / "test-models"
DEFAULT_GROWTH = {"n_axes": 1, "sigma": 0.05, "n_steps": 1}  # Hasegawa and Yasuda Fig. 3 / Figs. 7-8
OTHER_SETTINGS = (
    {"n_axes": 1, "sigma": 0.01, "n_steps": 1},
    {"n_axes": 1, "sigma": 0.1, "n_steps": 1},
    {"n_axes": 10, "sigma": 0.05, "n_steps": 1},
    {"n_axes": 1, "sigma": 0.05, "n_steps": 10},
    {"n_axes": 1, "sigma": 0.05, "n_steps": 100},
)


@dataclass(frozen=True)
class Membership:
    """Volume growth of members and non-members, and how well it tells them apart."""

    members: np.ndarray
    non_members: np.ndarray
    auc: float  # ROC AUC of the score (higher = member)
    p_value: float  # Welch's t-test, two-sided

    def row(self) -> dict[str, float]:
        return {
            "mean_members": float(self.members.mean()),
            "mean_non_members": float(self.non_members.mean()),
            "auc": self.auc,
            "p_value": self.p_value,
        }


def membership_evidence(members: np.ndarray, non_members: np.ndarray) -> Membership:
    """Means, Welch's t-test and ROC AUC of a score meant to be higher for training members."""
    truth = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    auc = float(roc_auc_score(truth, np.r_[members, non_members]))
    p_value = float(stats.ttest_ind(members, non_members, equal_var=False).pvalue)
    return Membership(members, non_members, auc, p_value)


def growth_scores(checkpoint: Checkpoint, images: np.ndarray, labels: np.ndarray, **options: Any) -> np.ndarray:
    """Volume growth (Hasegawa and Yasuda, Algorithm 1) of uint8 images, class-conditioned on their labels when the
    model is."""
    conditional = checkpoint.info.num_class_embeds is not None
    return volume_growth_dataset(
        checkpoint.unet, checkpoint.scheduler_config, images, labels if conditional else None, **options
    ).scores


def draw_samples(checkpoint: Checkpoint, n: int, steps: int, seed: int = 0) -> np.ndarray:
    """n DDIM samples cycling through the classes (uint8 NHWC)."""
    labels = class_labels_for(n, checkpoint.info.num_class_embeds, None)
    scheduler = make_scheduler("ddim", checkpoint.scheduler_config)
    batches = sample_batches(
        checkpoint.unet,
        scheduler,
        n=n,
        steps=steps,
        seed=seed,
        batch_size=64,
        class_labels=labels,
        device=pick_device(),
    )
    return np.concatenate([images for _, images in batches])


def save_figure(figure: Figure, name: str) -> None:
    figure.tight_layout()
    figure.savefig(IMAGES / name, dpi=100)


def growth_figure(overfit: Membership, control: Membership) -> None:
    figure = Figure(figsize=(10, 3.6))
    for axis, result, title in zip(
        figure.subplots(1, 3)[:2],
        (overfit, control),
        ("overfit model (trained on digits 0-63)", "control: model trained on all digits"),
        strict=True,
    ):
        edges = np.histogram_bin_edges(np.r_[result.members, result.non_members], bins=20).tolist()
        axis.hist(result.members, bins=edges, alpha=0.6, label="digits 0-63 (overfit's training set)")
        axis.hist(result.non_members, bins=edges, alpha=0.6, label="digits 64-127")
        axis.set_title(f"{title}\nAUC {result.auc:.3f}", fontsize=9)
        axis.set_xlabel("log volume growth (N=1, sigma=0.05, 1 step)")
    figure.axes[0].legend(fontsize=7)
    roc_axis = figure.axes[2]
    for result, label in ((overfit, "overfit"), (control, "control")):
        truth = np.r_[np.ones(len(result.members)), np.zeros(len(result.non_members))]
        fpr, tpr, _ = roc_curve(truth, np.r_[result.members, result.non_members])
        roc_axis.plot(fpr, tpr, label=f"{label} (AUC {result.auc:.3f})")
    roc_axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc_axis.set_xlabel("false positive rate")
    roc_axis.set_ylabel("true positive rate")
    roc_axis.set_title("membership by volume growth", fontsize=9)
    roc_axis.legend(fontsize=7)
    save_figure(figure, "memorization_membership.png")


def pairs_figure(samples: np.ndarray, training: np.ndarray, extraction: Extraction, name: str, n_pairs: int) -> None:
    """Samples (left) next to their nearest training image (right), in sample order."""
    shown = np.arange(min(n_pairs, len(samples)))
    pairs = np.stack([samples[shown], training[extraction.nearest_index[shown]]], axis=1)
    image_grid(pairs.reshape(-1, *samples.shape[1:]), ncols=16).save(IMAGES / name)


def extraction_figure(overfit: Extraction, full: Extraction) -> None:
    figure = Figure(figsize=(6, 3.4))
    axis = figure.subplots()
    edges = np.histogram_bin_edges(np.r_[overfit.score, full.score], bins=30).tolist()
    axis.hist(overfit.score, bins=edges, alpha=0.6, label=f"overfit model: {overfit.fraction_flagged:.1%} flagged")
    axis.hist(full.score, bins=edges, alpha=0.6, label=f"all-digits model: {full.fraction_flagged:.1%} flagged")
    axis.axvline(overfit.threshold, color="k", linestyle=":", linewidth=1)
    axis.set_xlabel("extraction ratio (Hasegawa and Yasuda, Eq. 7); below 1 = copy")
    axis.set_ylabel("samples")
    axis.legend(fontsize=8)
    save_figure(figure, "memorization_extraction.png")


def ranking_figures(checkpoint: Checkpoint, digits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Hasegawa and Yasuda Figs. 7-8 on the digits: the 64 training images easiest and hardest to reproduce (N=1,
    one step)."""
    scores = growth_scores(checkpoint, digits, labels, **DEFAULT_GROWTH)
    order = np.argsort(-scores, kind="stable")
    image_grid(digits[order[:64]], ncols=16).save(IMAGES / "memorization_top64.png")
    image_grid(digits[order[::-1][:64]], ncols=16).save(IMAGES / "memorization_bottom64.png")
    return {"top64_mean": float(scores[order[:64]].mean()), "bottom64_mean": float(scores[order[-64:]].mean())}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| model | N | sigma | steps | mean log growth, digits 0-63 | mean, digits 64-127 | Welch p | AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["membership"]:
        lines.append(
            f"| {row['model']} | {row['n_axes']} | {row['sigma']} | {row['n_steps']} | {row['mean_members']:.4g} "
            f"| {row['mean_non_members']:.4g} | {row['p_value']:.2g} | {row['auc']:.3f} |"
        )
    lines += ["", "| samples of | training set | samples | flagged as copies | distinct training images copied |"]
    lines.append("|---|---|---|---|---|")
    for row in results["extraction"]:
        lines.append(
            f"| {row['model']} | {row['n_training']} digits | {row['n_generated']} | {row['fraction_flagged']:.1%} "
            f"| {row['n_copied_training_images']} |"
        )
    nn = results["nearest_neighbours"]
    lines += [
        "",
        "Nearest-training-image pixel distance (Sehwag et al., Sec. 5), overfit model: "
        f"samples {nn['generated_mean']:.1f}, unseen digits 64-127 {nn['held_out_mean']:.1f} "
        f"(ratio {nn['ratio']:.2f}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="samples per model for the extraction test")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per sample")
    parser.add_argument("--no-other-settings", action="store_true", help="only N=1, sigma=0.05, one step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = pick_device()
    IMAGES.mkdir(parents=True, exist_ok=True)

    digits, labels = load_digits16()
    members = slice(0, OVERFIT_IMAGES)
    non_members = slice(OVERFIT_IMAGES, 2 * OVERFIT_IMAGES)
    overfit = load_checkpoint(ensure_demo_model("digits-overfit", MODELS), device)
    full_folder, full_description = trained_or_test_model("digits", MODELS, TEST_MODELS)
    full = load_checkpoint(full_folder, device)
    print(f"overfit model: {overfit.info.content_hash[:12]}; all-digits model: {full_description}")

    results: dict[str, Any] = {"full_model": full_description, "membership": [], "extraction": []}
    evidence: dict[str, Membership] = {}
    settings = [DEFAULT_GROWTH] + ([] if args.no_other_settings else list(OTHER_SETTINGS))
    for name, checkpoint in (("overfit", overfit), ("all digits", full)):
        for setting in settings if name == "overfit" else [DEFAULT_GROWTH]:
            found = membership_evidence(
                growth_scores(checkpoint, digits[members], labels[members], **setting),
                growth_scores(checkpoint, digits[non_members], labels[non_members], **setting),
            )
            if setting == DEFAULT_GROWTH:
                evidence[name] = found
            results["membership"].append({"model": name, **setting, **found.row()})
            print(results["membership"][-1], flush=True)
    growth_figure(evidence["overfit"], evidence["all digits"])
    results["ranking"] = ranking_figures(full, digits, labels)
    print(results["ranking"], flush=True)

    extractions = {}
    for name, checkpoint, training in (("overfit", overfit, digits[members]), ("all digits", full, digits)):
        samples = draw_samples(checkpoint, args.samples, args.steps)
        extraction = extraction_test(samples, training, device=device)
        extractions[name] = extraction
        summary = extraction.summary()
        listed = ("n_generated", "n_flagged", "fraction_flagged", "n_copied_training_images")
        results["extraction"].append({"model": name, "n_training": len(training), **{k: summary[k] for k in listed}})
        print(results["extraction"][-1], flush=True)
        file = "memorization_pairs_overfit.png" if name == "overfit" else "memorization_pairs_all_digits.png"
        pairs_figure(samples, training, extraction, file, n_pairs=32)
        if name == "overfit":
            held_out = nearest_neighbour_distances(digits[non_members], training, device=device)
            generated = extraction.nearest_distance
            results["nearest_neighbours"] = {
                "generated_mean": float(generated.mean()),
                "held_out_mean": float(held_out.mean()),
                "ratio": float(generated.mean() / held_out.mean()),
            }
    extraction_figure(extractions["overfit"], extractions["all digits"])
    (IMAGES / "memorization_validation.json").write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
