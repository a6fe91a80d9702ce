"""GET /v1/evaluations/{id}/report and its share links: the page of one job, opened by a bearer or by a signed,
expiring token that opens nothing else."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from app_helpers import TinyCheckpoint, upload_checkpoint
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.evaluations import service
from app.models import REJECTED, SUCCEEDED
from diffaudit.store import LocalStore

SPEC = {"stages": ["sample"], "sample": {"n": 8, "steps": 5}}
FIGURE = b"\x89PNG\r\n\x1a\n fake figure bytes"
RESULTS: dict[str, Any] = {
    "version": 1,
    "spec": {"stages": ["sample"]},
    "stages": {"sample": {"headline": "8 samples with ddim (5 steps)", "n": 8, "seconds": 0.5}},
}


def finished_job(
    client: TestClient,
    auth: dict[str, str],
    checkpoint_id: str,
    session: Session,
    store: LocalStore,
    status: str = SUCCEEDED,
    results: dict[str, Any] | None = None,
) -> str:
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "spec": SPEC}
    job_id = str(client.post("/v1/evaluations", headers=auth, json=body).json()["id"])
    store.put_bytes(f"evaluations/{job_id}/sample/grid.png", FIGURE)
    service.mark_running(session, job_id)
    service.record_stage_done(session, job_id, "sample", RESULTS["stages"]["sample"])
    error = "early IRS rejection after 96 samples" if status == REJECTED else None
    service.finish(session, job_id, status, results=results or RESULTS, error=error)
    return job_id


@pytest.fixture()
def checkpoint_id(client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint) -> str:
    return str(upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"])


@pytest.fixture()
def job_id(client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session, store: LocalStore) -> str:
    return finished_job(client, auth, checkpoint_id, session, store)


def share(client: TestClient, auth: dict[str, str], job_id: str, expires_in: int = 600) -> dict[str, Any]:
    response = client.post(f"/v1/evaluations/{job_id}/share", headers=auth, json={"expires_in": expires_in})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_report_is_rendered_when_no_artifact_exists(
    client: TestClient, auth: dict[str, str], job_id: str, checkpoint_id: str
) -> None:
    response = client.get(f"/v1/evaluations/{job_id}/report", headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "Succeeded" in page and "8 samples with ddim (5 steps)" in page
    assert base64.b64encode(FIGURE).decode() in page
    assert checkpoint_id in page  # checkpoint facts
    assert "<th>count</th><td>1797</td>" in page  # dataset facts: the built-in digits


def test_the_stored_report_is_served_as_stored(
    client: TestClient, auth: dict[str, str], job_id: str, session: Session, store: LocalStore
) -> None:
    service.store_job_report(session, store, job_id)
    stored = store.get_bytes(f"evaluations/{job_id}/report.html").decode()
    assert "8 samples with ddim (5 steps)" in stored
    store.put_bytes(f"evaluations/{job_id}/report.html", b"<!DOCTYPE html><p>the stored one</p>")
    assert client.get(f"/v1/evaluations/{job_id}/report", headers=auth).text == "<!DOCTYPE html><p>the stored one</p>"


def test_a_rejected_job_reports_its_reason(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session, store: LocalStore
) -> None:
    results = {**RESULTS, "rejection": {"samples_drawn": 96, "distinct": 61}}
    job_id = finished_job(client, auth, checkpoint_id, session, store, REJECTED, results)
    page = client.get(f"/v1/evaluations/{job_id}/report", headers=auth).text.replace("<wbr>", "")
    assert "Rejected" in page and "early IRS rejection after 96 samples" in page
    assert "<th>samples_drawn</th><td>96</td>" in page


def test_reports_need_the_project_and_a_finished_job(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], job_id: str, checkpoint_id: str
) -> None:
    assert client.get(f"/v1/evaluations/{job_id}/report").status_code == 401
    assert client.get(f"/v1/evaluations/{job_id}/report", headers=other_auth).status_code == 404
    assert client.post(f"/v1/evaluations/{job_id}/share", headers=other_auth, json={}).status_code == 404
    body = {"checkpoint_id": checkpoint_id, "dataset_id": "digits", "spec": SPEC}
    queued = client.post("/v1/evaluations", headers=auth, json=body).json()["id"]
    response = client.get(f"/v1/evaluations/{queued}/report", headers=auth)
    assert (response.status_code, response.json()["error"]["code"]) == (409, "not_finished")


def test_a_share_link_opens_that_report_without_a_bearer(client: TestClient, auth: dict[str, str], job_id: str) -> None:
    link = share(client, auth, job_id)
    default = client.post(f"/v1/evaluations/{job_id}/share", headers=auth).json()  # no body: 7 days
    assert abs(datetime.fromisoformat(default["expires_at"]).timestamp() - (time.time() + 7 * 24 * 3600)) < 5
    assert link["url"] == f"/v1/evaluations/{job_id}/report?token={link['token']}"
    opened = client.get(link["url"])
    assert opened.status_code == 200
    assert opened.text == client.get(f"/v1/evaluations/{job_id}/report", headers=auth).text
    assert abs(datetime.fromisoformat(link["expires_at"]).timestamp() - (time.time() + 600)) < 5


def test_a_share_link_opens_nothing_else(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, session: Session, store: LocalStore, job_id: str
) -> None:
    token = share(client, auth, job_id)["token"]
    other_job = finished_job(client, auth, checkpoint_id, session, store)
    response = client.get(f"/v1/evaluations/{other_job}/report", params={"token": token})
    assert response.status_code == 403
    for path in ("", "/results", "/artifacts", "/artifacts/sample/grid.png"):
        response = client.get(f"/v1/evaluations/{job_id}{path}", params={"token": token})
        assert response.status_code == 401, path
    assert client.post(f"/v1/evaluations/{job_id}/share", params={"token": token}, json={}).status_code == 401


def test_tampered_and_expired_tokens_are_refused(
    client: TestClient, auth: dict[str, str], job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = share(client, auth, job_id)["token"]
    expires, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for bad in (f"{expires}.{flipped}", f"{int(expires) + 3600}.{signature}", signature, "", "1.", f"{expires}."):
        response = client.get(f"/v1/evaluations/{job_id}/report", params={"token": bad})
        assert response.status_code == 403, bad
        assert "not valid for this report" in response.json()["error"]["message"]

    now = time.time()
    monkeypatch.setattr(service.time, "time", lambda: now - 3600)  # a token made an hour ago, valid 10 minutes
    old = share(client, auth, job_id)["token"]
    monkeypatch.setattr(service.time, "time", lambda: now)
    response = client.get(f"/v1/evaluations/{job_id}/report", params={"token": old})
    assert response.status_code == 403
    assert "expired" in response.json()["error"]["message"]


@pytest.mark.parametrize("expires_in", [0, 59, 30 * 24 * 3600 + 1, "soon"])
def test_the_expiry_is_bounded(client: TestClient, auth: dict[str, str], job_id: str, expires_in: Any) -> None:
    response = client.post(f"/v1/evaluations/{job_id}/share", headers=auth, json={"expires_in": expires_in})
    assert response.status_code == 422


def test_share_links_need_a_secret_outside_the_embedded_deployment(
    make_client: Callable[..., TestClient],
    auth: dict[str, str],
    checkpoint_id: str,
    session: Session,
    store: LocalStore,
    job_id: str,
) -> None:
    redis = make_client(broker_url="redis://127.0.0.1:6379/0")
    response = redis.post(f"/v1/evaluations/{job_id}/share", headers=auth, json={})
    assert response.status_code == 503 and "DIFFAUDIT_SHARE_SECRET" in response.json()["error"]["message"]

    first, second = (make_client(broker_url="redis://127.0.0.1:6379/0", share_secret="s3cret") for _ in range(2))
    token = share(first, auth, job_id)["token"]
    assert second.get(f"/v1/evaluations/{job_id}/report", params={"token": token}).status_code == 200
    other = make_client(broker_url="redis://127.0.0.1:6379/0", share_secret="another")
    assert other.get(f"/v1/evaluations/{job_id}/report", params={"token": token}).status_code == 403
