"""Checkpoints of a training run (run + step on upload) and GET /v1/runs, /v1/runs/{name}, its trajectory."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from app_helpers import (
    BAD_PAGE_PARAMS,
    TinyCheckpoint,
    assert_bad_page_refused,
    get_page,
    upload_checkpoint,
    zip_folder,
)
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file
from sqlalchemy.orm import Session

from app.evaluations import service as evaluations
from app.models import REJECTED, SUCCEEDED
from diffaudit import cli
from diffaudit.client import Client

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SPEC = {"stages": ["sample"], "sample": {"n": 8, "steps": 5}}
OTHER_SPEC = {"stages": ["sample"], "sample": {"n": 8, "steps": 6}}
STEPS = (1000, 2000, 3000, 4000)


@pytest.fixture(scope="session")
def step_zips(tiny_checkpoint: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Zips of len(STEPS) checkpoints with distinct weights (one per training step)."""
    zips = []
    for i in range(len(STEPS)):
        folder = tmp_path_factory.mktemp("steps") / f"step{i}"
        shutil.copytree(tiny_checkpoint.folder, folder)
        weights = load_file(folder / WEIGHTS)
        name = sorted(weights)[0]
        weights[name] = weights[name] + 0.01 * (i + 1)
        save_file(weights, folder / WEIGHTS)
        zips.append(zip_folder(folder))
    return zips


def push(client: TestClient, auth: dict[str, str], data: bytes, **form: Any) -> Any:
    files = {"file": ("model.zip", data, "application/zip")}
    return client.post("/v1/checkpoints", headers=auth, files=files, data={k: str(v) for k, v in form.items()})


def submit(
    client: TestClient, auth: dict[str, str], checkpoint_id: str, spec: dict[str, Any] = SPEC, dataset: str = "digits"
) -> str:
    body = {"checkpoint_id": checkpoint_id, "dataset_id": dataset, "spec": spec}
    response = client.post("/v1/evaluations", headers=auth, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def results(irs: tuple[float, float, float], copy_rate: float, ds: int, fid: float | None = None) -> dict[str, Any]:
    """A results document with the summaries the trajectory reads (as the stages write them)."""
    stages: dict[str, Any] = {
        "irs": {"synthetic": {"irs_inf": irs[0], "irs_inf_lower": irs[1], "irs_inf_upper": irs[2]}},
        "memorization": {
            "spaces": {"pixels": {"extraction": {"fraction_flagged": copy_rate}}},
            "volume_growth": {"score": {"mean": 10 * copy_rate, "median": 5 * copy_rate}},
        },
        "novelty": {"tsne": {"majority_count": ds}},
    }
    if fid is not None:
        stages["distribution"] = {"fid": fid, "precision": 0.5, "intervals": {"fid": [fid - 1, fid + 1]}}
    return {"version": 1, "stages": stages}


@pytest.fixture()
def run_of(client: TestClient, auth: dict[str, str], step_zips: list[bytes]) -> Callable[[str], list[str]]:
    """Upload the checkpoints of STEPS as a run of that name (steps out of order); their ids by step."""

    def make(name: str) -> list[str]:
        ids = {}
        for i in (2, 0, 3, 1):
            response = push(client, auth, step_zips[i], run=name, step=STEPS[i])
            assert response.status_code == 201, response.text
            ids[i] = response.json()["id"]
        return [ids[i] for i in range(len(STEPS))]

    return make


def test_upload_with_run_and_step(client: TestClient, auth: dict[str, str], step_zips: list[bytes]) -> None:
    response = push(client, auth, step_zips[0], run="run-a", step=0)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["run"], body["step"]) == ("run-a", 0)
    assert client.get(f"/v1/checkpoints/{body['id']}", headers=auth).json()["run"] == "run-a"
    plain = push(client, auth, step_zips[1])
    assert (plain.json()["run"], plain.json()["step"]) == (None, None)
    # The same content again, at the same place or without one: the existing checkpoint.
    assert push(client, auth, step_zips[0], run="run-a", step=0).status_code == 200
    assert push(client, auth, step_zips[0]).json()["id"] == body["id"]


def test_the_same_run_and_step_twice_is_a_409_naming_them(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], step_zips: list[bytes]
) -> None:
    first = push(client, auth, step_zips[0], run="run-b", step=7).json()
    response = push(client, auth, step_zips[1], run="run-b", step=7)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "'run-b'" in error["message"] and "step 7" in error["message"] and first["id"] in error["message"]
    assert error["details"] == {"run": "run-b", "step": 7, "checkpoint_id": first["id"]}
    # Content already stored elsewhere in the run cannot be a second step.
    moved = push(client, auth, step_zips[0], run="run-b", step=8)
    assert moved.status_code == 409 and first["id"] in moved.json()["error"]["message"]
    # Another project has its own runs.
    assert push(client, other_auth, step_zips[1], run="run-b", step=7).status_code == 201


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"run": "has space", "step": 1}, "body.run"),
        ({"run": "-dash-first", "step": 1}, "body.run"),
        ({"run": "x" * 101, "step": 1}, "body.run"),
        ({"run": "ok", "step": -1}, "body.step"),
        ({"run": "ok", "step": "ten"}, "body.step"),
        ({"run": "ok", "step": 2**63}, "body.step"),
        ({"run": "ok"}, "`run` and `step` together"),
        ({"step": 3}, "`run` and `step` together"),
    ],
)
def test_bad_run_or_step_is_a_422(
    client: TestClient, auth: dict[str, str], tiny_checkpoint: TinyCheckpoint, form: dict[str, Any], expected: str
) -> None:
    response = push(client, auth, tiny_checkpoint.zip_bytes, **form)
    assert response.status_code == 422, response.text
    assert expected in response.json()["error"]["message"]
    assert client.get("/v1/checkpoints", headers=auth).json()["total"] == 0


