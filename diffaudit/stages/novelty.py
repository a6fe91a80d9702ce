"""The `novelty` stage: diverse samples (DS), "The deficit of new information in diffusion
models", Sec. 3.5, Algorithms 1-2, Tables 1-4.

For the job's samples and features (the `sample` and `features` stages) it runs the t-SNE + Quickhull
detection over several seeds (diffaudit.metrics.novelty), the k-NN support detector, the entropy and
KL estimates, and stores the artifacts: t-SNE scatter plot, the paper's Fig. 1 (DS beside ordinary
samples and training images) and a zip of the DS images with their scores.

Solver comparison (Table 1, Table 3): `novelty.solvers` adds samplers, each drawing sample.n samples
from sample.seed (so sample i starts from the same noise under every solver), and
`novelty.extractors` adds feature extractors. Every (solver, extractor) pair gets a row with its DS
count and rate and the time each part took. In `fixed` mode all solvers share one training
embedding per extractor, cached in the shared cache under the dataset's content hash.

Resumable: extra solvers' samples keep their finished batches, every row's features and result are
stored as they are made, and a job resumed after an interruption picks up at the first missing piece.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffaudit.checkpoints import class_labels_for, make_scheduler
from diffaudit.common.batches import Batches, draw_resumable
from diffaudit.features.cache import extract_features
from diffaudit.features.extractors import Extractor
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.novelty import (
    FixedEmbedding,
    TsneDetection,
    hull_margin,
    knn_radii,
    majority,
    novelty_report,
    outside_knn_balls,
    seed_summary,
    training_hull,
)
from diffaudit.plots.novelty import figure_one_png, tsne_plot_png
from diffaudit.retrieval.knn import nearest_neighbours
from diffaudit.stages import artifacts
from diffaudit.stages.artifacts import DS_KEY
from diffaudit.stages.base import Queue, StageContext
from diffaudit.stages.diverse_samples import (
    ExtractorRef,
    cached_fixed_embedding,
    detect,
    extractors_of,
    fixed_embedding_prefix,
    make_extractor,
    training_rows,
    tsne_params,
)
from diffaudit.store import load_array, load_json, save_array, save_json

TRAIN_2D_KEY = "novelty/train_2d.npy"
GENERATED_2D_KEY = "novelty/generated_2d.npy"
OUTSIDE_KEY = "novelty/outside.npy"  # (n_seeds, n) bool: outside the hull, per seed
KNN_OUTSIDE_KEY = "novelty/knn_outside.npy"  # (n,) bool: outside every training k-NN ball
TSNE_PNG_KEY = "novelty/tsne.png"
FIGURE_KEY = "novelty/diverse_samples.png"
ZIP_KEY = "novelty/diverse_samples.zip"
ROWS_PREFIX = "novelty/rows"
SOLVERS_PREFIX = "novelty/solvers"
FEATURES_PREFIX = "novelty/features"
FIXED_MODE_LIMITATION = (
    "fixed mode places generated points one by one into the training embedding, so a new cluster of generated "
    "samples does not form its own island as in the joint mode (the authors' method) and is often missed; "
    "read knn_support beside it (docs/novelty.md)"
)
FIGURE_TILES = 36  # images per panel of the Fig. 1 artifact


@dataclass(frozen=True)
class Solver:
    scheduler: str
    steps: int
    from_sample_stage: bool

    @property
    def label(self) -> str:
        return f"{self.scheduler}-{self.steps}"


def solvers_of(ctx: StageContext) -> list[Solver]:
    """The sample stage's solver first, then the requested ones (repeats dropped)."""
    solvers = [Solver(ctx.spec.sample.scheduler, ctx.spec.sample.steps, True)]
    for choice in ctx.spec.novelty.solvers:
        if all(s.label != f"{choice.scheduler}-{choice.steps}" for s in solvers):
            solvers.append(Solver(choice.scheduler, choice.steps, False))
    return solvers


# --- samples and features of every (solver, extractor) ---------------------------------------


