"""The `augmentation` stage: are diverse samples better training data? ("The deficit of new information in
diffusion models", Sec. 4, Table 2).

On a labelled image dataset with a held-out split, the same small classifier
(diffaudit.metrics.augmentation) is trained, once per seed, on
  (a) `original`:  the training split (optionally made imbalanced on purpose: only
                   `minority_keep_fraction` of `minority_class`'s training images are kept),
  (b) `generated`: (a) plus ordinary generated samples (not flagged by the novelty stage),
  (c) `diverse`:   (a) plus the same number of diverse samples (DS: `novelty/ds.npy`, the
                   novelty stage's majority over t-SNE seeds),
and evaluated per class and overall on the held-out split.

Which samples are added, as in the paper: when one class is a minority (`minority_class`, or
else the smallest class if it has fewer than IMBALANCE_RATIO times the images of the largest),
only that class is topped up, with as many generated samples of it as it lacks to match the
largest other class. Otherwise every DS of the job is added, per class, with as many ordinary
samples of each class. (b) and (c) always add the same number of samples of each class.

Labels of generated samples come from `sample/labels.npy`: the stage needs a class-conditional
checkpoint and refuses unconditional ones (it does not guess labels with a classifier).

When the job holds fewer DS of the minority class than the top-up needs, more samples of that
class are drawn with the job's sampler (scheduler, steps; sample j of the extra ones uses seed
sample.seed + sample.n + j), embedded by the features stage's extractor and tested by the
novelty stage's detector with its settings (in `fixed` mode against the same cached training
embedding; in `joint` mode by a t-SNE of the training points with each round's extra samples),
round by round, until there are enough or `max_extra_samples` is reached. A shortfall is
reported, and (b) and (c) then add the DS found and as many ordinary samples.

Artifacts (under `augmentation/`): table.json (every class and condition, with per-seed
accuracies and the training-set counts), accuracy.png (bar chart), added_diverse.png and
added_generated.png (the added samples), runs/<condition>/seed<k>.npy (confusion matrices,
kept so an interrupted job resumes after its last finished training), extra/<start>_*.npy (the
extra samples drawn, their labels and DS flags).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffaudit.checkpoints import make_scheduler, sample_batches
from diffaudit.imaging import image_grid, png_bytes
from diffaudit.metrics.augmentation import (
    CONDITIONS,
    Additions,
    choose_additions,
    class_counts,
    classifier_pixels,
    confusion_matrix,
    find_minority,
    keep_fraction_of_class,
    overall_accuracy,
    per_class_accuracy,
    predict,
    spread,
    top_up_count,
    train_classifier,
)
from diffaudit.metrics.novelty import majority
from diffaudit.pipeline import Queue, StageContext
from diffaudit.spec import AugmentationSpec
from diffaudit.stages.novelty import (
    DS_KEY,
    cached_fixed_embedding,
    detect,
    extractors_of,
    fixed_embedding_prefix,
    make_extractor,
    training_rows,
    tsne_params,
)
from diffaudit.store import load_array, save_array, save_json

PREFIX = "augmentation"
SAMPLES_KEY = "sample/images.npy"
LABELS_KEY = "sample/labels.npy"
TABLE_KEY = f"{PREFIX}/table.json"
CHART_KEY = f"{PREFIX}/accuracy.png"
EXTRA_PREFIX = f"{PREFIX}/extra"
RUNS_PREFIX = f"{PREFIX}/runs"
SELECTION_SEED = 0  # which minority images are kept and which generated samples are added: same for every seed
IMBALANCE_RATIO = 0.5  # without minority_class, a class with < half the images of the largest is topped up
EXTRA_ROUND = 256  # extra samples drawn (then embedded and tested) per round
GRID_SAMPLES = 64
CHART_LABELS = {"original": "original (OI)", "generated": "+ generated (VGS)", "diverse": "+ diverse samples (DS)"}


@dataclass
class Pool:
    """The generated samples to choose from: the job's, then any extra ones drawn here."""

    images: np.ndarray
    labels: np.ndarray
    is_ds: np.ndarray  # novelty/ds.npy for the job's samples, the same test for the extra ones
    n_extra: int
    n_job: int

    def ds_count(self, class_index: int | None) -> int:
        """DS among the samples of one class (all samples when None)."""
        return int(np.sum(self.is_ds if class_index is None else self.is_ds & (self.labels == class_index)))


# --- inputs -------------------------------------------------------------------------------


