"""HTTP edges: 405 names every allowed method, JSON bodies over 1 MiB get one 413, undecodable bodies a listed 400."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.uploads import JSON_BODY_LIMIT
from diffaudit.features.weights import InvalidWeights


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/evaluations", "GET, POST"),
        ("/v1/checkpoints", "GET, POST"),
        ("/v1/datasets", "GET, POST"),
        ("/v1/evaluations/ev_x", "GET"),
        ("/v1/evaluations/ev_x/cancel", "POST"),
    ],
)
@pytest.mark.parametrize("method", ["OPTIONS", "DELETE", "PUT"])
def test_405_names_every_method_of_the_path(
    client: TestClient, auth: dict[str, str], path: str, allowed: str, method: str
) -> None:
    response = client.request(method, path, headers=auth)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert allowed.replace(", ", " or ") in error["message"]


def _streamed(total: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked), so the limit applies while it streams in."""
    chunk = b" " * 65536
    for _ in range(total // len(chunk)):
        yield chunk


def test_json_bodies_over_the_limit_get_one_413(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "content-type": "application/json"}
    declared = client.post("/v1/evaluations", headers=headers, content=b" " * (JSON_BODY_LIMIT + 1))
    streamed = client.post("/v1/evaluations", headers=headers, content=_streamed(2 * JSON_BODY_LIMIT))
    for response in (declared, streamed):
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "too_large"
        assert error["details"] == {"limit_bytes": JSON_BODY_LIMIT}
        assert "DIFFAUDIT_MAX_UPLOAD_BYTES" not in error["message"]  # a fixed limit, not that setting
        assert "1,048,576 bytes" in error["message"]


def test_an_undecodable_json_body_is_a_listed_400(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "content-type": "application/json"}
    response = client.post("/v1/evaluations", headers=headers, content=b'{"checkpoint_id": "\x80"}')
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "bad_request",
        "message": "the request body cannot be decoded: send JSON encoded as UTF-8",
        "details": None,
    }
    documented = client.get("/openapi.json").json()["paths"]["/v1/evaluations"]["post"]["responses"]
    assert {"400", "413"} <= set(documented)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/evaluations/ev%00x",
        "/v1/checkpoints/ck%00x",
        "/v1/datasets/ds%00x",
        "/v1/evaluations/ev%00x/results",
        "/v1/evaluations/ev%00x/artifacts",
        "/v1/evaluations/ev%00x/artifacts/sample/grid.png",
        "/v1/evaluations?checkpoint_id=ck%00",
        "/v1/evaluations?dataset_id=" + "d" * 33,
    ],
)
def test_ids_the_database_cannot_compare_are_422(client: TestClient, auth: dict[str, str], url: str) -> None:
    """A NUL byte in an id made PostgreSQL raise (a 500); ids are checked against their pattern first."""
    response = client.get(url, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_an_evaluation_request_with_a_nul_in_an_id_is_422(client: TestClient, auth: dict[str, str]) -> None:
    for field in ("checkpoint_id", "dataset_id"):
        body = {"checkpoint_id": "ck_1", "dataset_id": "digits", field: "x\x00"}
        response = client.post("/v1/evaluations", headers=auth, json=body)
        assert response.status_code == 422, response.text
        assert f"body.{field}" in response.json()["error"]["message"]


def test_every_input_error_of_the_core_is_a_422(client: TestClient) -> None:
    """InvalidInput means the user's to fix: whichever core error reaches the API, it is never a 500."""

    def refuse() -> None:
        raise InvalidWeights("weights 'w.pth' is not a file of the weights folder")

    client.app.add_api_route("/refuse", refuse)  # type: ignore[attr-defined]
    response = client.get("/refuse")
    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "invalid_input",
        "message": "weights 'w.pth' is not a file of the weights folder",
        "details": None,
    }
