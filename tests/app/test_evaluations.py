"""Evaluation jobs over REST, and the service functions the workers call."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from app_helpers import (
    BAD_PAGE_PARAMS,
    EnqueueRecorder,
    TinyCheckpoint,
    assert_bad_page_refused,
    assert_offsets_are_bounded,
    upload_checkpoint,
)
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.evaluations import service
from app.models import CANCELLED, FAILED, REJECTED, RUNNING, SUCCEEDED, Evaluation, Project
from diffaudit.store import LocalStore

SPEC = {"stages": ["sample"], "sample": {"n": 8, "steps": 5}}


@pytest.fixture()
def checkpoint_id(client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint) -> str:
    return str(upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"])


def submit(
    client: TestClient, headers: dict[str, str], checkpoint_id: str, spec: dict[str, Any] | None = None, key: str = ""
) -> Any:
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "spec": spec or SPEC}
    idempotency = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/evaluations", headers={**headers, **idempotency}, json=body)


def test_create_stores_a_queued_job_and_enqueues_it_after_commit(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, recorder: EnqueueRecorder
) -> None:
    response = submit(client, auth, checkpoint_id, {"stages": ["features"]})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["spec"]["stages"] == ["sample", "features"]  # prerequisites added
    assert [(s["name"], s["position"], s["status"], s["done"]) for s in job["stages"]] == [
        ("sample", 0, "pending", 0),
        ("features", 1, "pending", 0),
    ]
    assert recorder.calls == [("evaluations.run", (job["id"],))]
    assert recorder.seen_status == ["queued"]  # the row was committed before the task was sent
    assert client.get(f"/v1/evaluations/{job['id']}", headers=auth).json() == job


def test_idempotency_key(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, recorder: EnqueueRecorder
) -> None:
    first = submit(client, auth, checkpoint_id, key="run-1")
    again = submit(client, auth, checkpoint_id, key="run-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(recorder.calls) == 1
    different = submit(client, auth, checkpoint_id, {"stages": ["sample"], "sample": {"n": 9}}, key="run-1")
    assert different.status_code == 409
    assert first.json()["id"] in different.json()["error"]["message"]
    other_key = submit(client, auth, checkpoint_id, key="run-2")
    assert other_key.status_code == 201 and other_key.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("spec", "status", "message"),
    [
        ({"stages": ["nonsense"]}, 422, "unknown stage(s) ['nonsense']"),
        ({"sample": {"n": 0}}, 422, "spec.sample.n"),
        ({"sample": {"steps": 5, "typo": 1}}, 422, "typo"),
        ({"sample": {"class_label": 10}}, 422, "out of range: checkpoint"),
    ],
)
def test_invalid_requests_are_refused_and_not_enqueued(
    client: TestClient,
    auth: dict[str, str],
    checkpoint_id: str,
    recorder: EnqueueRecorder,
    spec: dict[str, Any],
    status: int,
    message: str,
) -> None:
    response = submit(client, auth, checkpoint_id, spec)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert recorder.calls == []
    assert client.get("/v1/evaluations", headers=auth).json()["total"] == 0


def test_unknown_checkpoint_and_dataset_are_404(client: TestClient, auth: dict[str, str], checkpoint_id: str) -> None:
    assert submit(client, auth, "ck_missing").status_code == 404
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "ds_missing", "spec": SPEC}
    response = client.post("/v1/evaluations", headers=auth, json=body)
    assert response.status_code == 404
    assert "ds_missing" in response.json()["error"]["message"]


def test_dataset_with_other_channels_is_incompatible(
    client: TestClient, auth: dict[str, str], checkpoint_id: str
) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((4, 16, 16, 3), dtype=np.uint8))
    rgb = client.post("/v1/datasets", headers=auth, files={"file": ("rgb.npz", buffer.getvalue())}).json()
    body = {"checkpoint_id": checkpoint_id, "dataset_id": rgb["id"], "spec": SPEC}
    response = client.post("/v1/evaluations", headers=auth, json=body)
    assert response.status_code == 422
    assert "3-channel images" in response.json()["error"]["message"]


def test_broker_failure_is_503_and_the_job_is_marked_failed(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, recorder: EnqueueRecorder
) -> None:
    recorder.fail_with = ConnectionError("connection refused")
    response = submit(client, auth, checkpoint_id)
    assert response.status_code == 503
    assert "broker unreachable" in response.json()["error"]["message"]
    (job,) = client.get("/v1/evaluations", headers=auth).json()["items"]
    assert job["status"] == "failed"
    assert "submit it again" in job["error"]


def test_pagination_and_filters(
    client: TestClient,
    auth: dict[str, str],
    checkpoint_id: str,
    unconditional_checkpoint: TinyCheckpoint,
    session: Session,
) -> None:
    other_checkpoint = upload_checkpoint(client, auth, unconditional_checkpoint.zip_bytes).json()["id"]
    ids = [submit(client, auth, checkpoint_id, {"sample": {"n": n}}).json()["id"] for n in range(1, 6)]
    last = submit(client, auth, other_checkpoint).json()["id"]
    newest_first = [last, *reversed(ids)]

    def page(**params: Any) -> dict[str, Any]:
        response = client.get("/v1/evaluations", headers=auth, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    pages = [page(limit=4, offset=0), page(limit=4, offset=4)]
    assert [p["total"] for p in pages] == [6, 6]
    assert [e["id"] for p in pages for e in p["items"]] == newest_first
    assert [e["id"] for e in page(checkpoint_id=other_checkpoint)["items"]] == [last]
    assert page(dataset_id="digits")["total"] == 6
    service.finish(session, ids[0], SUCCEEDED, results={"version": 1})
    assert [e["id"] for e in page(status="succeeded")["items"]] == [ids[0]]
    assert page(status="queued")["total"] == 5
    assert client.get("/v1/evaluations", headers=auth, params={"status": "bogus"}).status_code == 422
    for params in BAD_PAGE_PARAMS:
        assert_bad_page_refused(client.get("/v1/evaluations", headers=auth, params=params), params)


def test_huge_offsets_are_refused_on_every_list(client: TestClient, auth: dict[str, str], checkpoint_id: str) -> None:
    submit(client, auth, checkpoint_id)
    assert_offsets_are_bounded(client, auth)


def test_cancel(client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session) -> None:
    queued = submit(client, auth, checkpoint_id, {"sample": {"n": 1}}).json()["id"]
    response = client.post(f"/v1/evaluations/{queued}/cancel", headers=auth)
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")
    assert client.post(f"/v1/evaluations/{queued}/cancel", headers=auth).json()["status"] == "cancelled"
    assert service.mark_running(session, queued).status == CANCELLED  # a worker picking it up does not run it

    # A running job ends cancelled at once, whether or not a worker still runs it (no worker runs here); a
    # worker running it sees cancel_requested at its next check.
    running = submit(client, auth, checkpoint_id, {"sample": {"n": 2}}).json()["id"]
    service.mark_running(session, running)
    service.mark_stage_started(session, running, "sample")
    assert service.is_cancel_requested(session, running) is False
    body = client.post(f"/v1/evaluations/{running}/cancel", headers=auth).json()
    assert (body["status"], body["cancel_requested"]) == ("cancelled", True)
    assert [(s["name"], s["status"]) for s in body["stages"]] == [("sample", "cancelled"), ("features", "skipped")]
    assert body["stages"][0]["finished_at"] is not None
    assert service.is_cancel_requested(session, running) is True
    assert service.finish(session, running, CANCELLED) is False
    service.mark_stage_started(session, running, "sample")  # a worker that had not seen the cancel yet
    service.record_progress(session, running, "sample", 1, 2)
    service.record_stage_done(session, running, "sample", {"n": 2})
    assert client.get(f"/v1/evaluations/{running}", headers=auth).json() == body

    done = submit(client, auth, checkpoint_id, {"sample": {"n": 3}}).json()["id"]
    service.finish(session, done, SUCCEEDED, results={"version": 1})
    assert client.post(f"/v1/evaluations/{done}/cancel", headers=auth).status_code == 409


def test_worker_lifecycle_is_visible_over_rest(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session
) -> None:
    job_id = submit(client, auth, checkpoint_id, {"stages": ["features"]}).json()["id"]
    not_yet = client.get(f"/v1/evaluations/{job_id}/results", headers=auth)
    assert (not_yet.status_code, not_yet.json()["error"]["code"]) == (409, "not_finished")

    job = service.mark_running(session, job_id)
    assert (job.status, job.attempts) == (RUNNING, 1)
    service.mark_stage_started(session, job_id, "sample")
    for done in (2, 4, 6):
        service.record_progress(session, job_id, "sample", done, 8)
    state = client.get(f"/v1/evaluations/{job_id}", headers=auth).json()
    assert state["status"] == "running" and state["started_at"] is not None
    assert [(s["status"], s["done"], s["total"]) for s in state["stages"]] == [("running", 6, 8), ("pending", 0, 0)]

    service.record_stage_done(session, job_id, "sample", {"n": 8, "seconds": 1.25})
    stage = client.get(f"/v1/evaluations/{job_id}", headers=auth).json()["stages"][0]
    assert (stage["status"], stage["done"], stage["total"], stage["seconds"]) == ("done", 8, 8, 1.25)
    assert stage["finished_at"] is not None

    # A redelivered task restarts the job: same start time, one more attempt.
    again = service.mark_running(session, job_id)
    assert (again.attempts, again.started_at) == (2, job.started_at)

    results = {"version": 1, "stages": {"sample": {"n": 8}}}
    assert service.finish(session, job_id, SUCCEEDED, results=results) is True
    assert service.finish(session, job_id, FAILED, error="late") is False  # a finished job stays finished
    final = client.get(f"/v1/evaluations/{job_id}", headers=auth).json()
    assert (final["status"], final["error"]) == ("succeeded", None)
    assert final["finished_at"] >= final["started_at"]
    assert client.get(f"/v1/evaluations/{job_id}/results", headers=auth).json() == results
    with pytest.raises(ValueError, match="final status"):
        service.finish(session, job_id, RUNNING)


@pytest.mark.parametrize("status", [FAILED, REJECTED, CANCELLED])
def test_every_stage_ends_with_its_job(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session, status: str
) -> None:
    spec = {"stages": ["sample", "features", "irs"], "sample": {"n": 8}}
    job_id = submit(client, auth, checkpoint_id, spec).json()["id"]
    service.mark_running(session, job_id)
    service.mark_stage_started(session, job_id, "sample")
    service.record_stage_done(session, job_id, "sample", {"n": 8})
    service.mark_stage_started(session, job_id, "features")
    service.record_progress(session, job_id, "features", 0, 4)
    service.finish(session, job_id, status, error="why")
    job = client.get(f"/v1/evaluations/{job_id}", headers=auth).json()
    assert [(s["name"], s["status"]) for s in job["stages"]] == [
        ("sample", "done"),
        ("features", status),
        ("irs", "skipped"),
    ]
    assert job["stages"][1]["finished_at"] is not None

    never_started = submit(client, auth, checkpoint_id, spec).json()["id"]
    service.finish(session, never_started, status, error="why")
    job = client.get(f"/v1/evaluations/{never_started}", headers=auth).json()
    assert [s["status"] for s in job["stages"]] == ["skipped"] * 3


def test_failed_job_has_no_results(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session
) -> None:
    job_id = submit(client, auth, checkpoint_id).json()["id"]
    service.mark_running(session, job_id)
    service.finish(session, job_id, FAILED, error="CUDA out of memory; lower spec.sample.batch_size")
    response = client.get(f"/v1/evaluations/{job_id}/results", headers=auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_results"
    assert "lower spec.sample.batch_size" in response.json()["error"]["message"]


def test_artifacts(client: TestClient, auth: dict[str, str], checkpoint_id: str, store: LocalStore) -> None:
    job_id = submit(client, auth, checkpoint_id).json()["id"]
    files = {
        "sample/grid.png": b"\x89PNG fake",
        "sample/result.json": b'{"n": 8}',
        "features/table.csv": b"a,b\n1,2\n",
        "features/samples.npy": b"\x93NUMPY",
        "bundle.zip": b"PK",
    }
    for path, data in files.items():
        store.put_bytes(f"evaluations/{job_id}/{path}", data)
    store.put_bytes("checkpoints/secret.txt", b"not an artifact")
    listed = client.get(f"/v1/evaluations/{job_id}/artifacts", headers=auth).json()["items"]
    assert sorted(a["path"] for a in listed) == sorted(files)
    media = {a["path"]: a["media_type"] for a in listed}
    assert media["sample/grid.png"] == "image/png"
    assert media["features/table.csv"] == "text/csv"
    for item in listed:
        response = client.get(item["url"], headers=auth)
        assert response.status_code == 200
        assert response.content == files[item["path"]]
        assert response.headers["content-type"].split(";")[0] == item["media_type"]
    # Percent-encoded so that the client does not normalise the dots away before sending.
    for bad in (
        "missing.png",
        "..%2F..%2Fcheckpoints%2Fsecret.txt",
        "sample%2F%2E%2E%2F%2E%2E%2F..%2Fcheckpoints%2Fsecret.txt",
    ):
        response = client.get(f"/v1/evaluations/{job_id}/artifacts/{bad}", headers=auth)
        assert response.status_code == 404, bad
        assert "has no artifact" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    ["../../checkpoints/secret.txt", "sample/../../../checkpoints/secret.txt", "/etc/passwd", "a//b", "a\\..\\b"],
)
def test_artifact_paths_cannot_escape_the_job_folder(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, store: LocalStore, session: Session, path: str
) -> None:
    job_id = submit(client, auth, checkpoint_id).json()["id"]
    store.put_bytes("checkpoints/secret.txt", b"not an artifact")
    job = session.get(Evaluation, job_id)
    assert job is not None
    owner = session.get(Project, job.project_id)
    assert owner is not None
    with pytest.raises(NotFound, match="has no artifact"):
        service.artifact_file(session, owner, store, job_id, path)
