"""The embedded deployment end to end: `diffaudit serve --embedded` on SQLite, driven over HTTP.

The same path as `make demo`: a real server process with its in-process worker and in-memory
broker, a checkpoint uploaded with the CLI's client, a job followed to its result. Servers are
also started with a stage that raises (tests/faults.py) and restarted with jobs in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import make_engine, make_sessionmaker, upgrade_database
from app.tokens.service import create_token
from diffaudit.client import ApiError, Client
from tests.faults import fault_message
from workers.cli import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "diffaudit.cli"]
TERMINAL = ("succeeded", "rejected", "failed", "cancelled")
QUICK_SPEC: dict[str, Any] = {
    "stages": ["sample", "features"],
    "sample": {"n": 8, "steps": 2, "batch_size": 8},
    "features": {"extractor": "random-cnn"},
}


class EmbeddedServer:
    """`diffaudit serve --embedded` on SQLite with a local artifact folder, started and stopped by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFAUDIT_")}
        self.env.update(
            DIFFAUDIT_DATABASE_URL=f"sqlite:///{tmp_path}/diffaudit.db",
            DIFFAUDIT_ARTIFACT_DIR=str(tmp_path / "artifacts"),
            DIFFAUDIT_CACHE_DIR=str(tmp_path / "cache"),
            DIFFAUDIT_TORCH_THREADS=os.environ.get("DIFFAUDIT_TORCH_THREADS", "0"),
        )
        # what `diffaudit db upgrade` and `diffaudit token create` do, in this process (two interpreters fewer to start)
        database_url = self.env["DIFFAUDIT_DATABASE_URL"]
        upgrade_database(database_url)
        engine = make_engine(database_url)
        with make_sessionmaker(engine)() as session:
            self.token = create_token(session, "e2e")
        engine.dispose()
        self.log = tmp_path / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, fault: tuple[str, str, int] | None = None) -> Client:
        """Start the server; `fault` = (stage, error, times) makes that stage raise (tests/faults.py)."""
        port = free_port()
        serve = ["serve", "--embedded", "--port", str(port)]
        if fault is None:
            command = [*CLI, *serve]
        else:
            stage, error, times = fault
            command = [sys.executable, "-m", "tests.faults", stage, error, str(times), "diffaudit.cli", *serve]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        wait_until_healthy(self.url, self.process, self.log)
        return Client(self.url, self.token)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)

    def wait(self, client: Client, evaluation_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = client.status(evaluation_id)
            if done(job):
                return job
            time.sleep(0.2)
        pytest.fail(f"timed out; last state {job}\n--- server log ---\n{self.log_text()[-6000:]}")

    def log_text(self) -> str:
        """The server's log without the request lines."""
        return "\n".join(line for line in self.log.read_text().splitlines() if '- "GET /' not in line)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    embedded = EmbeddedServer(tmp_path)
    yield embedded
    embedded.stop()


@pytest.fixture()
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A running server; (url, token). Self-contained: other test modules import it."""
    embedded = EmbeddedServer(tmp_path)
    embedded.start()
    try:
        yield embedded.url, embedded.token
    finally:
        embedded.stop()


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in TERMINAL


def stage_statuses(job: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["status"]) for s in job["stages"]]


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


def test_a_crashing_stage_is_retried_then_fails_with_its_error(server: EmbeddedServer, tiny_demo_model: Path) -> None:
    # The sample stage raises in its first three runs: the first job uses them all (3 attempts) and fails;
    # the second job's sample stage then runs normally.
    client = server.start(fault=("sample", "RuntimeError", 3))
    checkpoint = client.push_checkpoint(tiny_demo_model, name="tiny")["id"]
    failing = client.evaluate(checkpoint, "digits", QUICK_SPEC)["id"]
    job = server.wait(client, failing, finished)
    assert job["status"] == "failed", job
    message = fault_message("sample", "RuntimeError")
    assert job["error"] == (
        "stage sample failed after 3 attempts with an internal error (RuntimeError); the worker's log has the details"
    )
    assert message not in job["error"]  # a defect's text (which can hold server paths) stays in the log
    assert stage_statuses(job) == [("sample", "failed"), ("features", "skipped")]
    assert server.log_text().count("crashed; retrying") == 2

    after = server.wait(client, client.evaluate(checkpoint, "digits", QUICK_SPEC)["id"], finished)
    assert after["status"] == "succeeded", after


def test_a_retried_stage_succeeds(server: EmbeddedServer, tiny_demo_model: Path) -> None:
    client = server.start(fault=("features", "KeyError", 1))
    checkpoint = client.push_checkpoint(tiny_demo_model, name="tiny")["id"]
    job = server.wait(client, client.evaluate(checkpoint, "digits", QUICK_SPEC)["id"], finished)
    assert job["status"] == "succeeded", job
    assert stage_statuses(job) == [("sample", "done"), ("features", "done")]


def test_invalid_input_fails_at_once_without_retry(server: EmbeddedServer, tiny_demo_model: Path) -> None:
    client = server.start(fault=("sample", "InvalidInput", 1))
    checkpoint = client.push_checkpoint(tiny_demo_model, name="tiny")["id"]
    job = server.wait(client, client.evaluate(checkpoint, "digits", QUICK_SPEC)["id"], finished)
    assert (job["status"], job["error"]) == ("failed", f"stage sample: {fault_message('sample', 'InvalidInput')}")
    assert stage_statuses(job) == [("sample", "failed"), ("features", "skipped")]
    assert "crashed; retrying" not in server.log_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_jobs_in_flight_survive_a_server_restart(
    server: EmbeddedServer, tiny_demo_model: Path, sig: signal.Signals
) -> None:
    client = server.start()
    checkpoint = client.push_checkpoint(tiny_demo_model, name="tiny")["id"]
    slow = {**QUICK_SPEC, "sample": {"n": 96, "steps": 20, "batch_size": 8}}
    running = client.evaluate(checkpoint, "digits", slow)["id"]
    queued = client.evaluate(checkpoint, "digits", QUICK_SPEC)["id"]
    server.wait(client, running, lambda j: j["stages"][0]["done"] >= 8)
    assert client.status(queued)["status"] == "queued"
    server.stop(sig)

    client = server.start()
    for evaluation_id in (running, queued):
        job = server.wait(client, evaluation_id, finished)
        assert job["status"] == "succeeded", job
    assert client.results(running)["stages"]["sample"]["n"] == 96