def check_inputs(ctx: StageContext, spec: AugmentationSpec) -> np.ndarray:
    """Refuse what the stage cannot compute, saying what to change; returns the dataset's labels."""
    dataset = ctx.dataset
    if dataset.info.kind != "images" or dataset.labels is None or dataset.info.class_names is None:
        raise ValueError("the augmentation stage trains an image classifier: it needs a labelled dataset of images")
    if dataset.info.heldout_count == 0:
        raise ValueError("the augmentation stage evaluates on the held-out split: ingest with heldout_fraction > 0")
    if not ctx.job.exists(LABELS_KEY):
        raise ValueError(
            "the generated samples have no labels (unconditional checkpoint): the augmentation stage needs a "
            "class-conditional checkpoint (UNet with num_class_embeds) so that each sample's class is known"
        )
    if not ctx.job.exists(DS_KEY):
        raise ValueError(f"{DS_KEY} is missing: the augmentation stage needs the novelty stage before it")
    num_classes = len(dataset.info.class_names)
    generated_labels = load_array(ctx.job, LABELS_KEY)
    if generated_labels.size and int(generated_labels.max()) >= num_classes:
        raise ValueError(
            f"the checkpoint generates class {int(generated_labels.max())} but the dataset has {num_classes} classes"
        )
    if load_array(ctx.job, SAMPLES_KEY).shape[1:] != dataset.info.item_shape:
        raise ValueError("generated samples and dataset images differ in shape: they cannot train one classifier")
    if spec.minority_class is not None and spec.minority_class >= num_classes:
        raise ValueError(f"augmentation.minority_class {spec.minority_class} is not one of the {num_classes} classes")
    return np.asarray(dataset.labels)


def kept_training_indices(ctx: StageContext, spec: AugmentationSpec, labels: np.ndarray) -> np.ndarray:
    """Dataset indices of condition (a): the training split, minus the minority images not kept."""
    train = ctx.dataset.train_indices()
    if spec.minority_class is None or spec.minority_keep_fraction == 1.0:
        return train
    keep = keep_fraction_of_class(labels[train], spec.minority_class, spec.minority_keep_fraction, SELECTION_SEED)
    return train[keep]


# --- extra samples of the minority class ------------------------------------------------------


DetectFn = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC images -> DS flag of each


def extra_ds_detector(ctx: StageContext) -> DetectFn:
    """The novelty stage's DS test (majority over its seeds) for new images, with its extractor and settings."""
    spec = ctx.spec.novelty
    ref = extractors_of(ctx)[0]  # the features stage's extractor
    extractor = make_extractor(ctx, ref)
    train, features_name = training_rows(ctx, ref, extractor)
    params = tsne_params(spec, len(train))
    seeds = tuple(range(spec.seeds))
    fixed = None
    if spec.mode == "fixed":
        prefix = fixed_embedding_prefix(ctx, features_name, seeds, params)
        fixed, _ = cached_fixed_embedding(ctx.cache, prefix, train, seeds, params, ctx.device)

    def ds_of(images: np.ndarray) -> np.ndarray:
        batch = ctx.spec.features.batch_size
        features = np.concatenate([extractor(images[s : s + batch]) for s in range(0, len(images), batch)])
        return majority(detect(train, features, spec, params, fixed).outside)

    return ds_of


def draw_extra_round(ctx: StageContext, start: int, count: int, minority: int, ds_of: DetectFn) -> None:
    """Draw extra samples start..start+count-1 of the minority class, test them, store them."""
    sample = ctx.spec.sample
    checkpoint = ctx.checkpoint
    labels = np.full(count, minority, dtype=np.int64)
    batches = sample_batches(
        checkpoint.unet,
        make_scheduler(sample.scheduler, checkpoint.scheduler_config),
        n=count,
        steps=sample.steps,
        seed=sample.seed + sample.n + start,
        batch_size=sample.batch_size,
        class_labels=labels,
        device=ctx.device,
        check_cancelled=ctx.check_cancelled,
    )
    images = []
    for _, batch in batches:
        images.append(batch)
        ctx.check_cancelled()
    drawn = np.concatenate(images)
    save_array(ctx.job, f"{EXTRA_PREFIX}/{start:08d}_ds.npy", ds_of(drawn))
    save_array(ctx.job, f"{EXTRA_PREFIX}/{start:08d}_labels.npy", labels)
    save_array(ctx.job, f"{EXTRA_PREFIX}/{start:08d}_images.npy", drawn)  # last: its presence marks the round done


