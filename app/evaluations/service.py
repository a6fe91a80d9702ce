"""Evaluation jobs: creation and queries for the API, state changes for the workers.

Every function takes a Session and commits its own change. Worker-facing functions
(`load_job`, `claim`, `beat`, `release`, `take_over_stale`, `mark_running`, `mark_stage_started`,
`record_progress`, `record_stage_done`, `finish`, `is_cancel_requested`) are one transaction
of a few statements, cheap enough to call on every batch. A job always ends with every stage
row ended too: done, or as the job ended (failed, rejected, cancelled) for the stage that was
running, skipped for those never started.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.checkpoints.service import get_checkpoint
from app.datasets.service import get_dataset
from app.errors import Conflict, Forbidden, NotFound, Unavailable
from app.evaluations.schemas import EvaluationCreate
from app.evaluations.validation import check_submission
from app.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STAGE_DONE,
    STAGE_ENDINGS,
    STAGE_PENDING,
    STAGE_RUNNING,
    STAGE_SKIPPED,
    TERMINAL_STATUSES,
    Checkpoint,
    Dataset,
    Evaluation,
    EvaluationStage,
    Project,
    new_id,
    utcnow,
)
from app.pagination import PageParams, fetch_page
from app.queue import RUN_EVALUATION, Enqueue
from app.settings import Settings
from diffaudit.report import REPORT_KEY, JobFacts, render_report, store_report
from diffaudit.store import ArtifactStore, ScopedStore

MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".json": "application/json",
    ".csv": "text/csv",
    ".zip": "application/zip",
    ".npy": "application/x-npy",
    ".txt": "text/plain",
}


def job_prefix(evaluation_id: str) -> str:
    """Where a job's artifacts live in the store."""
    return f"evaluations/{evaluation_id}"


# --- API side ------------------------------------------------------------------------------------


def _same_request(evaluation: Evaluation, request: EvaluationCreate, spec_hash: str) -> bool:
    return (evaluation.checkpoint_id, evaluation.dataset_id, evaluation.spec_hash) == (
        request.checkpoint_id,
        request.dataset_id,
        spec_hash,
    )


def _replay(
    session: Session, project: Project, key: str, request: EvaluationCreate, spec_hash: str
) -> Evaluation | None:
    """The job created earlier with this Idempotency-Key, if any (409 when the body differs)."""
    query = select(Evaluation).where(Evaluation.project_id == project.id, Evaluation.idempotency_key == key)
    evaluation = session.scalar(query)
    if evaluation is not None and not _same_request(evaluation, request, spec_hash):
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for a different request (evaluation {evaluation.id}); "
            "use a new key for a new request"
        )
    return evaluation


def create_evaluation(
    session: Session,
    project: Project,
    request: EvaluationCreate,
    idempotency_key: str | None,
    enqueue: Enqueue,
    settings: Settings,
) -> tuple[Evaluation, bool]:
    """Check the spec against checkpoint, dataset and server limits, store a queued job with its stages, commit,
    then send it to the workers. Returns (job, created)."""
    spec_hash = request.spec.spec_hash()
    if idempotency_key is not None:
        existing = _replay(session, project, idempotency_key, request, spec_hash)
        if existing is not None:
            return existing, False
    checkpoint = get_checkpoint(session, project, request.checkpoint_id)
    dataset = get_dataset(session, project, request.dataset_id)
    check_submission(request.spec, checkpoint, dataset, settings)
    evaluation = Evaluation(
        id=new_id("ev"),
        project_id=project.id,
        checkpoint_id=checkpoint.id,
        dataset_id=dataset.id,
        spec=request.spec.model_dump(mode="json"),
        spec_hash=spec_hash,
        status=QUEUED,
        idempotency_key=idempotency_key,
        stages=[EvaluationStage(name=name, position=i) for i, name in enumerate(request.spec.stages)],
    )
    session.add(evaluation)
    try:
        session.commit()
    except IntegrityError:  # the same key was used concurrently
        session.rollback()
        assert idempotency_key is not None
        existing = _replay(session, project, idempotency_key, request, spec_hash)
        if existing is None:
            raise
        return existing, False
    _send(session, evaluation, enqueue)
    return evaluation, True


def _send(session: Session, evaluation: Evaluation, enqueue: Enqueue) -> None:
    """Enqueue the committed job; if the broker is unreachable the job fails with a message saying so."""
    try:
        enqueue(RUN_EVALUATION, evaluation.id)
    except Exception as exc:  # the error's text may hold the broker's address and credentials: only its type
        error = f"the job could not be sent to the workers (broker unreachable: {type(exc).__name__}); submit it again"
        finish(session, evaluation.id, FAILED, error=error)
        raise Unavailable(error) from exc


