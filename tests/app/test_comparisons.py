"""POST /v1/comparisons (and `diffaudit compare`): paired comparison of two succeeded jobs of one spec."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from app_helpers import TinyCheckpoint, upload_checkpoint
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.evaluations import service as evaluations
from app.models import FAILED, SUCCEEDED
from diffaudit import cli
from diffaudit.client import Client
from diffaudit.store import LocalStore, save_array

SPEC = {"stages": ["sample"], "sample": {"n": 8, "steps": 5}}
N_SAMPLES, N_TRAIN = 200, 300


def submit(client: TestClient, auth: dict[str, str], checkpoint_id: str, spec: dict[str, Any] = SPEC) -> str:
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "spec": spec}
    response = client.post("/v1/evaluations", headers=auth, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


RESULTS = {
    "version": 1,
    "stages": {
        "irs": {"synthetic": {"n_train": N_TRAIN}},
        "memorization": {"spaces": {"pixels": {"extraction": {}}}},
    },
}


def store_artifacts(store: LocalStore, job: str, arrays: dict[str, np.ndarray]) -> None:
    for key, array in arrays.items():
        save_array(store, f"evaluations/{job}/{key}", array)


def paired_artifacts() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A baseline and a candidate that is less diverse, copies more, scores training images higher, has more DS
    and the same nearest-neighbour distances."""
    rng = np.random.default_rng(0)
    nearest = rng.integers(0, N_TRAIN, size=N_SAMPLES)
    collapsed = np.where(rng.random(N_SAMPLES) < 0.5, nearest, rng.integers(0, 10, size=N_SAMPLES))
    scores = np.full(N_SAMPLES, 2.0)
    copies = np.where(rng.random(N_SAMPLES) < 0.3, 0.5, 2.0)
    distances = rng.random(N_SAMPLES)
    growth_base = rng.normal(size=100)
    candidate_indices = np.arange(50, 150)[::-1]  # 50 images in common (50..99), listed in another order
    growth_cand = np.where(candidate_indices < 100, growth_base[np.minimum(candidate_indices, 99)] + 1.0, 0.0)
    ds = rng.random(N_SAMPLES) < 0.3
    baseline = {
        "irs/nearest_training.npy": nearest,
        "memorization/pixels/extraction_score.npy": scores,
        "memorization/pixels/nn_generated.npy": distances,
        "memorization/volume_growth/indices.npy": np.arange(100),
        "memorization/volume_growth/scores.npy": growth_base,
        "novelty/ds.npy": ds,
    }
    candidate = {
        "irs/nearest_training.npy": collapsed,
        "memorization/pixels/extraction_score.npy": copies,
        "memorization/pixels/nn_generated.npy": distances.copy(),
        "memorization/volume_growth/indices.npy": candidate_indices,
        "memorization/volume_growth/scores.npy": growth_cand,
        "novelty/ds.npy": ds | (rng.random(N_SAMPLES) < 0.3),
    }
    return baseline, candidate


@pytest.fixture()
def checkpoints(
    client: TestClient,
    auth: dict[str, str],
    tiny_checkpoint: TinyCheckpoint,
    unconditional_checkpoint: TinyCheckpoint,
) -> tuple[str, str]:
    a = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"]
    b = upload_checkpoint(client, auth, unconditional_checkpoint.zip_bytes).json()["id"]
    return a, b


@pytest.fixture()
def pair(
    client: TestClient, auth: dict[str, str], session: Session, store: LocalStore, checkpoints: tuple[str, str]
) -> tuple[str, str]:
    """Two succeeded jobs of one spec with paired artifacts (baseline, candidate)."""
    jobs = submit(client, auth, checkpoints[0]), submit(client, auth, checkpoints[1])
    for job, arrays in zip(jobs, paired_artifacts(), strict=True):
        store_artifacts(store, job, arrays)
        evaluations.finish(session, job, SUCCEEDED, results=RESULTS)
    return jobs


def compare(client: TestClient, auth: dict[str, str], baseline: str, candidate: str, **extra: Any) -> Any:
    body = {"baseline_evaluation_id": baseline, "candidate_evaluation_id": candidate, **extra}
    return client.post("/v1/comparisons", headers=auth, json=body)


