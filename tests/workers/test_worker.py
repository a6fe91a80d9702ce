"""Jobs on real Celery workers over Redis: success, cancellation, a worker killed mid-job, and the retry
policy (a stage that raises is retried unless the error is InvalidInput, the user's to fix)."""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file
from worker_helpers import Workers, wait_for

from app.evaluations import service
from app.evaluations.service import job_prefix
from app.settings import Settings
from diffaudit.datasets.digits import load_digits16
from diffaudit.features.registry import TORCHVISION_MODELS
from diffaudit.pipeline import result_key
from diffaudit.store import LocalStore, ScopedStore, save_json
from tests.faults import fault_message

TERMINAL = ("succeeded", "rejected", "failed", "cancelled")
N = 48
SPEC: dict[str, Any] = {
    "stages": ["sample", "features"],
    "sample": {"n": N, "steps": 40, "batch_size": 8, "scheduler": "ddim", "seed": 3},
    "features": {"extractor": "random-cnn"},
}
QUICK_SPEC: dict[str, Any] = {**SPEC, "sample": {"n": 8, "steps": 2, "batch_size": 8}}


def submit(api: TestClient, checkpoint_id: str, spec: dict[str, Any] = SPEC, dataset_id: str = "digits") -> str:
    body = {"checkpoint_id": checkpoint_id, "dataset_id": dataset_id, "spec": spec}
    response = api.post("/v1/evaluations", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def stage(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in job["stages"] if s["name"] == name)


def artifact_array(api: TestClient, evaluation_id: str, name: str) -> np.ndarray:
    response = api.get(f"/v1/evaluations/{evaluation_id}/artifacts/{name}")
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def without_timings(value: Any) -> Any:
    """A results document without what differs between two runs: wall-clock figures, whether the
    training features were already cached (the second run reuses the first run's), and the headlines
    that quote both."""
    varying = ("training_cache_hit", "headline")
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "second" not in k and k not in varying}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_a_job_runs_to_success_on_a_real_worker(api: TestClient, workers: Workers, demo_checkpoint_id: str) -> None:
    workers.start()
    evaluation_id = submit(api, demo_checkpoint_id)
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "succeeded", job
    assert [s["status"] for s in job["stages"]] == ["done", "done"]
    assert stage(job, "sample")["done"] == stage(job, "sample")["total"] == N
    results = api.get(f"/v1/evaluations/{evaluation_id}/results").json()
    assert set(results["stages"]) == {"sample", "features"}
    grid = api.get(f"/v1/evaluations/{evaluation_id}/artifacts/sample/grid.png")
    assert grid.status_code == 200 and grid.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert artifact_array(api, evaluation_id, "sample/images.npy").shape == (N, 16, 16, 1)


def test_a_worker_killed_mid_job_loses_nothing(api: TestClient, workers: Workers, demo_checkpoint_id: str) -> None:
    first = workers.start()
    evaluation_id = submit(api, demo_checkpoint_id)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
    workers.kill(first)
    killed = api.get(f"/v1/evaluations/{evaluation_id}").json()
    assert killed["status"] == "running"
    assert stage(killed, "sample")["status"] == "running", "the worker was killed after the stage, not during it"

    workers.start()
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "succeeded", job

    reference_id = submit(api, demo_checkpoint_id)
    reference = wait_for(api, reference_id, lambda j: j["status"] in TERMINAL, workers)
    assert reference["status"] == "succeeded", reference
    for name in ("sample/images.npy", "features/generated.npy"):
        np.testing.assert_array_equal(
            artifact_array(api, evaluation_id, name), artifact_array(api, reference_id, name), err_msg=name
        )
    resumed = api.get(f"/v1/evaluations/{evaluation_id}/results").json()
    uninterrupted = api.get(f"/v1/evaluations/{reference_id}/results").json()
    assert without_timings(resumed) == without_timings(uninterrupted)


def test_a_cancelled_job_stops(api: TestClient, workers: Workers, demo_checkpoint_id: str) -> None:
    workers.start()
    slow = {**SPEC, "sample": {**SPEC["sample"], "n": 4000, "steps": 50}}
    evaluation_id = submit(api, demo_checkpoint_id, slow)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
    assert api.post(f"/v1/evaluations/{evaluation_id}/cancel").status_code in (200, 202)
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers, timeout=60)
    assert job["status"] == "cancelled"
    assert stage(job, "sample")["done"] < 4000
    assert [s["status"] for s in job["stages"]] == ["cancelled", "skipped"]


def stage_task_ended(workers: Workers) -> bool:
    return re.search(r"Task evaluations\.stage\[[^\]]+\] succeeded in", workers.logs(tail=10**6)) is not None


def test_cancel_stops_the_worker_inside_a_batch(
    api: TestClient, workers: Workers, demo_checkpoint_id: str, worker_settings: Settings
) -> None:
    workers.start()
    one_long_batch = {**SPEC, "sample": {"n": 64, "steps": 1000, "batch_size": 64}}
    evaluation_id = submit(api, demo_checkpoint_id, one_long_batch)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["status"] == "running", workers)
    assert api.post(f"/v1/evaluations/{evaluation_id}/cancel").json()["status"] == "cancelled"
    wait_for(api, evaluation_id, lambda j: stage_task_ended(workers), workers)
    batches = worker_settings.artifact_dir / "evaluations" / evaluation_id / "sample" / "batches"
    assert not batches.exists() or not any(batches.iterdir()), "the worker finished the batch it was cancelled in"


