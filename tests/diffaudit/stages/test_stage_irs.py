"""The irs stage and the early-rejection monitor of the sample stage."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_jobs import JOB_PREFIX, SAMPLED, copy_store

import diffaudit.stages.irs as irs_stage
from diffaudit.datasets import Dataset, IngestLimits, ingest_dataset
from diffaudit.metrics.irs import irs_adjusted, irs_per_class, irs_summary, k_min, sequential_schedule, target_distinct
from diffaudit.metrics.occupancy import occupancy_cdf
from diffaudit.pipeline import Rejected, StageContext, run, run_stage
from diffaudit.spec import EvaluationSpec
from diffaudit.stages import early_rejection
from diffaudit.stages.sample import SampleStage, batch_key
from diffaudit.store import LocalStore, ScopedStore, load_array, load_json, save_array

N_SAMPLES = SAMPLED["n"]
JOB = JOB_PREFIX
PNG = b"\x89PNG\r\n\x1a\n"


def brute_force_nn(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    d = ((queries[:, None, :].astype(np.float64) - references[None, :, :]) ** 2).sum(-1)
    return d.argmin(axis=1)


@pytest.fixture(scope="module")
def evaluated(
    tmp_path_factory: pytest.TempPathFactory, sampled_digits: Path, tiny_demo_model: Path
) -> tuple[LocalStore, dict]:
    """sample (the shared sampled job), features (pixels) and irs on the tiny demo model, early rejection off."""
    store = copy_store(sampled_digits, tmp_path_factory.mktemp("irs") / "store")
    spec = EvaluationSpec(
        stages=("irs",),
        sample=SAMPLED,
        features={"extractor": "pixels"},
        irs={"target": 0.9, "early_rejection": False},
    )
    results = run(
        spec,
        checkpoint_dir=tiny_demo_model,
        dataset=Dataset.open(store, "datasets/digits"),
        store=store,
        job_prefix=JOB,
    )
    return store, results


def test_irs_stage_reproduces_brute_force_retrieval_and_the_metric_functions(evaluated) -> None:
    store, results = evaluated
    summary = results["stages"]["irs"]
    dataset, job = Dataset.open(store, "datasets/digits"), ScopedStore(store, JOB)
    features = load_array(ScopedStore(store, "cache"), results["stages"]["features"]["training_features_key"])
    train, heldout = features[dataset.train_indices()], features[dataset.heldout_indices()]
    gen = np.asarray(load_array(job, "features/generated.npy"))
    nn = brute_force_nn(gen, train)
    assert load_array(job, irs_stage.NEAREST_KEY).tolist() == nn.tolist()
    assert summary["synthetic"] == pytest.approx(irs_summary(nn, len(train)))
    real = irs_summary(brute_force_nn(heldout[:N_SAMPLES], train), len(train))
    assert summary["real"] == pytest.approx(real)
    assert summary["adjusted"]["irs_inf_a"] == pytest.approx(irs_adjusted(summary["synthetic"]["s_hat"], real["s_hat"]))
    assert summary["heldout"] == {"source": "dataset", "n_train": 1438, "n_heldout": 359}
    # verdict: early rejection off -> Eq. 9 at the end: fail iff N_learned <= k_min
    kmin = k_min(1438, N_SAMPLES, 0.9)
    assert summary["k_min"] == kmin and summary["target_distinct"] == target_distinct(1438, 0.9)
    assert summary["passed"] == (summary["synthetic"]["n_learned"] > kmin)
    assert summary["decision"]["rule"] == "bound"
    assert summary["headline"].startswith(f"IRS_inf {summary['synthetic']['irs_inf']:.2f} [")
    labels = np.asarray(dataset.labels)
    per_class = irs_per_class(train, gen, labels[dataset.train_indices()], load_array(job, "sample/labels.npy"))
    assert summary["per_class"] == per_class
    counts = np.bincount(nn, minlength=len(train))
    assert [row["retrieved_by"] for row in summary["most_retrieved"]] == sorted(counts, reverse=True)[:8]
    assert summary["most_retrieved"][0]["item"] == dataset.train_indices()[np.argmax(counts)]
    assert job.get_bytes(irs_stage.CURVE_KEY)[:8] == PNG and job.get_bytes(irs_stage.GRID_KEY)[:8] == PNG


def test_distinct_trajectory_counts_first_occurrences() -> None:
    assert irs_stage.distinct_trajectory(np.array([3, 3, 1, 3, 2, 1])).tolist() == [1, 1, 2, 2, 3, 3]


def test_a_features_dataset_without_held_out_split_gets_a_recorded_seeded_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=features)
    store = LocalStore(tmp_path / "store")
    ingest_dataset(tmp_path / "f.npz", store, "datasets/f", IngestLimits())
    dataset = Dataset.open(store, "datasets/f")
    spec = EvaluationSpec(stages=("irs",), sample={"n": 40}, irs={"heldout_fraction": 0.25, "seed": 3})
    split = irs_stage.irs_split(dataset, spec)
    assert split.source == "seeded" and split.heldout.size == 50 and split.train.size == 150
    assert not np.intersect1d(split.train, split.heldout).size
    train = features[split.train]
    gen = np.repeat(train[:20], 2, axis=0) + 1e-4  # 20 training images, each generated twice
    ctx = StageContext(
        spec=spec,
        checkpoint_dir=tmp_path,
        dataset=dataset,
        job=ScopedStore(store, JOB),
        cache=ScopedStore(store, "cache"),
        device=torch.device("cpu"),
        results={"features": {"training_features_key": None}},
    )
    save_array(ctx.job, "features/generated.npy", gen)
    summary = irs_stage.IRSStage().run(ctx)
    assert summary["heldout"] == {
        "source": "seeded",
        "n_train": 150,
        "n_heldout": 50,
        "heldout_fraction": 0.25,
        "seed": 3,
    }
    assert load_array(ctx.job, irs_stage.HELDOUT_KEY).tolist() == split.heldout.tolist()
    assert summary["synthetic"]["n_learned"] == 20 and summary["synthetic"]["n_sample"] == 40
    assert summary["real"]["n_queries"] == 40
    assert "most_retrieved" not in summary  # no images in a features dataset


@pytest.fixture
def monitored(evaluated, tmp_path: Path, tiny_demo_model: Path) -> StageContext:
    """A fresh job with irs early rejection (sequential rule, target 0.8) against the evaluated store's cache."""
    store, _ = evaluated
    shutil.copytree(store.root, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    spec = EvaluationSpec(
        stages=("irs",),
        sample={"n": 256, "steps": 10, "batch_size": 32},
        features={"extractor": "pixels"},
        irs={"target": 0.8, "rule": "sequential"},
    )
    return StageContext(
        spec=spec,
        checkpoint_dir=tiny_demo_model,
        dataset=Dataset.open(store, "datasets/digits"),
        job=ScopedStore(store, "evaluations/m"),
        cache=ScopedStore(store, "cache"),
        device=torch.device("cpu"),
        results={},
    )


def collapsed_batch(ctx: StageContext, size: int) -> np.ndarray:
    """A model that only ever produces training image 0: every sample retrieves it."""
    return np.repeat(ctx.dataset.images[ctx.dataset.train_indices()[:1]], size, axis=0)


def test_monitor_rejects_a_collapsed_model_at_the_first_look_with_the_evidence(monitored) -> None:
    ctx = monitored
    monitor = early_rejection.early_rejection_monitor(ctx)
    assert monitor is not None
    first = sequential_schedule(1438, 256, 0.8)[0]  # look at ceil(sqrt(s_d)) samples, s_d = ceil(0.8 * 1438) = 1151
    assert first["samples"] == 34
    monitor(0, collapsed_batch(ctx, 32))  # before the first look: no decision yet
    assert load_json(ctx.job, irs_stage.EARLY_KEY)["samples_generated"] == 32
    with pytest.raises(Rejected) as rejected:
        monitor(32, collapsed_batch(ctx, 32))
    evidence = rejected.value.evidence
    assert (evidence["samples_drawn"], evidence["distinct"], evidence["duplicates"]) == (34, 1, 33)
    assert evidence["samples_generated"] == 64 and evidence["n_planned"] == 256 and evidence["n_train"] == 1438
    assert evidence["threshold"] == first["threshold"] and evidence["alpha"] == first["alpha"]
    assert evidence["probability"] == pytest.approx(occupancy_cdf(1, 34, 1151))
    assert evidence["k_min"] == k_min(1438, 256, 0.8) and evidence["target"] == 0.8 and evidence["rule"] == "sequential"
    assert "34 samples" in rejected.value.reason
    assert ctx.job.get_bytes(irs_stage.CURVE_KEY)[:8] == PNG
    assert load_array(ctx.job, early_rejection.EARLY_NEAREST_KEY).tolist() == [0] * 64


def test_sample_stage_replays_stored_batches_into_the_monitor_and_rejects_the_same_way(monitored) -> None:
    ctx = monitored
    for start in (0, 32):  # batches kept from an interrupted run
        save_array(ctx.job, batch_key(start), collapsed_batch(ctx, 32))
    with pytest.raises(Rejected) as first:
        SampleStage().run(ctx)
    with pytest.raises(Rejected) as again:
        SampleStage().run(ctx)
    assert first.value.evidence == again.value.evidence
    assert first.value.evidence["samples_drawn"] == 34 and first.value.evidence["samples_generated"] == 64


def test_no_monitor_without_the_irs_stage_or_with_early_rejection_off(monitored) -> None:
    ctx = monitored
    ctx.spec = EvaluationSpec(stages=("features",))
    assert early_rejection.early_rejection_monitor(ctx) is None
    ctx.spec = EvaluationSpec(stages=("irs",), irs={"early_rejection": False})
    assert early_rejection.early_rejection_monitor(ctx) is None


def test_cli_irs_threshold_and_irs_print_the_metric_functions_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffaudit.cli import main
    from diffaudit.metrics.irs import irs_report, irs_threshold_report

    assert main(["irs-threshold", "--n-train", "1281166", "--n-sample", "50000", "--target", "0.8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["k_min"] == 48_744  # supplement Sec. 11
    assert printed == json.loads(json.dumps(irs_threshold_report(1_281_166, 50_000, 0.8)))
    rng = np.random.default_rng(1)
    train, gen, test = (rng.normal(size=(n, 4)).astype(np.float32) for n in (50, 30, 20))
    for name, array in (("a", train), ("b", gen), ("c", test)):
        np.save(tmp_path / f"{name}.npy", array)
    files = ["--train-features", str(tmp_path / "a.npy"), "--gen-features", str(tmp_path / "b.npy")]
    assert main(["irs", *files, "--test-features", str(tmp_path / "c.npy"), "--metric", "cosine"]) == 0
    expected = irs_report(train, gen, test, metric="cosine")
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(expected))


def monitored_job(ctx: StageContext, **spec: Any) -> StageContext:
    """The monitored job with another spec (same store, dataset and model)."""
    base = ctx.spec.model_dump(include={"sample", "features", "irs"})
    return dataclasses.replace(ctx, spec=EvaluationSpec.model_validate({**base, **spec}), results={})


def test_a_rejection_shows_the_memorization_evidence_of_the_samples_drawn(monitored) -> None:
    """Early rejection with memorization requested: the extraction test runs on the samples drawn (issue 11)."""
    ctx = monitored_job(monitored, stages=["irs", "memorization"], memorization={"n_neighbours": 10})
    for start in (0, 32):  # a collapsed model: every sample is training image 0
        save_array(ctx.job, batch_key(start), collapsed_batch(ctx, 32))
    with pytest.raises(Rejected) as rejected:
        run_stage("sample", ctx)
    memorization = rejected.value.evidence["after_rejection"]["memorization"]
    extraction = memorization["spaces"]["pixels"]["extraction"]
    assert memorization["samples"] == 64 and extraction["n_generated"] == 64
    assert extraction["fraction_flagged"] == 1.0 and extraction["n_copied_training_images"] == 1
    assert extraction["copied_training_images"][0]["index"] == int(ctx.dataset.train_indices()[0])
    assert "100.0% of 64 samples flagged as copies of 1 training images (pixels)" in memorization["headline"]
    assert load_array(ctx.job, "memorization/pixels/nearest_index.npy").shape == (64,)
    assert "volume_growth" not in memorization  # the costly part is not run after a rejection


def test_a_rejection_without_memorization_requested_adds_nothing(monitored) -> None:
    ctx = monitored
    for start in (0, 32):
        save_array(ctx.job, batch_key(start), collapsed_batch(ctx, 32))
    with pytest.raises(Rejected) as rejected:
        run_stage("sample", ctx)
    assert "after_rejection" not in rejected.value.evidence
    assert not ctx.job.exists("memorization/pixels/nearest_index.npy")


@pytest.mark.parametrize("n", [4, 16])
def test_a_job_with_fewer_samples_than_the_first_look_runs_with_one_final_test(
    evaluated, tmp_path: Path, tiny_demo_model: Path, n: int
) -> None:
    """Issue 12, item 4: n = 4 and n = 16 crashed with ZeroDivisionError in the early-rejection schedule."""
    store, _ = evaluated
    spec = EvaluationSpec(stages=("irs",), sample={"n": n, "steps": 2}, features={"extractor": "pixels"})
    dataset = Dataset.open(store, "datasets/digits")
    try:
        results = run(spec, checkpoint_dir=tiny_demo_model, dataset=dataset, store=store, job_prefix=f"small/{n}")
        summary = results["stages"]["irs"]
        assert summary["synthetic"]["n_sample"] == n and summary["decision"]["samples_drawn"] == n
    except Rejected as rejection:  # a final test that rejects is a verdict too
        assert rejection.evidence["samples_drawn"] == n and rejection.evidence["alpha"] == 0.05
    schedule = load_json(ScopedStore(store, f"small/{n}"), early_rejection.EARLY_KEY)
    assert schedule["samples_generated"] == n