def solver_images(ctx: StageContext, solver: Solver) -> tuple[np.ndarray, float | None]:
    """The solver's samples (drawn and stored on first use, resumable by batch) and the seconds drawing took."""
    if solver.from_sample_stage:
        return artifacts.samples(ctx), artifacts.summary_of(ctx, "sample").seconds
    sample, checkpoint = ctx.spec.sample, ctx.checkpoint
    where = f"{SOLVERS_PREFIX}/{solver.label}/sample"
    drawn = draw_resumable(
        Batches(ctx.job, f"{where}/images.npy", f"{where}/batches"),
        unet=checkpoint.unet,
        scheduler=make_scheduler(solver.scheduler, checkpoint.scheduler_config),
        n=sample.n,
        steps=solver.steps,
        seed=sample.seed,
        batch_size=sample.batch_size,
        class_labels=class_labels_for(sample.n, checkpoint.info.num_class_embeds, sample.class_label),
        device=ctx.device,
        check_cancelled=ctx.check_cancelled,
    )
    return drawn.images, drawn.seconds


def generated_features(
    ctx: StageContext, solver: Solver, ref: ExtractorRef, extractor: Extractor, images: np.ndarray
) -> tuple[np.ndarray, float]:
    """Features of the solver's samples under the extractor (the features stage's when both are the job's)."""
    if solver.from_sample_stage and ref.from_features_stage:
        return artifacts.generated_features(ctx), 0.0
    key = f"{FEATURES_PREFIX}/{solver.label}/{extractor.cache_key()}.npy"
    started = time.perf_counter()
    if not ctx.job.exists(key):
        batch_size = ctx.spec.features.batch_size
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "features.npy"
            batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
            extract_features(extractor, batches, len(images), path, lambda done, total: ctx.check_cancelled())
            ctx.job.put_file(key, path)
    return load_array(ctx.job, key), time.perf_counter() - started


def heldout_rows(ctx: StageContext) -> np.ndarray:
    """Features of the held-out split under the features stage's extractor (possibly empty)."""
    return np.asarray(artifacts.dataset_features(ctx)[ctx.dataset.heldout_indices()], dtype=np.float32)


# --- one row of the comparison ----------------------------------------------------------------


def table_row(
    solver: Solver,
    extractor_name: str,
    random_init: bool | None,
    detection: TsneDetection,
    knn_outside: np.ndarray,
    seconds: dict[str, float | None],
) -> dict[str, Any]:
    """Table 1 / Table 3 row: DS count and rate of one (solver, extractor), with the time each part took."""
    summary = seed_summary(detection.outside, detection.seeds)
    return {
        "scheduler": solver.scheduler,
        "steps": solver.steps,
        "extractor": extractor_name,
        "random_init": random_init,
        "n": int(detection.outside.shape[1]),
        "ds_count": summary["majority_count"],
        "ds_rate": summary["majority_rate"],
        "ds_count_per_seed": summary["count_per_seed"],
        "ds_count_std": summary["count_std"],
        "ds_jaccard_mean": summary["jaccard_mean"],
        "knn_support_count": int(np.sum(knn_outside)),
        "sampling_seconds": None if seconds["sampling"] is None else round(seconds["sampling"], 3),
        "features_seconds": round(float(seconds["features"] or 0.0), 3),
        "detection_seconds": round(float(seconds["detection"] or 0.0), 3),
    }


# --- artifacts of the job's own samples -------------------------------------------------------


def ds_scores(
    detection: TsneDetection, knn_outside: np.ndarray, train: np.ndarray, generated: np.ndarray, device: Any
) -> list[dict[str, Any]]:
    """One row per majority DS, best first: seeds voting, mean signed distance outside the hull, k-NN flag."""
    ds = np.flatnonzero(majority(detection.outside))
    if len(ds) == 0:
        return []
    margins = np.stack(
        [hull_margin(training_hull(t), g[ds]) for t, g in zip(detection.train_2d, detection.generated_2d, strict=True)]
    )
    votes = detection.outside[:, ds].sum(axis=0)
    nearest = nearest_neighbours(np.asarray(generated[ds], dtype=np.float32), train, k=1, device=device).distances[:, 0]
    rows = [
        {
            "sample_index": int(i),
            "tsne_votes": int(v),
            "tsne_seeds": len(detection.seeds),
            "hull_margin_mean": float(m),
            "knn_outside": bool(knn_outside[i]),
            "nearest_training_distance": float(d),
        }
        for i, v, m, d in zip(ds, votes, margins.mean(axis=0), nearest, strict=True)
    ]
    return sorted(rows, key=lambda r: (-r["tsne_votes"], -r["hull_margin_mean"]))


