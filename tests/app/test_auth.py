"""Bearer tokens: every /v1 endpoint needs one, and a project sees only its own resources (404 otherwise)."""

from __future__ import annotations

import hashlib

import pytest
from app_helpers import TinyCheckpoint, upload_checkpoint
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Project, Token
from app.tokens.service import create_token

PROTECTED = [
    ("GET", "/v1/checkpoints"),
    ("POST", "/v1/checkpoints"),
    ("GET", "/v1/checkpoints/ck_x"),
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets/digits"),
    ("GET", "/v1/evaluations"),
    ("POST", "/v1/evaluations"),
    ("GET", "/v1/evaluations/ev_x"),
    ("GET", "/v1/evaluations/ev_x/results"),
    ("GET", "/v1/evaluations/ev_x/artifacts"),
    ("GET", "/v1/evaluations/ev_x/artifacts/a.png"),
    ("POST", "/v1/evaluations/ev_x/cancel"),
    ("GET", "/v1/evaluations/ev_x/report"),
    ("POST", "/v1/evaluations/ev_x/share"),
    ("GET", "/v1/tokens/current"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/r"),
    ("GET", "/v1/runs/r/trajectory"),
    ("GET", "/v1/runs/r/trajectory.png"),
    ("GET", "/v1/runs/r/report"),
    ("POST", "/v1/comparisons"),
    ("GET", "/v1/comparisons/report"),
]


def test_every_protected_route_is_listed(client: TestClient) -> None:
    """Adding a route without adding it to PROTECTED fails here, so none escapes the checks below."""
    paths = client.get("/openapi.json").json()["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops if path != "/healthz"}
    placeholders = {
        "ck_x": "{checkpoint_id}",
        "digits": "{dataset_id}",
        "ev_x": "{evaluation_id}",
        "a.png": "{path}",
        "r": "{name}",
    }

    def template(path: str) -> str:
        return "/".join(placeholders.get(part, part) for part in path.split("/"))

    assert documented == {(method, template(path)) for method, path in PROTECTED}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer da_not-a-real-token", "Basic dXNlcjpwdw=="])
def test_missing_or_bad_token_is_401(client: TestClient, method: str, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert "bearer token" in error["message"]


def test_health_and_docs_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert "/v1/evaluations/{evaluation_id}" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_tokens_are_stored_hashed(session: Session) -> None:
    secret = create_token(session, "hashing-project")
    second = create_token(session, "hashing-project")  # same project, new token
    tokens = session.scalars(select(Token).join(Project).where(Project.name == "hashing-project")).all()
    assert sorted(t.token_hash for t in tokens) == sorted(
        hashlib.sha256(s.encode()).hexdigest() for s in (secret, second)
    )
    assert {t.prefix for t in tokens} == {secret[:10], second[:10]}
    assert len(session.scalars(select(Project).where(Project.name == "hashing-project")).all()) == 1


def test_projects_never_see_each_other(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], tiny_checkpoint: TinyCheckpoint
) -> None:
    checkpoint = upload_checkpoint(client, auth, tiny_checkpoint.zip_bytes).json()["id"]
    files = {"file": ("d.npz", open_npz_bytes())}
    dataset = client.post("/v1/datasets", headers=auth, files=files).json()["id"]
    body = {"checkpoint_id": checkpoint, "dataset_id": "digits", "spec": {"stages": ["sample"]}}
    evaluation = client.post("/v1/evaluations", headers=auth, json=body).json()["id"]

    for path in (
        f"/v1/checkpoints/{checkpoint}",
        f"/v1/datasets/{dataset}",
        f"/v1/evaluations/{evaluation}",
        f"/v1/evaluations/{evaluation}/results",
        f"/v1/evaluations/{evaluation}/artifacts",
    ):
        assert client.get(path, headers=auth).status_code in (200, 409), path
        response = client.get(path, headers=other_auth)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert client.post(f"/v1/evaluations/{evaluation}/cancel", headers=other_auth).status_code == 404
    assert client.get("/v1/checkpoints", headers=other_auth).json()["items"] == []
    assert [d["id"] for d in client.get("/v1/datasets", headers=other_auth).json()["items"]] == ["digits"]
    assert client.get("/v1/evaluations", headers=other_auth).json()["total"] == 0
    # Another project cannot evaluate this project's checkpoint or dataset either.
    stolen = {"checkpoint_id": checkpoint, "dataset_id": "digits", "spec": {"stages": ["sample"]}}
    assert client.post("/v1/evaluations", headers=other_auth, json=stolen).status_code == 404
    # The same content uploaded by the other project is its own checkpoint.
    own = upload_checkpoint(client, other_auth, tiny_checkpoint.zip_bytes)
    assert own.status_code == 201 and own.json()["id"] != checkpoint


def open_npz_bytes() -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((3, 16, 16, 1), dtype=np.uint8))
    return buffer.getvalue()