def test_list_runs_is_paginated_by_name(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], step_zips: list[bytes]
) -> None:
    for i, name in enumerate(("b-run", "a-run", "c-run")):
        assert push(client, auth, step_zips[i], run=name, step=10 * i).status_code == 201
    assert push(client, auth, step_zips[3], run="a-run", step=5).status_code == 201
    upload_checkpoint(client, other_auth, step_zips[0])
    page = get_page(client, "/v1/runs", auth, limit=2)
    assert page["total"] == 3
    assert [(r["name"], r["checkpoints"], r["first_step"], r["last_step"]) for r in page["items"]] == [
        ("a-run", 2, 5, 10),
        ("b-run", 1, 0, 0),
    ]
    assert [r["name"] for r in get_page(client, "/v1/runs", auth, limit=2, offset=2)["items"]] == ["c-run"]
    assert get_page(client, "/v1/runs", other_auth)["total"] == 0
    for params in BAD_PAGE_PARAMS:
        assert_bad_page_refused(client.get("/v1/runs", headers=auth, params=params), params)


def test_run_lists_its_checkpoints_by_step_with_their_evaluations(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], run_of: Callable[[str], list[str]]
) -> None:
    ids = run_of("r1")
    job = submit(client, auth, ids[1])
    body = client.get("/v1/runs/r1", headers=auth).json()
    assert body["name"] == "r1"
    assert [(c["step"], c["checkpoint_id"]) for c in body["checkpoints"]] == list(zip(STEPS, ids, strict=True))
    assert [[e["id"] for e in c["evaluations"]] for c in body["checkpoints"]] == [[], [job], [], []]
    assert body["checkpoints"][1]["evaluations"][0]["status"] == "queued"
    assert body["spec_hashes"] == []  # nothing finished yet
    for headers, path in ((auth, "/v1/runs/nope"), (other_auth, "/v1/runs/r1")):
        response = client.get(path, headers=headers)
        assert response.status_code == 404
        assert "not found in this project" in response.json()["error"]["message"]


def test_trajectory_reads_every_headline_number_and_marks_the_change_points(
    client: TestClient, auth: dict[str, str], session: Session, run_of: Callable[[str], list[str]]
) -> None:
    ids = run_of("r2")
    documents = [
        results((0.80, 0.75, 0.85), 0.0, 40),
        results((0.78, 0.72, 0.84), 0.005, 38, fid=30.0),
        results((0.60, 0.55, 0.65), 0.02, 20, fid=50.0),  # IRS upper 0.65 < 0.72: diversity drops; copying starts
        results((0.58, 0.50, 0.66), 0.10, 10, fid=70.0),
    ]
    jobs = [submit(client, auth, ck) for ck in ids]
    for job, document in zip(jobs, documents, strict=True):
        evaluations.finish(session, job, SUCCEEDED, results=document)
    stale = submit(client, auth, ids[0])  # a later job of the same checkpoint and spec replaces the earlier one
    evaluations.finish(session, stale, REJECTED, results=results((0.81, 0.76, 0.86), 0.0, 41))
    submit(client, auth, ids[1])  # queued: not part of the trajectory
    response = client.get("/v1/runs/r2/trajectory", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(s["step"], s["evaluation_id"], s["status"]) for s in body["steps"]] == [
        (STEPS[0], stale, "rejected"),
        *[(STEPS[i], jobs[i], "succeeded") for i in (1, 2, 3)],
    ]
    series = body["series"]
    assert set(series) == {
        "irs_inf",
        "copy_rate_pixels",
        "volume_growth_mean",
        "volume_growth_median",
        "ds_count",
        "fid",
        "precision",
    }
    assert [(p["step"], p["value"], p["lower"], p["upper"]) for p in series["irs_inf"]] == [
        (STEPS[0], 0.81, 0.76, 0.86),
        (STEPS[1], 0.78, 0.72, 0.84),
        (STEPS[2], 0.60, 0.55, 0.65),
        (STEPS[3], 0.58, 0.50, 0.66),
    ]
    assert [p["value"] for p in series["ds_count"]] == [41, 38, 20, 10]
    assert [(p["step"], p["value"], p["lower"]) for p in series["fid"]] == [
        (STEPS[1], 30.0, 29.0),
        (STEPS[2], 50.0, 49.0),
        (STEPS[3], 70.0, 69.0),
    ]
    assert (body["copying_starts"], body["diversity_drops"]) == (STEPS[2], STEPS[2])
    assert body["copy_threshold"] == 0.01
    looser = client.get("/v1/runs/r2/trajectory", headers=auth, params={"copy_threshold": 0.05}).json()
    assert (looser["copying_starts"], looser["diversity_drops"]) == (STEPS[3], STEPS[2])
    plot = client.get(body["plot"], headers=auth)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    width, height = Image.open(io.BytesIO(plot.content)).size
    assert height > 2 * width  # one panel per number, stacked


