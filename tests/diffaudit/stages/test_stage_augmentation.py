"""The augmentation stage on the tiny demo model, with a stand-in for the novelty stage's DS flags."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_jobs import JOB_PREFIX, SAMPLED, copy_store

import diffaudit.stages.augmentation as augmentation
from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.metrics.augmentation import CONDITIONS, overall_accuracy, per_class_accuracy
from diffaudit.pipeline import StageContext, run
from diffaudit.spec import AugmentationSpec, EvaluationSpec
from diffaudit.stages import artifacts
from diffaudit.stages.augmentation import AugmentationStage
from diffaudit.store import LocalStore, ScopedStore, load_array, load_json, save_array, save_json

N_SAMPLES = SAMPLED["n"]
JOB = JOB_PREFIX


def stand_in_outside(n: int) -> np.ndarray:
    """DS flags standing in for novelty/ds.npy: samples 0-9, 20-29, 40-49, 60-63."""
    return (np.arange(n) // 10) % 2 == 0


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory, sampled_digits: Path) -> Path:
    """A store with digits and a job of 64 samples (10 DDIM steps) with the stand-in DS flags."""
    root = tmp_path_factory.mktemp("sampled") / "store"
    job = ScopedStore(copy_store(sampled_digits, root), JOB)
    save_array(job, artifacts.DS_KEY, stand_in_outside(N_SAMPLES))
    save_json(job, "novelty/result.json", {"stand_in": True})
    return root


@pytest.fixture
def prepared(sampled: Path, tmp_path: Path, tiny_demo_model: Path) -> tuple[LocalStore, Dataset, Path]:
    """A private copy of the sampled store."""
    shutil.copytree(sampled, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    return store, Dataset.open(store, "datasets/digits"), tiny_demo_model


def context(prepared: tuple[LocalStore, Dataset, Path], **augmentation_spec: Any) -> StageContext:
    store, dataset, checkpoint_dir = prepared
    spec = EvaluationSpec(
        stages=("features",),
        sample={"n": N_SAMPLES, "steps": 10},
        augmentation={"seeds": 1, "epochs": 1, **augmentation_spec},
    )
    return StageContext(
        spec=spec,
        checkpoint_dir=checkpoint_dir,
        dataset=dataset,
        job=ScopedStore(store, JOB),
        cache=ScopedStore(store, "cache"),
        device=torch.device("cpu"),
        results={},
    )


def check_table_consistency(ctx: StageContext, table: dict[str, Any]) -> None:
    """Accuracies in the table are the ones the stored confusion matrices give; counts add up."""
    heldout = ctx.dataset.heldout_indices()
    labels = np.asarray(ctx.dataset.labels)
    assert [row["test"] for row in table["classes"]] == np.bincount(labels[heldout], minlength=10).tolist()
    assert table["overall"]["test"] == len(heldout)
    for condition in CONDITIONS:
        confusion = load_array(ctx.job, f"{augmentation.RUNS_PREFIX}/{condition}/seed0.npy")
        assert confusion.sum() == len(heldout)
        assert table["overall"]["accuracy"][condition]["mean"] == pytest.approx(overall_accuracy(confusion))
        per_class = per_class_accuracy(confusion)
        for c, row in enumerate(table["classes"]):
            assert row["accuracy"][condition]["per_seed"] == pytest.approx([per_class[c]])
        assert table["overall"]["train"][condition] == sum(row["train"][condition] for row in table["classes"])


def test_balanced_data_gets_every_ds_and_as_many_ordinary_samples(prepared) -> None:
    ctx = context(prepared)
    summary = AugmentationStage().run(ctx)
    table = load_json(ctx.job, augmentation.TABLE_KEY)
    train = ctx.dataset.train_indices()
    original = np.bincount(np.asarray(ctx.dataset.labels)[train], minlength=10)
    # samples are labelled i % 10; classes 0-3 have 4 DS and 3 ordinary samples, classes 4-9 3 and 3
    added = [3] * 10
    assert table["setup"]["wanted_per_class"] == [4, 4, 4, 4, 3, 3, 3, 3, 3, 3]
    assert table["setup"]["added_per_class"] == added
    assert [row["train"]["original"] for row in table["classes"]] == original.tolist()
    for condition in ("generated", "diverse"):
        assert [row["train"][condition] for row in table["classes"]] == (original + added).tolist()
    assert summary["minority_class"] is None and summary["added"] == 30 and summary["extra_samples"] == 0
    assert summary["overall_accuracy"]["original"]["mean"] == table["overall"]["accuracy"]["original"]["mean"]
    assert "30 generated samples and 30 DS added" in summary["headline"]
    check_table_consistency(ctx, table)
    assert ctx.job.get_bytes(augmentation.CHART_KEY)[:8] == b"\x89PNG\r\n\x1a\n"
    assert ctx.job.exists(f"{augmentation.PREFIX}/added_diverse.png")


def test_minority_is_topped_up_from_the_job_and_extra_samples(prepared, monkeypatch) -> None:
    ctx = context(prepared, minority_class=3, minority_keep_fraction=0.2, max_extra_samples=8)
    labels = np.asarray(ctx.dataset.labels)
    train_labels = labels[ctx.dataset.train_indices()]
    kept = round(0.2 * np.sum(train_labels == 3))
    wanted = int(np.max(np.delete(np.bincount(train_labels, minlength=10), 3))) - kept
    # extra samples: every other one is a DS
    monkeypatch.setattr(augmentation, "extra_ds_detector", lambda ctx: lambda images: np.arange(len(images)) % 2 == 0)

    summary = AugmentationStage().run(ctx)
    table = load_json(ctx.job, augmentation.TABLE_KEY)
    # the job holds 4 DS of class 3 (samples 3, 23, 43, 63) and 3 ordinary; 8 extra add 4 and 4
    assert summary["minority_class"] == 3 and summary["minority_train_images"] == kept
    assert summary["wanted"] == wanted and summary["added"] == 7 and summary["shortfall"] == wanted - 7
    assert summary["extra_samples"] == 8 and summary["extra_ds"] == 4 and summary["ds_available"] == 8
    assert table["setup"]["added_per_class"] == [0, 0, 0, 7, 0, 0, 0, 0, 0, 0]
    row = table["classes"][3]
    assert row["train"] == {"original": kept, "generated": kept + 7, "diverse": kept + 7}
    assert load_array(ctx.job, f"{augmentation.EXTRA_PREFIX}/00000000_labels.npy").tolist() == [3] * 8
    assert load_array(ctx.job, f"{augmentation.EXTRA_PREFIX}/00000000_images.npy").shape == (8, 16, 16, 1)
    assert summary["headline"].startswith(f"class 3 topped up with 7 of {wanted} samples")
    check_table_consistency(ctx, table)

    # resumed: extra samples and trainings are read back, not redone
    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("redone")

    monkeypatch.setattr(augmentation, "draw_extra_round", must_not_run)
    monkeypatch.setattr(augmentation, "train_classifier", must_not_run)
    again = AugmentationStage().run(ctx)
    assert again == summary


def test_unconditional_samples_are_refused(prepared) -> None:
    ctx = context(prepared)
    ctx.job.delete_prefix("sample/labels.npy")
    with pytest.raises(ValueError, match="class-conditional checkpoint"):
        AugmentationStage().run(ctx)


def test_spec_refuses_a_keep_fraction_without_a_class() -> None:
    with pytest.raises(ValueError, match="needs minority_class"):
        AugmentationSpec(minority_keep_fraction=0.2)


@pytest.mark.slow  # the novelty stage's t-SNE fit and PCA: ~30 s on a shared CPU
def test_full_pipeline_with_the_novelty_stage(tmp_path: Path, tiny_demo_model: Path) -> None:
    """Extra samples are tested by the novelty stage's own detector, and the counts add up."""
    store = LocalStore(tmp_path)
    write_builtin_dataset("digits", store, "datasets/digits")
    dataset = Dataset.open(store, "datasets/digits")
    spec = EvaluationSpec(
        stages=("augmentation",),
        sample={"n": 32, "steps": 5},
        features={"extractor": "pixels"},
        novelty={"seeds": 1, "n_iter": 50, "transform_iter": 10, "n_rounds": 2},
        augmentation={
            "seeds": 1,
            "epochs": 1,
            "minority_class": 3,
            "minority_keep_fraction": 0.2,
            "max_extra_samples": 8,
        },
    )
    results = run(spec, checkpoint_dir=tiny_demo_model, dataset=dataset, store=store, job_prefix=JOB)
    summary = results["stages"]["augmentation"]
    job = ScopedStore(store, JOB)
    ds, labels = load_array(job, artifacts.DS_KEY), load_array(job, artifacts.SAMPLE_LABELS_KEY)
    extra_ds = load_array(job, f"{augmentation.EXTRA_PREFIX}/00000000_ds.npy")
    assert summary["extra_samples"] == 8 and summary["extra_ds"] == int(extra_ds.sum())
    assert summary["ds_available"] == int(np.sum(ds & (labels == 3))) + summary["extra_ds"]
    ordinary = int(np.sum(labels == 3)) + 8 - summary["ds_available"]
    assert summary["added"] == min(summary["wanted"], summary["ds_available"], ordinary)
    # the detector used for extra samples is the novelty stage's: it gives the job's own samples their DS flags
    ctx = StageContext(
        spec=spec,
        checkpoint_dir=tiny_demo_model,
        dataset=dataset,
        job=job,
        cache=ScopedStore(store, "cache"),
        device=torch.device("cpu"),
        results=results["stages"],
    )
    np.testing.assert_array_equal(augmentation.extra_ds_detector(ctx)(load_array(job, "sample/images.npy")), ds)
