"""The `membership` stage on the tiny demo model (shared sampled digits) and on the tiny overfit model."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_jobs import Job, copy_store, run_on_digits

from diffaudit.checkpoints import load_checkpoint
from diffaudit.datasets import Dataset, ingest_dataset
from diffaudit.datasets.digits import load_digits16
from diffaudit.datasets.ingest import IngestLimits
from diffaudit.demo import OVERFIT_IMAGES
from diffaudit.errors import InvalidInput
from diffaudit.metrics.membership import batched_scores, roc_auc, score_function
from diffaudit.pipeline import Cancelled, StageContext, run
from diffaudit.spec import EvaluationSpec
from diffaudit.stages import membership as stage
from diffaudit.stages.summaries import MembershipSummary
from diffaudit.store import LocalStore, ScopedStore, load_array, save_array

MEMBERSHIP = {"scores": ("pia", "denoising_loss"), "n_images": 24, "batch_size": 8, "loss_draws": 2, "grid_images": 8}
SPEC = EvaluationSpec(stages=("membership",), membership=MEMBERSHIP)


@pytest.fixture(scope="module")
def finished(tiny_demo_model: Path, sampled_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Job:
    folder = copy_store(sampled_digits, tmp_path_factory.mktemp("membership") / "store").root
    return run_on_digits(SPEC, tiny_demo_model, folder, "membership")


def test_summary_artifacts_and_subsets(finished: Job) -> None:
    summary = MembershipSummary.model_validate(finished.summary)
    assert summary.n_members == summary.n_nonmembers == 24
    assert set(summary.scores) == {"pia", "denoising_loss"}
    for measures in summary.scores.values():
        assert 0 <= measures.auc <= 1 and 0 <= measures.tpr_at_0_1pct_fpr <= measures.tpr_at_1pct_fpr <= 1
        assert measures.smallest_measurable_fpr == pytest.approx(1 / 24)
    assert "NOT proof" in summary.statement and summary.headline.startswith("pia tells 24 training images")
    job, dataset = finished.job, finished.dataset
    members, nonmembers = load_array(job, "membership/members.npy"), load_array(job, "membership/nonmembers.npy")
    assert set(members) <= set(dataset.train_indices()) and set(nonmembers) <= set(dataset.heldout_indices())
    assert len(set(members)) == len(set(nonmembers)) == 24
    for score in ("pia", "denoising_loss"):
        for name in ("scores.npy", "histogram.png", "roc.png"):
            assert job.exists(f"membership/{score}/{name}")
        assert not job.list(f"membership/{score}/batches")  # cleaned up
        histogram = finished.summary["scores"][score]["histogram"]
        assert sum(histogram["members"]) == sum(histogram["nonmembers"]) == 24
    assert job.get_bytes("membership/most_exposed.png").startswith(b"\x89PNG")


def test_scores_and_auc_match_a_direct_computation(finished: Job) -> None:
    job, dataset = finished.job, finished.dataset
    members, nonmembers = load_array(job, "membership/members.npy"), load_array(job, "membership/nonmembers.npy")
    checkpoint = load_checkpoint(finished.model, torch.device("cpu"))
    spec = SPEC.membership
    indices = np.concatenate([members, nonmembers])
    score_fn = score_function("pia", checkpoint.unet, checkpoint.scheduler_config, spec.score_options("pia"))
    direct = batched_scores(score_fn, dataset.images[indices], dataset.labels[indices], batch_size=48)
    stored = load_array(job, "membership/pia/scores.npy")
    np.testing.assert_allclose(stored, direct, rtol=1e-5, atol=1e-8)
    assert finished.summary["scores"]["pia"]["auc"] == pytest.approx(roc_auc(stored[:24], stored[24:]))


def test_most_exposed_csv_ranks_members_by_the_first_score(finished: Job) -> None:
    rows = list(csv.DictReader(io.StringIO(finished.job.get_bytes("membership/most_exposed.csv").decode())))
    members = load_array(finished.job, "membership/members.npy")
    scores = load_array(finished.job, "membership/pia/scores.npy")[:24]
    assert [int(r["index"]) for r in rows] == members[np.argsort(-scores, kind="stable")].tolist()
    assert [int(r["rank"]) for r in rows] == list(range(1, 25))
    assert finished.summary["most_exposed"][0]["index"] == int(rows[0]["index"])


def test_resume_keeps_finished_batches_and_equals_an_uninterrupted_run(
    finished: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, prefix = finished.store, "evaluations/resume"
    job = ScopedStore(store, prefix)
    first_batch = "membership/pia/batches/00000000.npy"
    with pytest.raises(Cancelled):
        run(
            SPEC,
            checkpoint_dir=finished.model,
            dataset=finished.dataset,
            store=store,
            job_prefix=prefix,
            is_cancelled=lambda: job.exists(first_batch),
        )
    assert job.exists(first_batch) and not job.exists("membership/pia/batches/00000008.npy")
    save_array(job, first_batch, np.full(8, 123.0))  # a marker: a kept batch is not recomputed
    resumed = run(SPEC, checkpoint_dir=finished.model, dataset=finished.dataset, store=store, job_prefix=prefix)
    scores = load_array(job, "membership/pia/scores.npy")
    np.testing.assert_array_equal(scores[:8], 123.0)
    np.testing.assert_array_equal(scores[8:], load_array(finished.job, "membership/pia/scores.npy")[8:])
    np.testing.assert_array_equal(
        load_array(job, "membership/denoising_loss/scores.npy"),
        load_array(finished.job, "membership/denoising_loss/scores.npy"),
    )
    assert resumed["stages"]["membership"]["n_members"] == 24


def context(job: Job, dataset: Dataset, **membership: Any) -> StageContext:
    return StageContext(
        spec=EvaluationSpec(stages=("membership",), membership={**MEMBERSHIP, **membership}),
        checkpoint_dir=job.model,
        dataset=dataset,
        job=job.job,
        cache=ScopedStore(job.store, "cache"),
        device=torch.device("cpu"),
        results={},
    )


def test_bad_requests_say_what_to_change(finished: Job, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="timestep"):
        stage.MembershipStage().run(context(finished, finished.dataset, pia_timestep=5000))
    images, labels = load_digits16()
    np.savez(tmp_path / "digits.npz", images=images[:50], labels=labels[:50])
    ingest_dataset(tmp_path / "digits.npz", finished.store, "datasets/no-heldout", IngestLimits(), heldout_fraction=0.0)
    no_heldout = Dataset.open(finished.store, "datasets/no-heldout")
    with pytest.raises(InvalidInput, match="heldout_fraction > 0"):
        stage.MembershipStage().run(context(finished, no_heldout))


def test_the_overfit_model_exposes_its_training_images(tiny_overfit_model: Path, tmp_path: Path) -> None:
    """Trained (briefly: 200 steps) on the first 64 digits: with those 64 as the training split and the next 64 held
    out, the default score separates them clearly (docs/membership.md: this model copies few of them, so the
    other scores are only reported)."""
    images, labels = load_digits16()
    np.savez(tmp_path / "digits.npz", images=images[: 2 * OVERFIT_IMAGES], labels=labels[: 2 * OVERFIT_IMAGES])
    store = LocalStore(tmp_path / "store")
    ingest_dataset(tmp_path / "digits.npz", store, "datasets/overfit", IngestLimits(), heldout_fraction=0.5)
    save_array(store, "datasets/overfit/heldout.npy", np.arange(2 * OVERFIT_IMAGES) >= OVERFIT_IMAGES)
    dataset = Dataset.open(store, "datasets/overfit")
    assert dataset.train_indices().tolist() == list(range(OVERFIT_IMAGES))
    spec = EvaluationSpec(
        stages=("membership",),
        membership={"scores": ("denoising_loss", "volume_growth", "pia", "secmi"), "n_images": 64},
    )
    results = run(spec, checkpoint_dir=tiny_overfit_model, dataset=dataset, store=store, job_prefix="evaluations/o")
    summary = results["stages"]["membership"]
    aucs = {name: measures["auc"] for name, measures in summary["scores"].items()}
    assert aucs["denoising_loss"] > 0.72, aucs  # 0.79 measured; the built-in split (64 of 1437 trained on) gives ~0.5
    assert summary["most_exposed"][0]["index"] < OVERFIT_IMAGES


def test_the_spec_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="names a score twice"):
        EvaluationSpec(stages=("membership",), membership={"scores": ("pia", "pia")})
    with pytest.raises(ValueError, match="multiple of secmi_interval"):
        EvaluationSpec(stages=("membership",), membership={"secmi_timestep": 95})
    with pytest.raises(ValueError, match="scores"):
        EvaluationSpec(stages=("membership",), membership={"scores": ("lira",)})
    spec = EvaluationSpec(stages=("membership",), membership={"scores": ("secmi", "volume_growth"), "vg_n_steps": 3})
    assert spec.stages == ("membership",) and spec.membership.max_timestep() == 100
    assert spec.membership.score_options("volume_growth") == {"n_axes": 1, "sigma": 0.05, "n_steps": 3, "seed": 0}
