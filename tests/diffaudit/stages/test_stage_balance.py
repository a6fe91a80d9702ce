"""The balance stage on the tiny demo model: classifier labels, conditioning labels, unlabelled data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stage_jobs import JOB_PREFIX, SAMPLED, copy_store

import diffaudit.stages.balance as balance
from diffaudit.datasets import Dataset, IngestLimits, ingest_dataset
from diffaudit.metrics.balance import class_balance
from diffaudit.pipeline import StageContext
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.balance import BalanceStage
from diffaudit.store import LocalStore, ScopedStore, load_array

N_SAMPLES = SAMPLED["n"]
JOB = JOB_PREFIX


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory, sampled_digits: Path) -> LocalStore:
    return copy_store(sampled_digits, tmp_path_factory.mktemp("balance") / "store")


def context(store: LocalStore, dataset: Dataset, job: str = JOB, **balance_spec: object) -> StageContext:
    spec = EvaluationSpec(
        stages=("balance",), sample={"n": N_SAMPLES}, balance={"classifier_epochs": 2, **balance_spec}
    )
    return StageContext(
        spec=spec,
        checkpoint_dir=Path("."),
        dataset=dataset,
        job=ScopedStore(store, job),
        cache=ScopedStore(store, "cache"),
        device=torch.device("cpu"),
        results={},
    )


def test_classifier_labels_are_compared_with_the_training_shares_and_checked_against_conditioning(sampled) -> None:
    dataset = Dataset.open(sampled, "datasets/digits")
    ctx = context(sampled, dataset)
    summary = BalanceStage().run(ctx)
    predicted = load_array(ctx.job, balance.PREDICTED_KEY)
    conditioning = load_array(ctx.job, "sample/labels.npy")
    train_labels = np.asarray(dataset.labels)[dataset.train_indices()]
    expected = class_balance(train_labels, predicted)
    assert {k: summary[k] for k in expected} == expected
    assert summary["conditioning_agreement"] == pytest.approx(np.mean(predicted == conditioning))
    assert summary["classifier"]["heldout_accuracy"] > 0.8  # the small CNN learns digits in 2 epochs
    over = ", ".join(str(c) for c in expected["over_produced"]) or "none"
    assert f"over-produced: {over};" in summary["headline"]
    assert ctx.cache.exists(f"{balance.classifier_key(dataset, ctx.spec.balance)}.safetensors")
    assert ctx.job.get_bytes(balance.SHARES_KEY)[:4] == b"\x89PNG"
    # a second job reuses the cached classifier: identical predictions, no training
    again = BalanceStage().run(context(sampled, dataset))
    assert again["classifier"] == summary["classifier"] and again["per_class"] == summary["per_class"]


def test_conditioning_labels_count_what_the_model_was_asked_for(sampled) -> None:
    dataset = Dataset.open(sampled, "datasets/digits")
    summary = BalanceStage().run(context(sampled, dataset, labels="conditioning"))
    # 64 samples cycling through 10 classes: classes 0-3 get 7, classes 4-9 get 6
    assert [row["generated_count"] for row in summary["per_class"]] == [7] * 4 + [6] * 6
    assert summary["labels"] == "conditioning" and 0 <= summary["conditioning_agreement"] <= 1


def test_an_unlabelled_dataset_is_a_clear_error(sampled, tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", images=np.zeros((20, 16, 16, 1), dtype=np.uint8))
    ingest_dataset(tmp_path / "u.npz", sampled, "datasets/u", IngestLimits())
    with pytest.raises(ValueError, match="needs a labelled dataset"):
        BalanceStage().run(context(sampled, Dataset.open(sampled, "datasets/u")))
