"""The `balance` stage: do generated samples reproduce the training class shares? (thesis the thesis, Ch. 4)

The generated samples are classified by diffaudit.metrics.augmentation's small CNN trained on the dataset's training
split, cached in the shared cache under the dataset content hash, a hash of the training split and the training
settings (every job against the same data reuses it). Its accuracy on the held-out split says how far to trust it.
With `balance.labels = "conditioning"`, the class-conditional model's own labels are compared instead, and the
classifier checks them (agreement rate: the share of samples classified as the class they were conditioned on).
diffaudit.metrics.balance compares the shares: chi-square test, per-class ratio with simultaneous intervals, and the
over- and under-produced classes.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from diffaudit.datasets import Dataset
from diffaudit.metrics.augmentation import classifier_pixels, predict, small_cnn, train_classifier
from diffaudit.metrics.balance import class_balance
from diffaudit.pipeline import Queue, StageContext
from diffaudit.spec import BalanceSpec
from diffaudit.store import load_array, save_array

SAMPLES_KEY = "sample/images.npy"
SAMPLE_LABELS_KEY = "sample/labels.npy"
PREDICTED_KEY = "balance/predicted_labels.npy"
SHARES_KEY = "balance/shares.png"


def classifier_key(dataset: Dataset, spec: BalanceSpec) -> str:
    """Cache key of the classifier: dataset content, training split, epochs and seed determine it."""
    split = hashlib.sha256(dataset.train_indices().astype(np.int64).tobytes()).hexdigest()[:16]
    return f"classifiers/{dataset.info.content_hash}/small-cnn-split{split}-e{spec.classifier_epochs}-s{spec.seed}"


def dataset_classifier(ctx: StageContext, spec: BalanceSpec) -> nn.Module:
    """The small CNN trained on the dataset's training split (loaded from the cache, or trained and cached)."""
    dataset = ctx.dataset
    names = dataset.info.class_names
    assert names is not None and dataset.labels is not None
    channels = dataset.info.item_shape[2]
    key = f"{classifier_key(dataset, spec)}.safetensors"
    if ctx.cache.exists(key):
        cached = small_cnn(channels, len(names)).to(ctx.device)
        cached.load_state_dict(load_safetensors(ctx.cache.get_bytes(key)))
        return cached.eval()
    train = dataset.train_indices()
    pixels = classifier_pixels(dataset.images[train])

    def on_epoch(epoch: int) -> None:
        ctx.check_cancelled()
        ctx.report(epoch, spec.classifier_epochs + 1)

    model = train_classifier(
        pixels,
        np.asarray(dataset.labels)[train],
        len(names),
        epochs=spec.classifier_epochs,
        seed=spec.seed,
        device=ctx.device,
        on_epoch=on_epoch,
    )
    ctx.cache.put_bytes(key, save_safetensors({k: v.contiguous().cpu() for k, v in model.state_dict().items()}))
    return model


def heldout_accuracy(ctx: StageContext, model: nn.Module) -> float | None:
    """The classifier's accuracy on the dataset's held-out split (None without one)."""
    heldout = ctx.dataset.heldout_indices()
    if not heldout.size or ctx.dataset.labels is None:
        return None
    predicted = predict(model, classifier_pixels(ctx.dataset.images[heldout]), ctx.device)
    return float(np.mean(predicted == np.asarray(ctx.dataset.labels)[heldout]))


def shares_png(report: dict[str, Any], names: list[str]) -> bytes:
    """Generated and training share per class, the generated share's simultaneous interval as error bars."""
    rows = report["per_class"]
    x = np.arange(len(rows))
    train = np.array([r["train_share"] for r in rows])
    gen = np.array([r["generated_share"] for r in rows])
    lower = np.array([r["ratio_lower"] for r in rows]) * train
    upper = np.array([r["ratio_upper"] for r in rows]) * train
    figure = Figure(figsize=(max(5, 0.5 * len(rows) + 2), 3.5))
    axis = figure.subplots()
    axis.bar(x - 0.2, train, 0.4, label="training share", color="C7")
    axis.bar(x + 0.2, gen, 0.4, yerr=[gen - lower, upper - gen], capsize=2, label="generated share", color="C0")
    axis.set_xticks(x, [names[r["class"]] for r in rows])
    axis.set_ylabel("share")
    axis.set_title(f"class balance: chi-square p = {report['chi_square']['p_value']:.2g}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def balance_headline(report: dict[str, Any], names: list[str], agreement: float | None) -> str:
    over = ", ".join(names[c] for c in report["over_produced"]) or "none"
    under = ", ".join(names[c] for c in report["under_produced"]) or "none"
    checked = f"; classifier agrees with the conditioning on {agreement:.0%}" if agreement is not None else ""
    return (
        f"chi-square p = {report['chi_square']['p_value']:.2g}; over-produced: {over}; under-produced: {under}{checked}"
    )


class BalanceStage:
    name = "balance"
    queue: Queue = "gpu"  # trains (once per dataset) and runs a classifier

    def run(self, ctx: StageContext) -> dict[str, Any]:
        spec = ctx.spec.balance
        dataset = ctx.dataset
        names = dataset.info.class_names
        if dataset.labels is None or names is None:
            raise ValueError(
                "the balance stage needs a labelled dataset (a zip with one folder per class, or an .npz with "
                "`labels`); this dataset has no labels"
            )
        if dataset.info.kind != "images":
            raise ValueError(
                "the balance stage trains a classifier on the dataset's images; this dataset holds features"
            )
        conditioning = load_array(ctx.job, SAMPLE_LABELS_KEY) if ctx.job.exists(SAMPLE_LABELS_KEY) else None
        if spec.labels == "conditioning" and conditioning is None:
            raise ValueError("balance.labels = 'conditioning' needs a class-conditional model; use 'classifier'")
        model = dataset_classifier(ctx, spec)
        predicted = predict(model, classifier_pixels(load_array(ctx.job, SAMPLES_KEY, mmap=False)), ctx.device)
        save_array(ctx.job, PREDICTED_KEY, predicted)
        generated = predicted if spec.labels == "classifier" else np.asarray(conditioning)
        report = class_balance(np.asarray(dataset.labels)[dataset.train_indices()], generated, spec.confidence)
        agreement = None if conditioning is None else float(np.mean(predicted == np.asarray(conditioning)))
        ctx.job.put_bytes(SHARES_KEY, shares_png(report, names))
        ctx.report(spec.classifier_epochs + 1, spec.classifier_epochs + 1)
        return {
            "headline": balance_headline(report, names, agreement),
            "labels": spec.labels,
            "classifier": {"heldout_accuracy": heldout_accuracy(ctx, model), "epochs": spec.classifier_epochs},
            "conditioning_agreement": agreement,
            "class_names": names,
            **report,
        }