def ds_zip(images: np.ndarray, labels: np.ndarray | None, scores: list[dict[str, Any]], limit: int) -> bytes:
    """A zip of the (best `limit`) DS images as PNG files, with scores.csv describing each."""
    buffer = io.BytesIO()
    table = io.StringIO()
    columns = ["rank", "file", "sample_index", "class_label", *list(scores[0])[1:]] if scores else ["rank", "file"]
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rank, row in enumerate(scores[:limit]):
            i = row["sample_index"]
            name = f"ds_{rank:05d}_sample{i}.png"
            archive.writestr(name, png_bytes(image_grid(images[i : i + 1], scale=1, pad=0)))
            label = None if labels is None else int(labels[i])
            writer.writerow({"rank": rank, "file": name, "class_label": label, **row})
        archive.writestr("scores.csv", table.getvalue())
    return buffer.getvalue()


def store_artifacts(
    ctx: StageContext,
    detection: TsneDetection,
    knn_outside: np.ndarray,
    train: np.ndarray,
    generated: np.ndarray,
) -> list[dict[str, Any]]:
    """Arrays, t-SNE plot, Fig. 1 and the DS zip of the job's own samples; returns the DS scores."""
    job, spec = ctx.job, ctx.spec.novelty
    save_array(job, TRAIN_2D_KEY, detection.train_2d.astype(np.float32))
    save_array(job, GENERATED_2D_KEY, detection.generated_2d.astype(np.float32))
    save_array(job, OUTSIDE_KEY, detection.outside)
    ds = majority(detection.outside)
    save_array(job, DS_KEY, ds)
    save_array(job, KNN_OUTSIDE_KEY, knn_outside)
    job.put_bytes(TSNE_PNG_KEY, tsne_plot_png(detection, 0))
    images, labels = artifacts.samples(ctx), artifacts.sample_labels(ctx)
    scores = ds_scores(detection, knn_outside, train, generated, ctx.device)
    shown = [r["sample_index"] for r in scores[:FIGURE_TILES]]
    ordinary = np.flatnonzero(~ds)[:FIGURE_TILES]
    training_images = training_image_examples(ctx)
    job.put_bytes(FIGURE_KEY, figure_one_png(images[shown], images[ordinary], training_images))
    job.put_bytes(ZIP_KEY, ds_zip(images, labels, scores, spec.zip_limit))
    return scores


def training_image_examples(ctx: StageContext) -> np.ndarray:
    """Evenly spaced training images for Fig. 1 (none for a dataset of features)."""
    dataset = ctx.dataset
    if dataset.info.kind == "features":
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    train = dataset.train_indices()
    picks = train[np.linspace(0, len(train) - 1, min(FIGURE_TILES, len(train))).astype(int)]
    return np.asarray(dataset.images[np.sort(picks)])


def heldout_baseline(ctx: StageContext, train: np.ndarray, radii: np.ndarray) -> dict[str, Any]:
    """Share of held-out REAL images outside every training k-NN ball: the detector's rate on in-distribution data."""
    heldout = heldout_rows(ctx)
    if len(heldout) == 0:
        return {"heldout_n": 0, "heldout_rate": None}
    outside = outside_knn_balls(train, heldout, ctx.spec.novelty.knn_k, radii, device=ctx.device)
    return {"heldout_n": len(heldout), "heldout_rate": float(np.mean(outside))}


# --- the stage ----------------------------------------------------------------------------------


def headline(summary: dict[str, Any]) -> str:
    tsne, support, info = summary["tsne"], summary["knn_support"], summary["information"]
    per_seed = "/".join(str(c) for c in tsne["count_per_seed"])
    rate = support.get("heldout_rate")
    baseline = "" if rate is None else f" (held-out real images: {100 * rate:.0f}%)"
    text = (
        f"DS ({tsne['mode']} t-SNE, majority of {len(tsne['seeds'])} seeds): {tsne['majority_count']} of "
        f"{summary['n_generated']} ({100 * tsne['majority_rate']:.1f}%; per seed {per_seed}, Jaccard "
        f"{tsne['jaccard_mean']:.2f}); outside every {support['k']}-NN ball: {support['count']}{baseline}; "
        f"agreement kappa {summary['agreement']['cohen_kappa']:.2f}; KL(gen||train) "
        f"{info['kl_generated_train']:.2f} +- {info['kl_generated_train_se']:.2f} nats"
    )
    rows = summary["table"]
    if len(rows) > 1:
        text += "; DS by solver/extractor: " + ", ".join(
            f"{r['scheduler']}-{r['steps']}/{r['extractor']} {r['ds_count']}" for r in rows
        )
    return text


