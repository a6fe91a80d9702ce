"""The embedded deployment end to end: `diffaudit serve --embedded` on SQLite, driven over HTTP.

The same path as `make demo`: a real server process with its in-process worker and in-memory
broker, a checkpoint uploaded with the CLI's client, a job followed to its result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffaudit.client import ApiError, Client
from workers.cli import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A server on SQLite with a local artifact folder; yields (url, token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFAUDIT_")}
    env.update(
        DIFFAUDIT_DATABASE_URL=f"sqlite:///{tmp_path}/diffaudit.db",
        DIFFAUDIT_ARTIFACT_DIR=str(tmp_path / "artifacts"),
        DIFFAUDIT_CACHE_DIR=str(tmp_path / "cache"),
        DIFFAUDIT_TORCH_THREADS=os.environ.get("DIFFAUDIT_TORCH_THREADS", "0"),
    )
    cli = [sys.executable, "-m", "diffaudit.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
    token = subprocess.run(
        [*cli, "token", "create", "--project", "e2e"], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*cli, "serve", "--embedded", "--port", str(port)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log)
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_upload_evaluate_and_read_results_on_the_embedded_default(
    embedded_server: tuple[str, str], tiny_demo_model: Path
) -> None:
    url, token = embedded_server
    client = Client(url, token)
    checkpoint = client.push_checkpoint(tiny_demo_model, name="tiny")
    assert checkpoint["num_class_embeds"] == 10
    again = client.push_checkpoint(tiny_demo_model, name="tiny")
    assert again["id"] == checkpoint["id"], "the same content is one checkpoint"

    spec = {"sample": {"n": 24, "steps": 10, "batch_size": 8}}
    job = client.evaluate(checkpoint["id"], "digits", spec, idempotency_key="e2e-1")
    assert client.evaluate(checkpoint["id"], "digits", spec, idempotency_key="e2e-1")["id"] == job["id"]
    final = client.wait(job["id"], poll=0.2)
    assert final["status"] == "succeeded", final
    results = client.results(job["id"])
    assert results["version"] == 1
    assert results["stages"]["sample"]["n"] == 24
    assert results["stages"]["features"]["n_generated"] == 24
    assert "sample/grid.png" in client.artifacts(job["id"])


def test_bad_requests_get_a_message_that_says_what_to_fix(embedded_server: tuple[str, str]) -> None:
    url, token = embedded_server
    client = Client(url, token)
    with pytest.raises(ApiError) as unknown:
        client.evaluate("ck_missing", "digits", {})
    assert unknown.value.status == 404
    with pytest.raises(ApiError) as bad_spec:
        client.evaluate("ck_missing", "digits", {"stages": ["sample", "nonsense"]})
    assert bad_spec.value.status == 422 and "nonsense" in str(bad_spec.value)