def test_a_job_whose_worker_died_is_cancelled_at_once(
    api: TestClient, workers: Workers, demo_checkpoint_id: str
) -> None:
    first = workers.start()
    evaluation_id = submit(api, demo_checkpoint_id)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
    workers.kill(first)
    job = api.post(f"/v1/evaluations/{evaluation_id}/cancel").json()
    assert (job["status"], [s["status"] for s in job["stages"]]) == ("cancelled", ["cancelled", "skipped"])

    workers.start()  # the dead worker's task is redelivered, and ends at once
    quick = submit(api, demo_checkpoint_id, QUICK_SPEC)
    assert wait_for(api, quick, lambda j: j["status"] in TERMINAL, workers)["status"] == "succeeded"
    assert api.get(f"/v1/evaluations/{evaluation_id}").json() == job


def test_a_crashing_stage_is_retried_then_fails_with_its_error(
    api: TestClient, workers: Workers, demo_checkpoint_id: str
) -> None:
    # The features stage raises KeyError in its first three runs: the first job uses them all (3 attempts) and
    # fails; the second job's features stage then runs normally.
    workers.start(fault=("features", "KeyError", 3))
    failing = submit(api, demo_checkpoint_id, QUICK_SPEC)
    job = wait_for(api, failing, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "failed", job
    message = fault_message("features", "KeyError")
    assert job["error"] == (
        "stage features failed after 3 attempts with an internal error (KeyError); the worker's log has the details"
    )
    assert message not in job["error"]  # a defect's text (which can hold server paths) stays in the log
    assert [s["status"] for s in job["stages"]] == ["done", "failed"]
    assert workers.logs(tail=10**6).count("crashed; retrying") == 2

    after = submit(api, demo_checkpoint_id, QUICK_SPEC)
    assert wait_for(api, after, lambda j: j["status"] in TERMINAL, workers)["status"] == "succeeded"


def test_invalid_input_fails_at_once(api: TestClient, workers: Workers, demo_checkpoint_id: str) -> None:
    workers.start(fault=("sample", "InvalidInput", 1))
    evaluation_id = submit(api, demo_checkpoint_id, QUICK_SPEC)
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert (job["status"], job["error"]) == ("failed", f"stage sample: {fault_message('sample', 'InvalidInput')}")
    assert [s["status"] for s in job["stages"]] == ["failed", "skipped"]
    assert "crashed; retrying" not in workers.logs(tail=10**6)


def test_a_job_stopped_after_its_last_stage_is_ended_when_resumed(
    api: TestClient, workers: Workers, demo_checkpoint_id: str, worker_settings: Settings
) -> None:
    # The process died between recording the last stage and ending the job: every stage is done, the job is not.
    evaluation_id = submit(api, demo_checkpoint_id, QUICK_SPEC)
    job_store = ScopedStore(LocalStore(worker_settings.artifact_dir), job_prefix(evaluation_id))
    summaries = {"sample": {"n": 8}, "features": {"n_generated": 8}}
    with api.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        service.mark_running(session, evaluation_id)
        for name, summary in summaries.items():
            save_json(job_store, result_key(name), summary)
            service.mark_stage_started(session, evaluation_id, name)
            service.record_stage_done(session, evaluation_id, name, summary)
    workers.start()  # receives the job's evaluations.run
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "succeeded", job
    assert api.get(f"/v1/evaluations/{evaluation_id}/results").json()["stages"] == summaries


def test_a_job_loads_extractor_weights_from_the_operators_weights_folder(
    api: TestClient, workers: Workers, worker_settings: Settings, demo_checkpoint_id: str
) -> None:
    """The spec names the file relative to DIFFAUDIT_WEIGHTS_DIR; the worker resolves it there and records its hash."""
    assert worker_settings.weights_dir is not None
    torch.manual_seed(3)
    path = worker_settings.weights_dir / "squeezenet.safetensors"
    save_file(TORCHVISION_MODELS["squeezenet1_1"].build().state_dict(), path)
    # 64 digits, not all 1,797: squeezenet at 224x224 on one CPU thread is what this test would spend its time on
    images, labels = load_digits16()
    buffer = io.BytesIO()
    np.savez(buffer, images=images[:64], labels=labels[:64])
    response = api.post("/v1/datasets", files={"file": ("digits64.npz", buffer.getvalue())}, data={"name": "digits64"})
    assert response.status_code == 201, response.text
    workers.start()
    spec = {**QUICK_SPEC, "features": {"extractor": "squeezenet1_1", "weights": "squeezenet.safetensors"}}
    evaluation_id = submit(api, demo_checkpoint_id, spec, dataset_id=response.json()["id"])
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "succeeded", job
    features = api.get(f"/v1/evaluations/{evaluation_id}/results").json()["stages"]["features"]
    assert features["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not features["random_init"]