class NoveltyStage:
    name = "novelty"
    # gpu: besides statistics, this stage runs the UNet (extra solvers' samples) and extractors (their features)
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.novelty
        solvers, refs = solvers_of(ctx), extractors_of(ctx)
        total, done = len(solvers) * len(refs), 0
        ctx.report(0, total)
        extractors = {r: make_extractor(ctx, r) for r in refs}
        trainings = {r: training_rows(ctx, r, extractors[r]) for r in refs}
        embeddings: dict[ExtractorRef, tuple[FixedEmbedding | None, bool | None]] = {}
        radii: dict[ExtractorRef, np.ndarray] = {}  # training k-NN radii, shared by every solver
        rows: list[dict[str, Any]] = []
        report: dict[str, Any] = {}
        for solver in solvers:
            images, sampling_seconds = solver_images(ctx, solver)
            for ref in refs:
                ctx.check_cancelled()
                row_key = f"{ROWS_PREFIX}/{solver.label}/{extractors[ref].cache_key()}.json"
                primary = solver.from_sample_stage and ref.from_features_stage
                if ctx.job.exists(row_key) and not primary:
                    rows.append(load_json(ctx.job, row_key))
                    done += 1
                    ctx.report(done, total)
                    continue
                train, features_name = trainings[ref]
                generated, features_seconds = generated_features(ctx, solver, ref, extractors[ref], images)
                started = time.perf_counter()
                params = tsne_params(spec, len(train))
                if spec.mode == "fixed" and ref not in embeddings:
                    prefix = fixed_embedding_prefix(ctx, features_name, tuple(range(spec.seeds)), params)
                    embeddings[ref] = cached_fixed_embedding(
                        ctx.cache, prefix, train, tuple(range(spec.seeds)), params, ctx.device
                    )
                fixed = embeddings.get(ref, (None, None))[0]
                detection = detect(train, generated, spec, params, fixed)
                if ref not in radii:
                    radii[ref] = knn_radii(train, spec.knn_k, ctx.device)
                knn_outside = outside_knn_balls(train, generated, spec.knn_k, radii[ref], device=ctx.device)
                seconds = {"sampling": sampling_seconds, "features": features_seconds}
                seconds["detection"] = time.perf_counter() - started
                extractor = extractors[ref]
                row = table_row(solver, extractor.name, extractor.random_init, detection, knn_outside, seconds)
                if primary:
                    report = novelty_report(
                        train,
                        generated,
                        detection,
                        spec.knn_k,
                        spec.entropy_dims,
                        spec.entropy_k,
                        spec.n_rounds,
                        device=ctx.device,
                        support_ds=knn_outside,
                    )
                    report["knn_support"].update(heldout_baseline(ctx, train, radii[ref]))
                    scores = store_artifacts(ctx, detection, knn_outside, train, generated)
                    report["ds_top"] = scores[:10]
                save_json(ctx.job, row_key, row)
                rows.append(row)
                done += 1
                ctx.report(done, total)
        report["tsne"].pop("majority_indices")  # in novelty/ds.npy; keeps the summary small
        report["knn_support"].pop("indices")  # in novelty/knn_outside.npy
        fixed_info = {ref.name: {"cache_hit": hit} for ref, (_, hit) in embeddings.items()}
        summary = {
            **report,
            "mode": spec.mode,
            "limitation": FIXED_MODE_LIMITATION if spec.mode == "fixed" else None,
            "fixed_embedding": fixed_info or None,
            "table": rows,
            "artifacts": [TSNE_PNG_KEY, FIGURE_KEY, ZIP_KEY, DS_KEY, OUTSIDE_KEY, GENERATED_2D_KEY, KNN_OUTSIDE_KEY],
        }
        summary["headline"] = headline(summary)
        return summary