def test_comparison_gives_a_difference_interval_and_verdict_per_metric(
    client: TestClient, auth: dict[str, str], pair: tuple[str, str]
) -> None:
    response = compare(client, auth, *pair, replicates=500)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["baseline_evaluation_id"], body["candidate_evaluation_id"]) == pair
    assert (body["replicates"], body["seed"], body["dataset_id"]) == (500, 0, "digits")
    metrics = {m["metric"]: m for m in body["metrics"]}
    assert {name: m["verdict"] for name, m in metrics.items()} == {
        "irs_inf": "worse",
        "copy_rate_pixels": "worse",
        "nn_distance_pixels": "not distinguishable",
        "volume_growth_mean": "worse",
        "ds_rate": "better",
    }
    copy = metrics["copy_rate_pixels"]
    assert copy["baseline"] == 0.0 and copy["difference"] == copy["candidate"] > 0.2
    assert copy["interval"][0] > 0 and copy["higher_is_better"] is False and copy["error_rate"] == 0.05
    growth = metrics["volume_growth_mean"]
    assert growth["n_pairs"] == 50  # paired by training image: only the images both scored
    assert growth["difference"] == pytest.approx(1.0)
    assert metrics["nn_distance_pixels"]["interval"] == [0.0, 0.0]
    assert metrics["irs_inf"]["n_pairs"] == N_SAMPLES
    # The same request gives the same answer (seeded bootstrap).
    assert compare(client, auth, *pair, replicates=500).json() == body


def test_jobs_of_different_specs_are_a_422_listing_what_differs(
    client: TestClient, auth: dict[str, str], session: Session, checkpoints: tuple[str, str]
) -> None:
    spec = {"stages": ["sample"], "sample": {"n": 8, "steps": 6, "seed": 3}}
    a, b = submit(client, auth, checkpoints[0]), submit(client, auth, checkpoints[1], spec)
    for job in (a, b):
        evaluations.finish(session, job, SUCCEEDED, results=RESULTS)
    response = compare(client, auth, a, b)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"]["differences"] == [
        {"field": "spec.sample.seed", "baseline": 0, "candidate": 3},
        {"field": "spec.sample.steps", "baseline": 5, "candidate": 6},
    ]
    assert "spec.sample.seed: 0 vs 3" in error["message"] and "spec.sample.steps: 5 vs 6" in error["message"]


def test_unfinished_missing_and_unpaired_requests_are_refused(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    session: Session,
    checkpoints: tuple[str, str],
    pair: tuple[str, str],
) -> None:
    queued = submit(client, auth, checkpoints[0])
    response = compare(client, auth, pair[0], queued)
    assert response.status_code == 409, response.text
    assert f"candidate evaluation {queued} is queued" in response.json()["error"]["message"]
    failed = submit(client, auth, checkpoints[1])
    evaluations.finish(session, failed, FAILED, error="why")
    assert "is failed" in compare(client, auth, failed, pair[1]).json()["error"]["message"]
    same = compare(client, auth, pair[0], pair[0])
    assert same.status_code == 422 and "same evaluation" in same.json()["error"]["message"]
    assert compare(client, other_auth, *pair).status_code == 404
    assert compare(client, auth, pair[0], "ev_missing").status_code == 404
    for bad in ({"error_rate": 0.6}, {"replicates": 10}, {"extra": 1}):
        assert compare(client, auth, *pair, **bad).status_code == 422, bad
    bare = [submit(client, auth, c) for c in checkpoints]  # sample stage only: nothing paired to compare
    for job in bare:
        evaluations.finish(session, job, SUCCEEDED, results={"version": 1, "stages": {}})
    nothing = compare(client, auth, *bare)
    assert nothing.status_code == 422 and "no per-sample quantity" in nothing.json()["error"]["message"]


def test_cli_compare_prints_the_comparison_and_exits_1_when_worse(
    client: TestClient,
    auth: dict[str, str],
    pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = Client("http://testserver", "unused")
    api.http = client
    client.headers.update(auth)
    monkeypatch.setattr(cli, "_client", lambda args: api)
    assert cli.main(["compare", *pair]) == 1
    assert '"verdict": "worse"' in capsys.readouterr().out
    assert cli.main(["compare", pair[0], pair[0]]) == 2  # the server's 422, printed as an error
    assert "same evaluation" in capsys.readouterr().err