def get_evaluation(session: Session, project: Project, evaluation_id: str) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None or evaluation.project_id != project.id:
        raise NotFound(f"evaluation {evaluation_id!r} not found in this project")
    return evaluation


def list_evaluations(
    session: Session,
    project: Project,
    page: PageParams,
    *,
    status: str | None = None,
    checkpoint_id: str | None = None,
    dataset_id: str | None = None,
) -> tuple[list[Evaluation], int]:
    """One page of the project's jobs, newest first, and how many match in all."""
    conditions = [Evaluation.project_id == project.id]
    if status is not None:
        conditions.append(Evaluation.status == status)
    if checkpoint_id is not None:
        conditions.append(Evaluation.checkpoint_id == checkpoint_id)
    if dataset_id is not None:
        conditions.append(Evaluation.dataset_id == dataset_id)
    query = select(Evaluation).where(*conditions).order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
    return fetch_page(session, query, page)


def cancel_evaluation(session: Session, project: Project, evaluation_id: str) -> Evaluation:
    """End a queued or running job `cancelled` at once, whether or not a worker still runs it.

    A worker running it stops at its next check (between denoising steps, batches or stages) and records
    nothing more; a job whose worker died or whose task was lost ends all the same.
    """
    evaluation = get_evaluation(session, project, evaluation_id)
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation.id, Evaluation.status.in_((QUEUED, RUNNING)))
        .values(cancel_requested=True)
    )
    finish(session, evaluation.id, CANCELLED)
    session.refresh(evaluation)
    if evaluation.status in TERMINAL_STATUSES - {CANCELLED}:
        raise Conflict(f"evaluation {evaluation.id} already finished ({evaluation.status}); it cannot be cancelled")
    return evaluation


def get_results(session: Session, project: Project, evaluation_id: str) -> dict[str, Any]:
    evaluation = get_evaluation(session, project, evaluation_id)
    if evaluation.results is None:
        reason = f": {evaluation.error}" if evaluation.error else ""
        raise Conflict(
            f"evaluation {evaluation.id} has no results ({evaluation.status}{reason})",
            code="not_finished" if evaluation.status not in TERMINAL_STATUSES else "no_results",
            details={"status": evaluation.status},
        )
    return evaluation.results


def media_type(path: str) -> str:
    return MEDIA_TYPES.get(PurePosixPath(path).suffix.lower(), "application/octet-stream")


def list_artifacts(session: Session, project: Project, store: ArtifactStore, evaluation_id: str) -> list[str]:
    evaluation = get_evaluation(session, project, evaluation_id)
    prefix = job_prefix(evaluation.id) + "/"
    return [key[len(prefix) :] for key in store.list(prefix)]


def artifact_file(session: Session, project: Project, store: ArtifactStore, evaluation_id: str, path: str) -> Path:
    """The local file of one artifact of the job; anything outside the job's folder is 'not found'."""
    evaluation = get_evaluation(session, project, evaluation_id)
    parts = path.split("/")
    missing = NotFound(f"evaluation {evaluation.id} has no artifact {path!r}")
    if "\\" in path or "\x00" in path or any(part in ("", ".", "..") for part in parts):
        raise missing
    key = f"{job_prefix(evaluation.id)}/{path}"
    if not store.exists(key):
        raise missing
    return store.local_path(key)


# --- the report and its share links ------------------------------------------------------------------------------


def job_facts(session: Session, evaluation: Evaluation) -> JobFacts:
    """What the report shows of a job besides its results: outcome, spec, checkpoint and dataset facts, times."""
    checkpoint = session.get_one(Checkpoint, evaluation.checkpoint_id)
    dataset = session.get_one(Dataset, evaluation.dataset_id)
    return JobFacts(
        evaluation_id=evaluation.id,
        status=evaluation.status,
        error=evaluation.error,
        spec=evaluation.spec,
        checkpoint={
            "id": checkpoint.id,
            "name": checkpoint.name,
            "content_hash": checkpoint.content_hash,
            "num_parameters": checkpoint.num_parameters,
            "sample_size": checkpoint.sample_size,
            "in_channels": checkpoint.in_channels,
            "out_channels": checkpoint.out_channels,
            "num_class_embeds": checkpoint.num_class_embeds,
            "info": checkpoint.info,
        },
        dataset={
            "id": dataset.id,
            "name": dataset.name,
            "kind": dataset.kind,
            "count": dataset.count,
            "item_shape": dataset.item_shape,
            "content_hash": dataset.content_hash,
            "heldout_count": dataset.heldout_count,
            "class_names": dataset.class_names,
            "class_counts": dataset.class_counts,
        },
        stages=[
            {
                "name": stage.name,
                "status": stage.status,
                "seconds": stage.seconds,
                "started_at": _iso(stage.started_at),
                "finished_at": _iso(stage.finished_at),
            }
            for stage in evaluation.stages
        ],
        times={
            "created_at": _iso(evaluation.created_at),
            "started_at": _iso(evaluation.started_at),
            "finished_at": _iso(evaluation.finished_at),
            "attempts": evaluation.attempts,
        },
    )


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


