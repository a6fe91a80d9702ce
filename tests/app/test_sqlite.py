"""The embedded default: the same service on SQLite (foreign keys on, WAL), from upload to finished job."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import EnqueueRecorder, TinyCheckpoint, assert_offsets_are_bounded, upload_checkpoint
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.db import make_engine, make_sessionmaker, upgrade_database
from app.evaluations import service
from app.main import create_app
from app.models import SUCCEEDED, Evaluation
from app.queue import get_enqueue
from app.settings import Settings
from app.tokens.service import create_token


def test_service_on_sqlite(tmp_path: Path, tiny_checkpoint: TinyCheckpoint) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'diffaudit.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    with sessions() as session:
        headers = {"Authorization": f"Bearer {create_token(session, 'embedded')}"}
    recorder = EnqueueRecorder(sessions)
    app = create_app(Settings(database_url=url, artifact_dir=tmp_path / "artifacts"))
    app.dependency_overrides[get_enqueue] = lambda: recorder
    with TestClient(app) as client:
        checkpoint = upload_checkpoint(client, headers, tiny_checkpoint.zip_bytes).json()["id"]
        body = {"checkpoint_id": checkpoint, "dataset_id": "digits", "spec": {"stages": ["sample"]}}
        job = client.post("/v1/evaluations", headers=headers, json=body).json()
        assert recorder.seen_status == ["queued"]
        with sessions() as session:
            service.mark_running(session, job["id"])
            service.record_progress(session, job["id"], "sample", 3, 4)
            service.record_stage_done(session, job["id"], "sample", {"seconds": 0.5})
            service.finish(session, job["id"], SUCCEEDED, results={"version": 1})
        state = client.get(f"/v1/evaluations/{job['id']}", headers=headers).json()
        assert (state["status"], state["stages"][0]["done"], state["stages"][0]["total"]) == ("succeeded", 4, 4)
        assert state["finished_at"].endswith("Z")  # timezone-aware on SQLite too
        assert_offsets_are_bounded(client, headers)
    with sessions() as session:  # foreign keys are enforced
        session.add(
            Evaluation(project_id="pr_none", checkpoint_id="ck_none", dataset_id="digits", spec={}, spec_hash="")
        )
        with pytest.raises(IntegrityError):
            session.commit()
    engine.dispose()
