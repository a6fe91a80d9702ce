"""Worker tests: the real PostgreSQL, the real Redis, real Celery worker processes.

The API runs in the test process (TestClient) and sends tasks to Redis; workers are separate
processes started (and killed) by the tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update
from worker_helpers import Workers

from app.db import make_engine
from app.main import create_app
from app.models import CANCELLED, QUEUED, RUNNING, Evaluation
from app.settings import Settings
from app.tokens.service import create_token
from diffaudit.client import zip_folder

REDIS_URL = "redis://127.0.0.1:6379"
# The recovery settings shortened (defaults: a beat every 5 s, dead after 60 s, searched every 15 s); the broker's
# redelivery stays later than recovery, as with the defaults, so a resumed job was resumed by recovery.
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, RECOVERY_INTERVAL = 0.5, 3.0, 1.0
VISIBILITY_TIMEOUT = 120  # seconds before a task not acknowledged is redelivered


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/workers/" in item.nodeid:
            item.add_marker(pytest.mark.redis)
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A Redis database of its own, emptied before and after the session."""
    number = 1 + secrets.randbelow(15)
    url = f"{REDIS_URL}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture()
def worker_settings(database_url: str, broker_url: str, tmp_path: Path) -> Settings:
    (tmp_path / "weights").mkdir()
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        artifact_dir=tmp_path / "artifacts",
        cache_dir=tmp_path / "cache",
        weights_dir=tmp_path / "weights",
        broker_visibility_timeout=VISIBILITY_TIMEOUT,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        recovery_interval=RECOVERY_INTERVAL,
        torch_threads=1,
    )


def end_earlier_jobs(settings: Settings) -> None:
    """Cancel every unfinished job of earlier tests and empty the broker: the session shares one database and one
    Redis database, and a new worker's recovery would otherwise take over a stale job whose files are gone."""
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            update(Evaluation)
            .where(Evaluation.status.in_((QUEUED, RUNNING)))
            .values(status=CANCELLED, cancel_requested=True)
        )
    engine.dispose()
    redis.Redis.from_url(settings.broker_url).flushdb()


@pytest.fixture()
def workers(worker_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    end_earlier_jobs(worker_settings)
    pool = Workers(worker_settings, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture()
def api(worker_settings: Settings) -> Iterator[TestClient]:
    """The API, sending tasks to the real Redis, authenticated as a fresh project."""
    app = create_app(worker_settings)
    with TestClient(app) as client:
        with app.state.sessionmaker() as session:
            token = create_token(session, f"workers-{secrets.token_hex(4)}")
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


@pytest.fixture()
def demo_checkpoint_id(api: TestClient, tiny_demo_model: Path, tmp_path: Path) -> str:
    archive = zip_folder(tiny_demo_model, tmp_path / "model.zip")
    with archive.open("rb") as f:
        response = api.post("/v1/checkpoints", files={"file": ("model.zip", f)}, data={"name": "tiny"})
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])