def store_job_report(session: Session, store: ArtifactStore, evaluation_id: str) -> None:
    """Render the report of an ended job and store it as its artifact `report.html` (the worker, at job end)."""
    evaluation = load_job(session, evaluation_id)
    store_report(job_facts(session, evaluation), evaluation.results, ScopedStore(store, job_prefix(evaluation.id)))


def report_html(session: Session, store: ArtifactStore, evaluation: Evaluation) -> str:
    """The stored report of an ended job, or one rendered now (jobs that ended before reports were stored)."""
    if evaluation.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"evaluation {evaluation.id} has not finished ({evaluation.status}); its report exists once it ends",
            code="not_finished",
            details={"status": evaluation.status},
        )
    job = ScopedStore(store, job_prefix(evaluation.id))
    if job.exists(REPORT_KEY):
        return job.get_bytes(REPORT_KEY).decode()
    return render_report(job_facts(session, evaluation), evaluation.results, job)


def get_report(session: Session, project: Project, store: ArtifactStore, evaluation_id: str) -> str:
    return report_html(session, store, get_evaluation(session, project, evaluation_id))


def _share_signature(key: bytes, evaluation_id: str, expires: int) -> str:
    """HMAC-SHA256 of (purpose, job, expiry): a token opens one job's report until it expires."""
    message = f"report:{evaluation_id}:{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@lru_cache(maxsize=1)
def _process_share_key() -> bytes:
    """The embedded deployment's share key when none is set: random, for this one process (links end with it)."""
    return secrets.token_bytes(32)


def share_key(settings: Settings) -> bytes:
    """DIFFAUDIT_SHARE_SECRET; unset, a per-process key in the embedded deployment (one process, in-memory broker),
    and a refusal elsewhere: API processes with different keys would refuse each other's links."""
    if settings.share_secret is not None:
        return settings.share_secret.get_secret_value().encode()
    if settings.broker_url.startswith("memory://"):
        return _process_share_key()
    raise Unavailable(
        "sharing reports needs DIFFAUDIT_SHARE_SECRET set (the same value on every API process); ask the operator"
    )


def share_report(
    session: Session, project: Project, settings: Settings, evaluation_id: str, expires_in: int
) -> tuple[str, int]:
    """A read-only token for one job's report, valid `expires_in` seconds: (token, expiry as Unix time)."""
    evaluation = get_evaluation(session, project, evaluation_id)
    expires = int(time.time()) + expires_in
    return f"{expires}.{_share_signature(share_key(settings), evaluation.id, expires)}", expires


def shared_report(session: Session, store: ArtifactStore, settings: Settings, evaluation_id: str, token: str) -> str:
    """The report a share token opens: only the job it was made for, only until it expires."""
    expires_text, _, signature = token.partition(".")
    refused = Forbidden("this share link is not valid for this report; ask for a new link")
    if not expires_text.isdigit() or not signature:
        raise refused
    expires = int(expires_text)
    expected = _share_signature(share_key(settings), evaluation_id, expires)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise refused
    if expires < time.time():
        raise Forbidden("this share link has expired; ask for a new link")
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id!r} not found")
    return report_html(session, store, evaluation)


# --- worker side -----------------------------------------------------------------------------------


def load_job(session: Session, evaluation_id: str) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id!r} does not exist")
    return evaluation


def mark_running(session: Session, evaluation_id: str) -> Evaluation:
    """Start (or restart, after a redelivery) a job that is not finished; returns it in its current state.

    The caller runs the job only if the returned status is 'running' (a cancelled or finished job stays so).
    """
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status.in_((QUEUED, RUNNING)))
        .values(
            status=RUNNING,
            started_at=func.coalesce(Evaluation.started_at, utcnow()),
            attempts=Evaluation.attempts + 1,
        )
    )
    session.commit()
    evaluation = load_job(session, evaluation_id)
    session.refresh(evaluation)
    return evaluation


def claim(session: Session, evaluation_id: str, lease: int) -> Evaluation | None:
    """Take the job for the task whose message carries `lease`: the job now holds lease + 1 and a fresh heartbeat,
    and is marked running. None if the lease moved on (another task holds the job: the message is a duplicate or
    was superseded by recovery) or the job ended."""
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.lease == lease, Evaluation.status.in_((QUEUED, RUNNING)))
        .values(lease=lease + 1, heartbeat_at=utcnow())
    )
    session.commit()
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    return mark_running(session, evaluation_id)