def test_several_specs_need_a_spec_hash(
    client: TestClient, auth: dict[str, str], session: Session, run_of: Callable[[str], list[str]]
) -> None:
    ids = run_of("r3")
    first = submit(client, auth, ids[0])
    other = submit(client, auth, ids[1], OTHER_SPEC)
    for job in (first, other):
        evaluations.finish(session, job, SUCCEEDED, results=results((0.8, 0.7, 0.9), 0.0, 5))
    hashes = sorted(client.get(f"/v1/evaluations/{job}", headers=auth).json()["spec_hash"] for job in (first, other))
    for path in ("/v1/runs/r3/trajectory", "/v1/runs/r3/trajectory.png"):
        response = client.get(path, headers=auth)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert all(h in error["message"] for h in hashes) and "spec_hash" in error["message"]
        assert error["details"] == {"spec_hashes": hashes}
    assert client.get("/v1/runs/r3", headers=auth).json()["spec_hashes"] == hashes
    other_hash = client.get(f"/v1/evaluations/{other}", headers=auth).json()["spec_hash"]
    chosen = client.get("/v1/runs/r3/trajectory", headers=auth, params={"spec_hash": other_hash}).json()
    assert [s["evaluation_id"] for s in chosen["steps"]] == [other]
    unknown = client.get("/v1/runs/r3/trajectory", headers=auth, params={"spec_hash": "0" * 64})
    assert unknown.status_code == 422 and hashes[0] in unknown.json()["error"]["message"]


def test_jobs_of_one_spec_on_several_datasets_need_a_dataset_id(
    client: TestClient, auth: dict[str, str], session: Session, run_of: Callable[[str], list[str]]
) -> None:
    ids = run_of("r5")
    buffer = io.BytesIO()
    images = np.random.default_rng(0).integers(0, 256, size=(40, 16, 16, 1), dtype=np.uint8)
    np.savez(buffer, images=images, labels=np.arange(40) % 10)
    files = {"file": ("mine.npz", buffer.getvalue(), "application/octet-stream")}
    uploaded = client.post("/v1/datasets", headers=auth, files=files, data={"name": "mine"})
    assert uploaded.status_code == 201, uploaded.text
    mine = uploaded.json()["id"]
    on_digits, on_mine = submit(client, auth, ids[0]), submit(client, auth, ids[1], dataset=mine)
    for job in (on_digits, on_mine):
        evaluations.finish(session, job, SUCCEEDED, results=results((0.8, 0.7, 0.9), 0.0, 5))
    response = client.get("/v1/runs/r5/trajectory", headers=auth)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "dataset_id" in error["message"] and error["details"] == {"dataset_ids": sorted(["digits", mine])}
    chosen = client.get("/v1/runs/r5/trajectory", headers=auth, params={"dataset_id": mine}).json()
    assert ([s["evaluation_id"] for s in chosen["steps"]], chosen["dataset_id"]) == ([on_mine], mine)
    assert f"dataset_id={mine}" in chosen["plot"]
    assert client.get(chosen["plot"], headers=auth).status_code == 200


def test_a_run_without_finished_jobs_has_an_empty_trajectory(
    client: TestClient, auth: dict[str, str], run_of: Callable[[str], list[str]]
) -> None:
    run_of("r4")
    body = client.get("/v1/runs/r4/trajectory", headers=auth).json()
    assert (body["spec_hash"], body["steps"], body["series"]) == (None, [], {})
    assert (body["copying_starts"], body["diversity_drops"]) == (None, None)
    assert client.get(body["plot"], headers=auth).headers["content-type"] == "image/png"
    assert client.get("/v1/runs/nope/trajectory", headers=auth).status_code == 404


def test_cli_checkpoint_push_with_run_and_step(
    client: TestClient,
    auth: dict[str, str],
    tiny_checkpoint: TinyCheckpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = Client("http://testserver", "unused")
    api.http = client
    client.headers.update(auth)
    monkeypatch.setattr(cli, "_client", lambda args: api)
    folder = str(tiny_checkpoint.folder)
    assert cli.main(["checkpoint", "push", folder, "--run", "cli-run", "--step", "42"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert (pushed["run"], pushed["step"]) == ("cli-run", 42)
    assert [c["step"] for c in client.get("/v1/runs/cli-run", headers=auth).json()["checkpoints"]] == [42]
