"""Dead workers cost minutes: leases, heartbeats and the recovery task, on the real PostgreSQL, Redis and
Celery worker processes."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from test_worker import QUICK_SPEC, SPEC, TERMINAL, stage, submit
from worker_helpers import Workers, wait_for

from app.evaluations import service
from app.models import Evaluation, utcnow
from app.queue import enqueue
from app.settings import Settings


def sessions(api: TestClient) -> sessionmaker[Session]:
    return api.app.state.sessionmaker  # type: ignore[attr-defined,no-any-return]


def test_two_recoverers_take_a_stale_job_over_once(
    api: TestClient, demo_checkpoint_id: str, worker_settings: Settings
) -> None:
    evaluation_id = submit(api, demo_checkpoint_id, QUICK_SPEC)  # no worker runs: the job stays where we put it
    timeout = timedelta(seconds=worker_settings.heartbeat_timeout)
    with sessions(api)() as session:
        assert service.claim(session, evaluation_id, 0) is not None  # a task holds lease 1, then dies
        assert service.claim(session, evaluation_id, 0) is None  # the same message delivered again does not run
        assert service.take_over_stale(session, utcnow() - timeout) == []  # its heartbeat is fresh
        session.execute(
            update(Evaluation).where(Evaluation.id == evaluation_id).values(heartbeat_at=utcnow() - 2 * timeout)
        )
        session.commit()

    start, taken = threading.Barrier(4), []

    def recoverer() -> None:
        with sessions(api)() as session:
            start.wait()
            taken.extend(service.take_over_stale(session, utcnow() - timeout))

    threads = [threading.Thread(target=recoverer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken == [(evaluation_id, 2)]

    with sessions(api)() as session:
        assert not service.beat(session, evaluation_id, 1), "the dead holder must learn it lost the job"
        service.release(session, evaluation_id, 2)  # the recoverer sent the job: it waits in a queue, no heartbeat
        assert service.take_over_stale(session, utcnow() + timeout) == []  # even long after
        assert service.claim(session, evaluation_id, 1) is None  # the dead task's own message, redelivered
        job = service.claim(session, evaluation_id, 2)  # the recoverer's message
        assert job is not None and (job.lease, job.status) == (3, "running")


def test_a_killed_workers_job_is_sent_again_by_recovery(
    api: TestClient, workers: Workers, demo_checkpoint_id: str
) -> None:
    """The broker's redelivery comes 120 s after the kill here (conftest.VISIBILITY_TIMEOUT), and carries the dead
    task's lease: only the recovery can resume the job, within seconds of its heartbeat going stale."""
    first = workers.start()
    evaluation_id = submit(api, demo_checkpoint_id)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
    workers.kill(first)
    workers.start()
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers, timeout=90)
    assert job["status"] == "succeeded", job
    assert f"evaluation {evaluation_id}: no heartbeat since" in workers.logs(tail=10**6)


def test_a_second_message_for_a_running_job_is_not_run(
    api: TestClient, workers: Workers, demo_checkpoint_id: str
) -> None:
    """What a redelivery of a live task's message (visibility timeout passed) does: nothing."""
    workers.start()
    evaluation_id = submit(api, demo_checkpoint_id)
    wait_for(api, evaluation_id, lambda j: stage(j, "sample")["done"] >= 8, workers)
    with sessions(api)() as session:
        held = session.get_one(Evaluation, evaluation_id).lease
    enqueue("evaluations.stage", evaluation_id, "sample", held - 1, queue="gpu")  # the message it was started by
    workers.wait_ready(workers.start())
    job = wait_for(api, evaluation_id, lambda j: j["status"] in TERMINAL, workers)
    assert job["status"] == "succeeded", job
    assert f"evaluation {evaluation_id}: lease {held - 1} is gone" in workers.logs(tail=10**6)
    assert "was taken over" not in workers.logs(tail=10**6)
    assert stage(job, "sample")["done"] == SPEC["sample"]["n"]


def test_a_heartbeat_timeout_shorter_than_two_beats_is_refused() -> None:
    with pytest.raises(ValidationError, match="DIFFAUDIT_HEARTBEAT_TIMEOUT must be at least twice"):
        Settings(heartbeat_interval=5, heartbeat_timeout=9)
    assert Settings(heartbeat_interval=5, heartbeat_timeout=10).heartbeat_timeout == 10
