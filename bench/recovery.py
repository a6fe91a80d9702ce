"""Time from `kill -9` of a worker mid-stage to its job moving again, with the default recovery settings.

Real processes: PostgreSQL (a fresh database on the shared server), a redis-server of its own on a free port,
two Celery workers (one torch thread each). Worker A runs a long sampling stage; worker B waits idle; A is
killed with SIGKILL; the clock stops when the job's sampling progress passes where A left it (B runs it on,
from A's last stored batch). Prints the time to the re-send (B's recovery took the job over) and to the first
new progress, against the target of 2 minutes.

    DIFFAUDIT_TORCH_THREADS=1 .venv/bin/python bench/recovery.py
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.db import upgrade_database  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tokens.service import create_token  # noqa: E402
from diffaudit.client import zip_folder  # noqa: E402
from diffaudit.demo import ensure_demo_model  # noqa: E402
from tests.workers.worker_helpers import RedisServer, Workers  # noqa: E402

PG_ADMIN_URL = os.environ.get("DIFFAUDIT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_SECONDS = 120.0
SPEC: dict[str, Any] = {"stages": ["sample"], "sample": {"n": 8192, "steps": 50, "batch_size": 16, "seed": 1}}


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database migrated to head, dropped at the end."""
    name = f"diffaudit_bench_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sampled(api: TestClient, evaluation_id: str) -> int:
    job = api.get(f"/v1/evaluations/{evaluation_id}").json()
    return int(next(s for s in job["stages"] if s["name"] == "sample")["done"])


def wait_until(condition: Any, timeout: float, what: str, workers: Workers) -> float:
    """Poll `condition` every 0.2 s; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}\n{workers.logs()}")
        time.sleep(0.2)
    return time.monotonic()


def main() -> None:
    model = ensure_demo_model("digits", ROOT / "var" / "test-models", progress=False, train_steps=400)
    with tempfile.TemporaryDirectory() as folder, fresh_database() as database_url:
        tmp = Path(folder)
        redis = RedisServer(tmp / "redis")
        redis.start()
        defaults = Settings()
        settings = Settings(
            database_url=database_url,
            broker_url=redis.url,
            artifact_dir=tmp / "artifacts",
            cache_dir=tmp / "cache",
            torch_threads=1,
        )
        workers = Workers(settings, tmp)
        try:
            with TestClient(create_app(settings)) as api:
                with api.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
                    api.headers["Authorization"] = f"Bearer {create_token(session, 'bench-recovery')}"
                with zip_folder(model, tmp / "model.zip").open("rb") as f:
                    checkpoint = api.post("/v1/checkpoints", files={"file": ("model.zip", f)}, data={"name": "tiny"})
                body = {"checkpoint_id": checkpoint.json()["id"], "dataset_id": "digits", "spec": SPEC}
                evaluation_id = api.post("/v1/evaluations", json=body).json()["id"]

                first = workers.start()
                wait_until(lambda: sampled(api, evaluation_id) >= 64, 300, "worker A's first batches", workers)
                second = workers.start()
                workers.wait_ready(second)
                left_at = sampled(api, evaluation_id)
                workers.kill(first)
                killed = time.monotonic()
                resent = wait_until(
                    lambda: "sending it again" in workers.logs(tail=10**6), 600, "the recovery's re-send", workers
                )
                moving = wait_until(lambda: sampled(api, evaluation_id) > left_at, 600, "the job moving again", workers)
                api.post(f"/v1/evaluations/{evaluation_id}/cancel")
        finally:
            workers.stop_all()
            redis.stop()

    print(
        f"defaults: heartbeat every {defaults.heartbeat_interval:g} s, dead after {defaults.heartbeat_timeout:g} s, "
        f"recovery every {defaults.recovery_interval:g} s, visibility timeout {defaults.broker_visibility_timeout} s"
    )
    print(f"worker A killed at {left_at} / {SPEC['sample']['n']} samples")
    print(f"kill -9 -> job re-sent by worker B's recovery: {resent - killed:.1f} s")
    moved = moving - killed
    print(f"kill -9 -> job moving again (progress past {left_at}): {moved:.1f} s (target <= {TARGET_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