def beat(session: Session, evaluation_id: str, lease: int) -> bool:
    """The holder of `lease` is alive. False if it no longer holds the job (taken over, or the job ended)."""
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.lease == lease, Evaluation.status == RUNNING)
        .values(heartbeat_at=utcnow())
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, evaluation_id: str, lease: int) -> None:
    """The holder of `lease` sent the job's next message: no heartbeat while it waits in a queue (unless the next
    task claimed the job already)."""
    session.execute(
        update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.lease == lease).values(heartbeat_at=None)
    )
    session.commit()


def take_over_stale(session: Session, stale_before: datetime) -> list[tuple[str, int]]:
    """Running jobs whose holder last beat before `stale_before`, each taken over (lease + 1, fresh heartbeat) by
    a compare-and-set on its lease, so that two recoverers never take the same job. Returns (job, new lease)."""
    query = select(Evaluation.id, Evaluation.lease).where(
        Evaluation.status == RUNNING, Evaluation.heartbeat_at < stale_before
    )
    taken = []
    for evaluation_id, lease in session.execute(query).all():
        result = session.execute(
            update(Evaluation)
            .where(
                Evaluation.id == evaluation_id,
                Evaluation.lease == lease,
                Evaluation.status == RUNNING,
                Evaluation.heartbeat_at < stale_before,
            )
            .values(lease=lease + 1, heartbeat_at=utcnow())
        )
        session.commit()
        if result.rowcount:  # type: ignore[attr-defined]
            taken.append((evaluation_id, lease + 1))
    return taken


def unfinished_job_ids(session: Session) -> list[str]:
    """Jobs queued or running, oldest first (the embedded worker resumes them when it starts)."""
    query = select(Evaluation.id).where(Evaluation.status.in_((QUEUED, RUNNING))).order_by(Evaluation.created_at)
    return list(session.scalars(query))


def _update_stage(session: Session, evaluation_id: str, stage: str, **values: Any) -> None:
    """Update a stage row that has not ended (a stage done, or ended with its job, stays so)."""
    session.execute(
        update(EvaluationStage)
        .where(
            EvaluationStage.evaluation_id == evaluation_id,
            EvaluationStage.name == stage,
            EvaluationStage.status.in_((STAGE_PENDING, STAGE_RUNNING)),
        )
        .values(**values)
    )
    session.commit()


def mark_stage_started(session: Session, evaluation_id: str, stage: str) -> None:
    _update_stage(
        session, evaluation_id, stage, status=STAGE_RUNNING, started_at=utcnow(), finished_at=None, seconds=None
    )


def record_progress(session: Session, evaluation_id: str, stage: str, done: int, total: int) -> None:
    """One UPDATE of the stage row."""
    _update_stage(session, evaluation_id, stage, done=done, total=total)


def record_stage_done(session: Session, evaluation_id: str, stage: str, summary: dict[str, Any]) -> None:
    """The stage finished: its summary, how long it computed (summary['seconds'] when given), done = total."""
    now = utcnow()
    seconds = summary.get("seconds")
    if seconds is None:
        row = session.get(EvaluationStage, (evaluation_id, stage))
        seconds = (now - row.started_at).total_seconds() if row is not None and row.started_at else None
    _update_stage(
        session,
        evaluation_id,
        stage,
        status=STAGE_DONE,
        finished_at=now,
        seconds=seconds,
        summary=summary,
        done=case((EvaluationStage.total > 0, EvaluationStage.total), else_=EvaluationStage.done),
    )


def finish(
    session: Session,
    evaluation_id: str,
    status: str,
    results: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """End a job (succeeded, rejected, failed or cancelled) and its unfinished stages. False if it had already ended.

    The stage running ends as the job did (STAGE_ENDINGS); the stages that never started are skipped.
    """
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"finish() needs a final status ({sorted(TERMINAL_STATUSES)}), got {status!r}")
    now = utcnow()
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status.in_((QUEUED, RUNNING)))
        .values(status=status, results=results, error=error, finished_at=now)
    )
    ended = bool(result.rowcount)  # type: ignore[attr-defined]
    if ended and status in STAGE_ENDINGS:
        stages = update(EvaluationStage).where(EvaluationStage.evaluation_id == evaluation_id)
        session.execute(
            stages.where(EvaluationStage.status == STAGE_RUNNING).values(status=STAGE_ENDINGS[status], finished_at=now)
        )
        session.execute(stages.where(EvaluationStage.status == STAGE_PENDING).values(status=STAGE_SKIPPED))
    session.commit()
    return ended


def is_cancel_requested(session: Session, evaluation_id: str) -> bool:
    query = select(Evaluation.cancel_requested).where(Evaluation.id == evaluation_id)
    return bool(session.scalar(query))
