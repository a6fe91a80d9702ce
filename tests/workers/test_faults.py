"""Faults a deployment meets, with the real processes: the broker restarted mid-job, the database unreachable
mid-job, the API process killed and started again while a job runs. The broker is a Redis server of the test's
own and the database is cut through a proxy of the test's own: the shared servers are never stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from test_worker import SPEC, TERMINAL, artifact_array, stage, submit
from worker_helpers import RedisServer, TcpProxy, Workers, settings_env, wait_for

from app.settings import Settings
from workers.cli import free_port, wait_until_healthy

# Long enough (about 10 s on a quiet machine) for the database to be cut while the sample stage runs.
LONGER_SPEC = {**SPEC, "sample": {**SPEC["sample"], "n": 256, "steps": 50}}


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture()
def worker_settings(worker_settings: Settings, own_redis: RedisServer) -> Settings:
    """The workers' and the API's broker is this test's own Redis, which it may shut down."""
    return worker_settings.model_copy(update={"broker_url": own_redis.url})


def test_a_job_completes_after_redis_restarts_mid_job(
    api: TestClient, workers: Workers, demo_checkpoint_id: str, own_redis: RedisServer
) -> None:
    workers.start()
    evaluation_id = submit(api, demo_checkpoint_id)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
    own_redis.shutdown_nosave()
    time.sleep(3)
    assert api.get(f"/v1/evaluations/{evaluation_id}").json()["status"] == "running"
    own_redis.start()
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "succeeded", job
    assert [s["status"] for s in job["stages"]] == ["done", "done"]
    assert artifact_array(api, evaluation_id, "sample/images.npy").shape[0] == SPEC["sample"]["n"]
    logs = workers.logs(tail=10**6)
    assert "Connection to broker lost" in logs and logs.count("Connected to redis") >= 2, "the worker reconnects"

    reference_id = submit(api, demo_checkpoint_id)  # the broker is back for new jobs too
    reference = wait_for(api, reference_id, lambda j: j["status"] in TERMINAL, workers)
    assert reference["status"] == "succeeded", reference
    np.testing.assert_array_equal(
        artifact_array(api, evaluation_id, "sample/images.npy"), artifact_array(api, reference_id, "sample/images.npy")
    )


def test_a_job_runs_on_while_the_api_is_killed_and_started_again(
    api: TestClient, workers: Workers, demo_checkpoint_id: str, worker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"

    def serve() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            command = [sys.executable, "-m", "diffaudit.cli", "serve", "--port", str(port)]
            server = subprocess.Popen(command, env=settings_env(worker_settings), stdout=out, stderr=subprocess.STDOUT)
        wait_until_healthy(url, server, log)
        return server

    server = serve()
    try:
        with httpx.Client(base_url=url, headers={"Authorization": api.headers["Authorization"]}) as client:
            workers.start()
            body = {"checkpoint_id": demo_checkpoint_id, "dataset_id": "digits", "spec": SPEC}
            evaluation_id = client.post("/v1/evaluations", json=body).json()["id"]
            wait_for(client, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
            server.kill()
            server.wait(timeout=30)
            server = serve()
            job = wait_for(client, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
            assert job["status"] == "succeeded", job
            results = client.get(f"/v1/evaluations/{evaluation_id}/results").json()
            assert set(results["stages"]) == {"sample", "features"}
    finally:
        server.kill()
        server.wait(timeout=30)


def test_a_job_completes_when_the_database_is_unreachable_mid_job(
    api: TestClient, demo_checkpoint_id: str, worker_settings: Settings, tmp_path: Path
) -> None:
    url = make_url(worker_settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.restore()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    workers = Workers(worker_settings.model_copy(update={"database_url": through_proxy}), tmp_path)
    try:
        workers.start()
        evaluation_id = submit(api, demo_checkpoint_id, LONGER_SPEC)
        wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
        proxy.cut()
        time.sleep(5)
        assert api.get(f"/v1/evaluations/{evaluation_id}").json()["status"] == "running", "cut too late"
        proxy.restore()
        job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    finally:
        workers.stop_all()
        proxy.cut()
    assert job["status"] == "succeeded", job
    assert [s["status"] for s in job["stages"]] == ["done", "done"]
    assert "database unreachable" in workers.logs(tail=10**6), "the workers did lose the database"
    assert artifact_array(api, evaluation_id, "sample/images.npy").shape[0] == LONGER_SPEC["sample"]["n"]
    results = api.get(f"/v1/evaluations/{evaluation_id}/results").json()
    assert set(results["stages"]) == {"sample", "features"}
