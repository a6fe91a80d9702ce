"""The `balance` stage: do generated samples reproduce the training class shares? (thesis the thesis, Ch. 4)

The generated samples are classified by diffaudit.models.classifier's small CNN trained on the dataset's training
split, cached in the shared cache under the dataset content hash, a hash of the training split and the training
settings (every job against the same data reuses it). Its accuracy on the held-out split says how far to trust it.
With `balance.labels = "conditioning"`, the class-conditional model's own labels are compared instead, and the
classifier checks them (agreement rate: the share of samples classified as the class they were conditioned on).
diffaudit.metrics.balance compares the shares: chi-square test, per-class ratio with simultaneous intervals, and the
over- and under-produced classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from diffaudit.common.cache import get_or_compute
from diffaudit.common.splits import split_hash
from diffaudit.datasets import Dataset
from diffaudit.errors import InvalidInput
from diffaudit.metrics.balance import class_balance
from diffaudit.models.classifier import classifier_pixels, predict, small_cnn, train_classifier
from diffaudit.plots.balance import shares_png
from diffaudit.spec import BalanceSpec
from diffaudit.stages import artifacts
from diffaudit.stages.base import Queue, StageContext
from diffaudit.store import ArtifactStore, save_array

PREDICTED_KEY = "balance/predicted_labels.npy"
SHARES_KEY = "balance/shares.png"


def classifier_key(dataset: Dataset, spec: BalanceSpec) -> str:
    """Cache key of the classifier: dataset content, training split, epochs and seed determine it."""
    split = split_hash(dataset.train_indices())[:16]
    return f"classifiers/{dataset.info.content_hash}/small-cnn-split{split}-e{spec.classifier_epochs}-s{spec.seed}"


def dataset_classifier(ctx: StageContext, spec: BalanceSpec) -> nn.Module:
    """The small CNN trained on the dataset's training split (loaded from the cache, or trained and cached)."""
    dataset = ctx.dataset
    names = dataset.info.class_names
    assert names is not None and dataset.labels is not None
    channels = dataset.info.item_shape[2]
    train = dataset.train_indices()

    def on_epoch(epoch: int) -> None:
        ctx.check_cancelled()
        ctx.report(epoch, spec.classifier_epochs + 1)

    def trained() -> nn.Module:
        return train_classifier(
            classifier_pixels(dataset.images[train]),
            np.asarray(dataset.labels)[train],
            len(names),
            epochs=spec.classifier_epochs,
            seed=spec.seed,
            device=ctx.device,
            on_epoch=on_epoch,
        )

    def save(cache: ArtifactStore, key: str, model: nn.Module) -> None:
        cache.put_bytes(key, save_safetensors({k: v.contiguous().cpu() for k, v in model.state_dict().items()}))

    def load(cache: ArtifactStore, key: str) -> nn.Module:
        model = small_cnn(channels, len(names)).to(ctx.device)
        model.load_state_dict(load_safetensors(cache.get_bytes(key)))
        return model.eval()

    model, _ = get_or_compute(ctx.cache, f"{classifier_key(dataset, spec)}.safetensors", trained, save, load)
    return model


def heldout_accuracy(ctx: StageContext, model: nn.Module) -> float | None:
    """The classifier's accuracy on the dataset's held-out split (None without one)."""
    heldout = ctx.dataset.heldout_indices()
    if not heldout.size or ctx.dataset.labels is None:
        return None
    predicted = predict(model, classifier_pixels(ctx.dataset.images[heldout]), ctx.device)
    return float(np.mean(predicted == np.asarray(ctx.dataset.labels)[heldout]))


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
            raise InvalidInput(
                "the balance stage needs a labelled dataset (a zip with one folder per class, or an .npz with "
                "`labels`); this dataset has no labels"
            )
        if dataset.info.kind != "images":
            raise InvalidInput(
                "the balance stage trains a classifier on the dataset's images; this dataset holds features"
            )
        conditioning = artifacts.sample_labels(ctx)
        if spec.labels == "conditioning" and conditioning is None:
            raise InvalidInput("balance.labels = 'conditioning' needs a class-conditional model; use 'classifier'")
        model = dataset_classifier(ctx, spec)
        predicted = predict(model, classifier_pixels(artifacts.samples(ctx, mmap=False)), ctx.device)
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