def generated_pool(ctx: StageContext, spec: AugmentationSpec, minority: int | None, wanted: int) -> Pool:
    """The job's samples, plus extra minority samples until `wanted` DS of it exist or the cap is reached."""
    images = [np.asarray(load_array(ctx.job, SAMPLES_KEY))]
    labels = [np.asarray(load_array(ctx.job, LABELS_KEY))]
    is_ds = [np.asarray(load_array(ctx.job, DS_KEY), dtype=bool)]
    n_extra = 0
    ds_of: DetectFn | None = None

    def found() -> int:
        return sum(int(np.sum(d & (lab == minority))) for d, lab in zip(is_ds, labels, strict=True))

    while minority is not None and found() < wanted and n_extra < spec.max_extra_samples:
        count = min(EXTRA_ROUND, spec.max_extra_samples - n_extra)
        if not ctx.job.exists(f"{EXTRA_PREFIX}/{n_extra:08d}_images.npy"):
            ctx.report(n_extra, spec.max_extra_samples)
            ds_of = ds_of or extra_ds_detector(ctx)
            draw_extra_round(ctx, n_extra, count, minority, ds_of)
        images.append(load_array(ctx.job, f"{EXTRA_PREFIX}/{n_extra:08d}_images.npy", mmap=False))
        labels.append(load_array(ctx.job, f"{EXTRA_PREFIX}/{n_extra:08d}_labels.npy", mmap=False))
        is_ds.append(load_array(ctx.job, f"{EXTRA_PREFIX}/{n_extra:08d}_ds.npy", mmap=False).astype(bool))
        n_extra += count
    return Pool(np.concatenate(images), np.concatenate(labels), np.concatenate(is_ds), n_extra, len(images[0]))


# --- training and the table -----------------------------------------------------------------


def condition_training_set(
    ctx: StageContext, kept: np.ndarray, labels: np.ndarray, pool: Pool, additions: Additions, condition: str
) -> tuple[torch.Tensor, np.ndarray]:
    """Classifier pixels and labels of one condition's training set."""
    added = {"original": np.zeros(0, dtype=np.int64), "generated": additions.generated, "diverse": additions.diverse}[
        condition
    ]
    images = np.concatenate([ctx.dataset.images[kept], pool.images[added]])
    return classifier_pixels(images), np.concatenate([labels[kept], pool.labels[added]])


def run_trainings(
    ctx: StageContext, spec: AugmentationSpec, kept: np.ndarray, labels: np.ndarray, pool: Pool, additions: Additions
) -> dict[str, list[np.ndarray]]:
    """Confusion matrices on the held-out split, per condition and seed (stored as they finish)."""
    num_classes = len(ctx.dataset.info.class_names or [])
    heldout = ctx.dataset.heldout_indices()
    test_pixels = classifier_pixels(ctx.dataset.images[heldout])
    total = len(CONDITIONS) * spec.seeds * spec.epochs
    confusions: dict[str, list[np.ndarray]] = {c: [] for c in CONDITIONS}
    for c_index, condition in enumerate(CONDITIONS):
        pixels, train_labels = condition_training_set(ctx, kept, labels, pool, additions, condition)
        for seed in range(spec.seeds):
            key = f"{RUNS_PREFIX}/{condition}/seed{seed}.npy"
            done_before = (c_index * spec.seeds + seed) * spec.epochs
            if not ctx.job.exists(key):

                def on_epoch(epoch: int, done_before: int = done_before) -> None:
                    ctx.check_cancelled()
                    ctx.report(done_before + epoch, total)

                model = train_classifier(
                    pixels,
                    train_labels,
                    num_classes,
                    epochs=spec.epochs,
                    seed=seed,
                    device=ctx.device,
                    on_epoch=on_epoch,
                )
                predicted = predict(model, test_pixels, ctx.device)
                save_array(ctx.job, key, confusion_matrix(labels[heldout], predicted, num_classes))
            confusions[condition].append(np.asarray(load_array(ctx.job, key, mmap=False)))
    ctx.report(total, total)
    return confusions


def accuracy_table(
    class_names: list[str],
    train_counts: dict[str, np.ndarray],
    confusions: dict[str, list[np.ndarray]],
) -> dict[str, Any]:
    """Paper Table 2 for every class and overall: training counts, test counts, accuracy over seeds."""
    test_counts = confusions[CONDITIONS[0]][0].sum(axis=1)
    rows = []
    for c, name in enumerate(class_names):
        accuracy = {k: spread([float(per_class_accuracy(m)[c]) for m in confusions[k]]) for k in CONDITIONS}
        rows.append(
            {
                "class": c,
                "name": name,
                "train": {k: int(train_counts[k][c]) for k in CONDITIONS},
                "test": int(test_counts[c]),
                "accuracy": accuracy,
            }
        )
    overall = {
        "train": {k: int(train_counts[k].sum()) for k in CONDITIONS},
        "test": int(test_counts.sum()),
        "accuracy": {k: spread([overall_accuracy(m) for m in confusions[k]]) for k in CONDITIONS},
    }
    return {"conditions": list(CONDITIONS), "classes": rows, "overall": overall}


