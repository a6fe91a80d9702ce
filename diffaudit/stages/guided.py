"""The `guided` stage: alpha-beta guided sampling towards low-density regions and what it achieves.

Sehwag et al., "Generating High Fidelity Data from Low-density Regions using Diffusion Models"
(arXiv 2203.17260): Sec. 3.2 (Eqs. 3-7, Algorithm 1), Sec. 4 (Figs. 3, 4, 7,
Table 1), Sec. 5 (memorization check).

1. Guidance networks (diffaudit.guidance), stored in ctx.cache as soon as they are trained:
   - the guidance classifier on (x_t, t), trained on the dataset's training images with the checkpoint's noise
     schedule, keyed by (dataset content hash, schedule hash, recipe); or the user's safetensors file;
   - the real/synthetic discriminator, trained on the training images against as many ordinary samples of the
     checkpoint (keyed by the checkpoint hash as well). Its synthetic samples are kept batch by batch in the
     job until it is trained, so an interrupted job resumes.
   Per-timestep Gaussians of their embeddings (App. A.1, identity precision) are refitted each run (seconds).
   An unlabelled dataset has no classes to train the classifier on: the discriminator's embedding then carries
   the unlabelled hardness of L_g1 (one Gaussian over the real training images); this needs an unconditional
   checkpoint.
2. Baseline samples and guided samples for every (alpha, beta) pair with the same seeds (sample i uses seed + i,
   class i % C), each drawn through diffaudit.common.batches (kept batch by batch in `guided/<set>/batches/`,
   assembled into `guided/<set>/images.npy`).
3. Density in the features of an extractor independent of the guidance networks (spec.guided.extractor): hardness
   (Eq. 3, Ledoit-Wolf class Gaussians of the training features), AvgkNN (k = 5), LOF (k = 20) and precision,
   for held-out real images, the baseline and every guided set; guided versus baseline effect sizes and p-values;
   histograms (Figs. 4 and 7); the memorization check (Sec. 5); the rejection-sampling cost (Table 1); the Fig. 3
   grid for grid jobs.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffaudit.checkpoints import Checkpoint, class_labels_for, make_scheduler
from diffaudit.common.batches import Batches, draw_resumable
from diffaudit.common.cache import get_or_compute
from diffaudit.errors import InvalidInput
from diffaudit.features.cache import training_features
from diffaudit.features.weights import local_weights_path
from diffaudit.guidance.density import DensityReport
from diffaudit.guidance.hardness import fit_timestep_gaussians
from diffaudit.guidance.sampling import LowDensityGuidance, guidance_timesteps
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.density import (
    knn_distances,
    rejection_sampling_cost,
)
from diffaudit.models.guidance import (
    TimeConditionedCNN,
    add_noise,
    alphas_cumprod_from_config,
    images_to_model_range,
    network_from_bytes,
    network_to_bytes,
    real_versus_synthetic,
    train_discriminator,
    train_guidance_classifier,
)
from diffaudit.plots.guided import fig3_png, histograms_png
from diffaudit.retrieval.knn import nearest_neighbours
from diffaudit.spec import GuidedSpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import Queue, StageContext
from diffaudit.store import ArtifactStore, load_array, save_array

PREFIX = "guided"
RECIPE_VERSION = 2  # bump when the guidance networks' architecture or training changes: cached ones are retrained
DISCRIMINATOR_SET = "discriminator_samples"
DISCRIMINATOR_SEED = 1_000_000_000  # synthetic sample i of the discriminator uses this + i (not the job's seeds)
COST_PERCENTILES = (50.0, 75.0, 90.0)  # Table 1: ranges [p50, p75), [p75, p90), [p90, inf) of real hardness
COST_SAMPLES_WANTED = 5000  # Table 1: time to collect 5K samples from a range
MEMORIZATION_PAIRS = 16  # Sec. 5 / Fig. 8: the closest (guided, training) pairs shown
FIG3_SEEDS = 4  # Fig. 3 grid: the first seeds shown in each (alpha, beta) cell, one per column
ACCURACY_TIMESTEPS = (0, 250, 500)  # classifier accuracy on held-out images, reported to judge its training
REPORT_EVERY = 20  # training steps between progress reports / cancellation checks

ProgressFn = Callable[[int, int], None]


def guidance_pairs(spec: GuidedSpec) -> list[tuple[float, float]]:
    """The (alpha, beta) pairs to sample: every alpha with every beta for a grid, else alphas[i] with betas[i]."""
    if spec.grid:
        return [(a, b) for a in spec.alphas for b in spec.betas]
    return list(zip(spec.alphas, spec.betas, strict=True))


def set_name(alpha: float, beta: float) -> str:
    return f"alpha{alpha:g}_beta{beta:g}"


def schedule_hash(alphas_cumprod: torch.Tensor) -> str:
    """Short hash of the noise schedule abar_t (what the guidance networks' training depends on)."""
    return hashlib.sha256(alphas_cumprod.numpy().astype(np.float64).tobytes()).hexdigest()[:16]


class Progress:
    """Progress over consecutive phases, each counted in its own units; checks cancellation on every report."""

    def __init__(self, ctx: StageContext, sizes: dict[str, int]) -> None:
        self.ctx = ctx
        self.offsets: dict[str, int] = {}
        offset = 0
        for phase, size in sizes.items():
            self.offsets[phase] = offset
            offset += size
        self.total = offset

    def callback(self, phase: str, every: int = 1) -> ProgressFn:
        def report(done: int, count: int) -> None:
            if done % every == 0 or done == count:
                self.ctx.check_cancelled()
                self.ctx.report(self.offsets[phase] + done, self.total)

        return report


class GuidedStage:
    name = "guided"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return run_guided(ctx)


def run_guided(ctx: StageContext) -> dict[str, Any]:
    spec: GuidedSpec = ctx.spec.guided
    checkpoint: Checkpoint = ctx.checkpoint
    split = training_data(ctx)
    conditional = checkpoint.info.num_class_embeds is not None
    pairs = guidance_pairs(spec)
    names = [set_name(alpha, beta) for alpha, beta in pairs]
    num_synthetic = spec.discriminator_samples or len(split.train_images)
    progress = Progress(
        ctx,
        {
            "classifier": spec.classifier_steps,
            "synthetic": num_synthetic,
            "discriminator": spec.discriminator_steps,
            **{name: spec.n for name in ["baseline", *names]},
            "metrics": 1 + len(pairs),
        },
    )
    alphas_cumprod = alphas_cumprod_from_config(checkpoint.scheduler_config)
    real_x0 = images_to_model_range(split.train_images)

    classifier, classifier_info = guidance_classifier(ctx, real_x0, split.train_labels, alphas_cumprod, progress)
    discriminator, synthetic, discriminator_info = guidance_discriminator(
        ctx, real_x0, alphas_cumprod, num_synthetic, progress
    )
    if classifier is not None and split.heldout_labels is not None:
        classifier_info["heldout_accuracy"] = classifier_accuracy(
            classifier, split.heldout_images, split.heldout_labels, alphas_cumprod, ctx.device
        )
    class_labels = split.train_labels if conditional else None
    guidances = build_guidances(ctx, pairs, classifier, discriminator, real_x0, synthetic, class_labels, alphas_cumprod)

    labels = class_labels_for(spec.n, checkpoint.info.num_class_embeds, None)
    if labels is not None:
        save_array(ctx.job, f"{PREFIX}/labels.npy", labels)
    baseline, baseline_seconds = draw_set(ctx, "baseline", None, labels, progress.callback("baseline"))
    guided_sets = {
        name: draw_set(ctx, name, guidances[pair], labels, progress.callback(name))
        for name, pair in zip(names, pairs, strict=True)
    }

    extractor = artifacts.extractor_for(ctx, spec.extractor, spec.extractor_weights, spec.extractor_seed)
    features = training_features(ctx.dataset, extractor, ctx.cache, spec.batch_size)
    density = DensityReport.fit(extractor, features[ctx.dataset.train_indices()], class_labels, spec.batch_size)

    def measure(name: str, images: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        measured = density.measure(name, images, labels)
        for metric, array in density.values[name].items():
            save_array(ctx.job, f"{PREFIX}/{name}/{metric}.npy", array)
        return measured

    report_metrics = progress.callback("metrics")
    sets_summary: dict[str, Any] = {
        "real": measure("real", split.heldout_images, split.heldout_labels if conditional else None),
        "baseline": measure("baseline", baseline, labels),
    }
    report_metrics(1, 1 + len(pairs))
    for i, (name, (images, _)) in enumerate(guided_sets.items()):
        measured = measure(name, images, labels)
        measured["versus_baseline"] = density.versus_baseline(name)
        measured["precision_ratio"] = ratio(measured["precision"], sets_summary["baseline"]["precision"])
        sets_summary[name] = measured
        report_metrics(2 + i, 1 + len(pairs))

    first = set_name(*pairs[0])
    precisions = {name: measured["precision"] for name, measured in sets_summary.items()}
    ctx.job.put_bytes(f"{PREFIX}/histograms.png", histograms_png(density.values, precisions))
    memorization = memorization_check(ctx, density, first, guided_sets[first][0])
    cost = cost_table(density, first, baseline_seconds / spec.n, guided_sets[first][1] / spec.n)
    if spec.grid:
        cells = {pair: guided_sets[name][0] for name, pair in zip(names, pairs, strict=True)}
        ctx.job.put_bytes(f"{PREFIX}/fig3.png", fig3_png(spec, cells, FIG3_SEEDS))
    summary: dict[str, Any] = {
        "pairs": [{"alpha": a, "beta": b, "set": set_name(a, b)} for a, b in pairs],
        "n": spec.n,
        "scheduler": spec.scheduler,
        "steps": spec.steps,
        "seed": spec.seed,
        "tau": spec.tau,
        "norm": spec.norm,
        "class_guided": conditional,
        "extractor": {"name": extractor.name, "cache_key": extractor.cache_key()},
        "classifier": classifier_info,
        "discriminator": discriminator_info,
        "seconds_per_sample": {
            "baseline": baseline_seconds / spec.n,
            **{name: seconds / spec.n for name, (_, seconds) in guided_sets.items()},
        },
        "sets": sets_summary,
        "memorization": memorization,
        "cost": cost,
        "artifacts": {
            "histograms": f"{PREFIX}/histograms.png",
            "memorization": f"{PREFIX}/memorization.png",
            **({"fig3": f"{PREFIX}/fig3.png"} if spec.grid else {}),
        },
    }
    summary["headline"] = headline(summary, first)
    return summary


@dataclass(frozen=True)
class Split:
    """The dataset's training and held-out images, uint8 NHWC, with their labels (None when unlabelled)."""

    train_images: np.ndarray
    train_labels: np.ndarray | None
    heldout_images: np.ndarray
    heldout_labels: np.ndarray | None


def training_data(ctx: StageContext) -> Split:
    """The dataset split into training and held-out images; refuses datasets the stage cannot use."""
    dataset, info = ctx.dataset, ctx.checkpoint.info
    if dataset.info.kind != "images":
        raise InvalidInput("the guided stage trains guidance networks on images; this dataset holds features only")
    height, width, channels = dataset.info.item_shape
    if (height, width, channels) != (info.sample_size, info.sample_size, info.in_channels):
        raise InvalidInput(
            f"the dataset's images are {height}x{width}x{channels} but the checkpoint generates "
            f"{info.sample_size}x{info.sample_size}x{info.in_channels}; use the dataset the checkpoint was trained on"
        )
    if len(dataset.heldout_indices()) < 2:
        raise InvalidInput(
            "the guided stage compares samples with held-out real images; ingest the dataset with heldout_fraction > 0"
        )
    labels = dataset.labels
    if info.num_class_embeds is not None:
        if labels is None:
            raise InvalidInput(
                "the checkpoint is class-conditional, so each class is guided with that class's hardness, but the "
                "dataset has no labels; upload the dataset with one folder per class (or an .npz with labels)"
            )
        num_classes = len(dataset.info.class_names or [])
        if num_classes != info.num_class_embeds:
            raise InvalidInput(
                f"the dataset has {num_classes} classes but the checkpoint {info.num_class_embeds}; "
                "use the dataset the checkpoint was trained on"
            )
    train, heldout = dataset.train_indices(), dataset.heldout_indices()
    return Split(
        train_images=np.asarray(dataset.images[train]),
        train_labels=None if labels is None else np.asarray(labels[train], dtype=np.int64),
        heldout_images=np.asarray(dataset.images[heldout]),
        heldout_labels=None if labels is None else np.asarray(labels[heldout], dtype=np.int64),
    )


def guidance_classifier(
    ctx: StageContext,
    real_x0: torch.Tensor,
    labels: np.ndarray | None,
    alphas_cumprod: torch.Tensor,
    progress: Progress,
) -> tuple[TimeConditionedCNN | None, dict[str, Any]]:
    """The uploaded classifier, the cached one, or one trained now; None for an unlabelled dataset."""
    spec: GuidedSpec = ctx.spec.guided
    if spec.classifier_weights is not None:
        path = local_weights_path(spec.classifier_weights, weights_dir=ctx.weights_dir)
        if path.suffix != ".safetensors":
            raise InvalidInput("guided.classifier_weights must be a .safetensors file saved by network_to_bytes")
        weights = path.read_bytes()
        network = network_from_bytes(weights, ctx.device)
        check_network(network, real_x0.shape[1], ctx.checkpoint.info.num_class_embeds or network.config["num_classes"])
        # the name the spec gave, never the worker's path
        return network, {
            "source": "uploaded",
            "weights": spec.classifier_weights,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
        }
    if labels is None:
        return None, {"source": "none: unlabelled dataset, the discriminator's embedding carries the hardness"}
    key = (
        f"guidance/{ctx.dataset.info.content_hash}/classifier-{schedule_hash(alphas_cumprod)}"
        f"-steps{spec.classifier_steps}-seed{spec.seed}-r{RECIPE_VERSION}.safetensors"
    )

    def trained() -> TimeConditionedCNN:
        return train_guidance_classifier(
            real_x0,
            torch.from_numpy(labels),
            alphas_cumprod,
            num_classes=len(ctx.dataset.info.class_names or []),
            seed=spec.seed,
            steps=spec.classifier_steps,
            device=ctx.device,
            progress=progress.callback("classifier", REPORT_EVERY),
        )

    network, cache_hit = get_or_compute(ctx.cache, key, trained, save_network, load_network(ctx.device))
    return network, {
        "source": "trained",
        "cache_key": key,
        "cache_hit": cache_hit,
        "train_steps": spec.classifier_steps,
    }


def check_network(network: TimeConditionedCNN, in_channels: int, num_classes: int) -> None:
    """An uploaded classifier must take the checkpoint's images and have one output per class."""
    config = network.config
    if config["in_channels"] != in_channels or config["num_classes"] != num_classes:
        raise InvalidInput(
            f"the uploaded guidance classifier takes {config['in_channels']} channel(s) and has "
            f"{config['num_classes']} classes; the checkpoint needs {in_channels} channel(s) and {num_classes} classes"
        )


def guidance_discriminator(
    ctx: StageContext,
    real_x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    num_synthetic: int,
    progress: Progress,
) -> tuple[TimeConditionedCNN, np.ndarray, dict[str, Any]]:
    """The real/synthetic discriminator of L_g2 and its synthetic training samples, cached or made now."""
    spec: GuidedSpec = ctx.spec.guided
    key = (
        f"guidance/{ctx.dataset.info.content_hash}/{ctx.checkpoint.info.content_hash}/discriminator-{spec.scheduler}"
        f"-{spec.steps}steps-{num_synthetic}samples-steps{spec.discriminator_steps}-seed{spec.seed}"
        f"-r{RECIPE_VERSION}.safetensors"
    )

    def trained() -> tuple[TimeConditionedCNN, np.ndarray]:
        synthetic = synthetic_images(ctx, num_synthetic, progress.callback("synthetic"))
        network = train_discriminator(
            real_x0,
            images_to_model_range(synthetic),
            alphas_cumprod,
            seed=spec.seed,
            steps=spec.discriminator_steps,
            device=ctx.device,
            progress=progress.callback("discriminator", REPORT_EVERY),
        )
        ctx.job.delete_prefix(f"{PREFIX}/{DISCRIMINATOR_SET}")
        return network, synthetic

    def save(cache: ArtifactStore, key: str, trained: tuple[TimeConditionedCNN, np.ndarray]) -> None:
        save_array(cache, synthetic_key(key), trained[1])
        save_network(cache, key, trained[0])

    def load(cache: ArtifactStore, key: str) -> tuple[TimeConditionedCNN, np.ndarray]:
        return load_network(ctx.device)(cache, key), load_array(cache, synthetic_key(key), mmap=False)

    (network, synthetic), cache_hit = get_or_compute(ctx.cache, key, trained, save, load)
    info = {"cache_key": key, "cache_hit": cache_hit, "train_steps": spec.discriminator_steps, "samples": num_synthetic}
    return network, synthetic, info


def save_network(cache: ArtifactStore, key: str, network: TimeConditionedCNN) -> None:
    cache.put_bytes(key, network_to_bytes(network))


def load_network(device: torch.device) -> Callable[[ArtifactStore, str], TimeConditionedCNN]:
    return lambda cache, key: network_from_bytes(cache.get_bytes(key), device)


def synthetic_key(discriminator_key: str) -> str:
    """Where the discriminator's synthetic training samples are kept next to it (its Gaussians need them)."""
    return discriminator_key.removesuffix(".safetensors") + "-samples.npy"


def synthetic_images(ctx: StageContext, count: int, report: ProgressFn) -> np.ndarray:
    """`count` ordinary samples of the checkpoint (seeds DISCRIMINATOR_SEED + i), batches kept in the job."""
    labels = class_labels_for(count, ctx.checkpoint.info.num_class_embeds, None)
    images, _ = draw_set(ctx, DISCRIMINATOR_SET, None, labels, report, seed=DISCRIMINATOR_SEED)
    return images


def classifier_accuracy(
    classifier: TimeConditionedCNN,
    images: np.ndarray,
    labels: np.ndarray,
    alphas_cumprod: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Accuracy of the guidance classifier on held-out images noised to a few timesteps (fixed noise seed 0)."""
    x0 = images_to_model_range(images)
    generator = torch.Generator().manual_seed(0)
    accuracy = {}
    with torch.no_grad():
        for t in ACCURACY_TIMESTEPS:
            timesteps = torch.full((len(x0),), t, dtype=torch.int64)
            x_t = add_noise(x0, timesteps, alphas_cumprod, torch.randn(x0.shape, generator=generator)).float()
            predicted = classifier(x_t.to(device), timesteps.to(device)).argmax(dim=1).cpu().numpy()
            accuracy[f"t{t}"] = float((predicted == labels).mean())
    return accuracy


def build_guidances(
    ctx: StageContext,
    pairs: list[tuple[float, float]],
    classifier: TimeConditionedCNN | None,
    discriminator: TimeConditionedCNN,
    real_x0: torch.Tensor,
    synthetic: np.ndarray,
    class_labels: np.ndarray | None,
    alphas_cumprod: torch.Tensor,
) -> dict[tuple[float, float], LowDensityGuidance]:
    """One LowDensityGuidance per pair, sharing the per-timestep Gaussians (App. A.1) fitted once here.

    class_labels: training labels for class-conditional guidance, None for the unlabelled hardness (one Gaussian).
    Without a classifier (unlabelled dataset) the discriminator's embedding carries L_g1.
    """
    spec: GuidedSpec = ctx.spec.guided
    timesteps = guidance_timesteps(make_scheduler(spec.scheduler, ctx.checkpoint.scheduler_config), spec.steps)
    embedding = classifier if classifier is not None else discriminator
    options: dict[str, Any] = {"seed": spec.seed, "device": ctx.device}
    class_gaussians = fit_timestep_gaussians(
        embedding, real_x0, None if class_labels is None else torch.from_numpy(class_labels), timesteps,
        alphas_cumprod, **options,
    )  # fmt: skip
    discriminator_gaussians = None
    if any(beta != 0 for _, beta in pairs):
        images, labels = real_versus_synthetic(real_x0, images_to_model_range(synthetic))
        discriminator_gaussians = fit_timestep_gaussians(
            discriminator, images, labels, timesteps, alphas_cumprod, **options
        )
    return {
        (alpha, beta): LowDensityGuidance(
            classifier=embedding,
            class_gaussians=class_gaussians,
            discriminator=discriminator,
            discriminator_gaussians=discriminator_gaussians,
            alpha=alpha,
            beta=beta,
            tau=spec.tau,
            norm=spec.norm,
        )
        for alpha, beta in pairs
    }


def draw_set(
    ctx: StageContext,
    name: str,
    guidance: LowDensityGuidance | None,
    labels: np.ndarray | None,
    report: ProgressFn,
    *,
    count: int | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, float]:
    """Samples 0..count-1 (sample i from seed + i, class labels[i]) with or without guidance, and the seconds spent
    drawing them, resumable by batch (diffaudit.common.batches) into `guided/<name>/images.npy`."""
    spec: GuidedSpec = ctx.spec.guided
    checkpoint: Checkpoint = ctx.checkpoint
    count = len(labels) if labels is not None else (count or spec.n)
    drawn = draw_resumable(
        Batches(ctx.job, f"{PREFIX}/{name}/images.npy", f"{PREFIX}/{name}/batches"),
        unet=checkpoint.unet,
        scheduler=make_scheduler(spec.scheduler, checkpoint.scheduler_config),
        n=count,
        steps=spec.steps,
        seed=spec.seed if seed is None else seed,
        batch_size=spec.batch_size,
        class_labels=labels,
        device=ctx.device,
        guidance=guidance,
        report=report,
        check_cancelled=ctx.check_cancelled,
    )
    return np.array(drawn.images), drawn.seconds


def memorization_check(ctx: StageContext, density: DensityReport, name: str, images: np.ndarray) -> dict[str, Any]:
    """Sec. 5: mean nearest-neighbour distance guided -> training versus held-out real -> training, and a grid
    (`guided/memorization.png`) of the closest pairs, guided sample left, its nearest training image right."""
    nearest = nearest_neighbours(density.features[name], density.train, 1)
    distances, indices = nearest.distances[:, 0], nearest.indices[:, 0]
    heldout = knn_distances(density.features["real"], density.train, 1)[:, 0]
    closest = np.argsort(distances, kind="stable")[:MEMORIZATION_PAIRS]
    train_images = ctx.dataset.images[ctx.dataset.train_indices()[indices[closest]]]
    pairs = np.stack([images[closest], train_images], axis=1).reshape(-1, *images.shape[1:])
    ctx.job.put_bytes(f"{PREFIX}/memorization.png", png_bytes(image_grid(pairs, ncols=8)))
    return {
        "set": name,
        "guided_to_train_mean": float(distances.mean()),
        "heldout_to_train_mean": float(heldout.mean()),
        "ratio": float(distances.mean() / heldout.mean()),
        "closest_distance": float(distances[closest[0]]),
        "heldout_closest_distance": float(heldout.min()),
    }


def cost_table(
    density: DensityReport, name: str, seconds_per_baseline: float, seconds_per_guided: float
) -> list[dict[str, Any]]:
    """Table 1: cost of COST_SAMPLES_WANTED samples from hardness ranges at percentiles of the held-out real data."""
    real = density.values["real"]["hardness"]
    edges = [*np.percentile(real, COST_PERCENTILES), math.inf]
    ranges = list(itertools.pairwise(edges))
    rows = rejection_sampling_cost(
        density.values["baseline"]["hardness"],
        density.values[name]["hardness"],
        ranges,
        seconds_per_baseline_sample=seconds_per_baseline,
        seconds_per_guided_sample=seconds_per_guided,
        num_wanted=COST_SAMPLES_WANTED,
    )
    labels = [f"p{a:g}-p{b:g}" for a, b in zip(COST_PERCENTILES, [*COST_PERCENTILES[1:], 100.0], strict=True)]
    return [{"percentiles": label, **finite_or_none(row)} for label, row in zip(labels, rows, strict=True)]


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def finite_or_none(row: dict[str, float]) -> dict[str, float | None]:
    """JSON has no infinity or NaN: an unbounded range or an impossible cost becomes null."""
    return {key: value if math.isfinite(value) else None for key, value in row.items()}


def headline(summary: dict[str, Any], name: str) -> str:
    baseline, guided = summary["sets"]["baseline"], summary["sets"][name]
    pair = summary["pairs"][0]
    hardness = guided["versus_baseline"]["hardness"]
    knn = guided["versus_baseline"]["avg_knn"]
    return (
        f"guided (alpha={pair['alpha']:g}, beta={pair['beta']:g}) vs baseline, {summary['n']} samples each: "
        f"hardness {baseline['hardness']['mean']:.1f} -> {guided['hardness']['mean']:.1f} "
        f"(d={hardness['cohens_d']:.2f}, p={hardness['welch_t_p']:.1g}), "
        f"AvgkNN {baseline['avg_knn']['mean']:.3g} -> {guided['avg_knn']['mean']:.3g} (d={knn['cohens_d']:.2f}), "
        f"precision {baseline['precision']:.2f} -> {guided['precision']:.2f}"
    )