def chart_png(table: dict[str, Any], title: str) -> bytes:
    """Grouped bars: accuracy per class and overall for each condition, with the spread over seeds."""
    groups = [*(row["name"] for row in table["classes"]), "overall"]
    rows = [*table["classes"], table["overall"]]
    figure = Figure(figsize=(max(6.0, 0.7 * len(groups) + 2), 4))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    width = 0.8 / len(CONDITIONS)
    for i, condition in enumerate(CONDITIONS):
        means = [row["accuracy"][condition]["mean"] for row in rows]
        stds = [row["accuracy"][condition]["std"] for row in rows]
        positions = np.arange(len(groups)) + (i - (len(CONDITIONS) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=stds, capsize=2, label=CHART_LABELS[condition])
    axis.set_xticks(np.arange(len(groups)), groups)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("held-out accuracy")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def headline(table: dict[str, Any], minority: int | None, added: int, wanted: int, seeds: int) -> str:
    def trio(accuracy: dict[str, Any]) -> str:
        return " / ".join(f"{accuracy[k]['mean']:.3f}" for k in CONDITIONS)

    overall = f"overall accuracy {trio(table['overall']['accuracy'])}"
    order = "original / +generated / +DS"
    if minority is None:
        return f"{added} generated samples and {added} DS added: {overall} ({order}, mean of {seeds} seeds)"
    name = table["classes"][minority]["name"]
    return (
        f"class {name} topped up with {added} of {wanted} samples: its accuracy "
        f"{trio(table['classes'][minority]['accuracy'])}, {overall} ({order}, mean of {seeds} seeds)"
    )


class AugmentationStage:
    name = "augmentation"
    queue: Queue = "gpu"

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.augmentation
        labels = check_inputs(ctx, spec)
        class_names = list(ctx.dataset.info.class_names or [])
        num_classes = len(class_names)
        kept = kept_training_indices(ctx, spec, labels)
        original_counts = class_counts(labels[kept], num_classes)
        minority = (
            spec.minority_class if spec.minority_class is not None else find_minority(original_counts, IMBALANCE_RATIO)
        )

        job_ds = np.asarray(load_array(ctx.job, DS_KEY), dtype=bool)
        job_labels = np.asarray(load_array(ctx.job, LABELS_KEY))
        if minority is None:
            wanted = class_counts(job_labels[job_ds], num_classes)  # every DS, with as many ordinary samples
        else:
            wanted = np.zeros(num_classes, dtype=np.int64)
            wanted[minority] = top_up_count(original_counts, minority)
        pool = generated_pool(ctx, spec, minority, int(wanted.sum()))
        additions = choose_additions(pool.labels, pool.is_ds, wanted, SELECTION_SEED)
        for condition in ("generated", "diverse"):
            chosen = getattr(additions, condition)
            if len(chosen):
                grid = image_grid(pool.images[chosen[:GRID_SAMPLES]])
                ctx.job.put_bytes(f"{PREFIX}/added_{condition}.png", png_bytes(grid))

        confusions = run_trainings(ctx, spec, kept, labels, pool, additions)
        train_counts = {k: original_counts + (0 if k == "original" else additions.added) for k in CONDITIONS}
        table = accuracy_table(class_names, train_counts, confusions)
        added, wanted_total = int(additions.added.sum()), int(wanted.sum())
        table["setup"] = {
            "minority_class": minority,
            "minority_keep_fraction": spec.minority_keep_fraction,
            "wanted_per_class": [int(w) for w in wanted],
            "added_per_class": [int(a) for a in additions.added],
            "seeds": spec.seeds,
            "epochs": spec.epochs,
        }
        save_json(ctx.job, TABLE_KEY, table)
        ctx.job.put_bytes(CHART_KEY, chart_png(table, "Held-out accuracy by training set (paper Table 2)"))

        return {
            "minority_class": minority,
            "minority_train_images": None if minority is None else int(original_counts[minority]),
            "wanted": wanted_total,
            "added": added,
            "shortfall": wanted_total - added,
            "ds_available": pool.ds_count(minority),
            "extra_samples": pool.n_extra,
            "extra_ds": int(np.sum(pool.is_ds[pool.n_job :])),
            "labels_from": LABELS_KEY,
            "seeds": spec.seeds,
            "epochs": spec.epochs,
            "overall_accuracy": {
                k: {s: table["overall"]["accuracy"][k][s] for s in ("mean", "std")} for k in CONDITIONS
            },
            "minority_accuracy": None
            if minority is None
            else {k: {s: table["classes"][minority]["accuracy"][k][s] for s in ("mean", "std")} for k in CONDITIONS},
            "headline": headline(table, minority, added, wanted_total, spec.seeds),
        }
