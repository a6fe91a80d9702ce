"""Celery tasks: fetch a job by id, call the core, record the result.

A job runs as a chain of stage tasks. `evaluations.run` starts (or resumes) a job by sending
its first unfinished stage; each `evaluations.stage` task runs one stage on the queue the
stage belongs to (gpu or cpu), records it, and sends the next one. A stage already stored in
the artifact store is not computed again, so a task sent again resumes where the dead one
stopped.

Who runs a job is decided by its lease (a counter on the job row): every stage message carries the
lease of its sender, and a task runs only if it claims that lease (`service.claim`), so of two
messages for one job (a redelivery, or a recovery's re-send) exactly one runs. The holder beats the
job's heartbeat (workers/heartbeat.py) while it runs; workers/recovery.py re-sends a running job whose
heartbeat is stale (its worker died), and a holder that finds its lease taken over stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.checkpoints.service import checkpoint_dir
from app.datasets.service import store_prefix as dataset_prefix
from app.evaluations import service
from app.evaluations.service import job_prefix
from app.models import (
    CANCELLED,
    FAILED,
    REJECTED,
    RUNNING,
    STAGE_DONE,
    SUCCEEDED,
    TERMINAL_STATUSES,
    Checkpoint,
    Evaluation,
)
from app.queue import enqueue
from app.settings import get_settings, make_store
from diffaudit import pipeline
from diffaudit.datasets import Dataset
from diffaudit.device import configure_threads, pick_device
from diffaudit.errors import InvalidInput
from diffaudit.spec import EvaluationSpec
from diffaudit.store import ArtifactStore, ScopedStore
from workers.celery_app import celery_app
from workers.db import retrying, session_scope
from workers.heartbeat import Heartbeat

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # a stage that raises anything but InvalidInput runs at most MAX_RETRIES + 1 times
RETRY_DELAY = 5  # seconds before a crashed stage runs again


@celery_app.task(name="evaluations.run", acks_late=True, reject_on_worker_lost=True)
def run_evaluation(evaluation_id: str) -> None:
    """Start or resume a job: send its first unfinished stage to that stage's queue."""
    with session_scope() as session:
        lease = service.load_job(session, evaluation_id).lease
    send_next_stage(evaluation_id, lease)


@celery_app.task(
    name="evaluations.stage", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES
)
def run_evaluation_stage(self: Any, evaluation_id: str, stage: str, lease: int = 0) -> None:
    """Run one stage of a job if this message's `lease` is still the job's, record it, and send the next one (or
    finish the job)."""
    with session_scope() as session:
        if service.is_cancel_requested(session, evaluation_id):
            service.finish(session, evaluation_id, CANCELLED)
            return
        job = service.claim(session, evaluation_id, lease)
        if job is None:
            log.info("evaluation %s: lease %d is gone (another task holds the job, or it ended)", evaluation_id, lease)
            return
        if job.status != RUNNING:
            return
        lease = job.lease
        spec = EvaluationSpec.model_validate(job.spec)
        checkpoint, dataset_id = session.get_one(Checkpoint, job.checkpoint_id), job.dataset_id
        service.mark_stage_started(session, evaluation_id, stage)

    settings = get_settings()
    configure_threads(settings.torch_threads)
    store = make_store(settings)
    heartbeat = Heartbeat(evaluation_id, lease, settings.heartbeat_interval)
    try:
        with heartbeat:
            ctx = pipeline.StageContext(
                spec=spec,
                checkpoint_dir=checkpoint_dir(store, checkpoint),
                dataset=Dataset.open(store, dataset_prefix(dataset_id)),
                job=ScopedStore(store, job_prefix(evaluation_id)),
                cache=ScopedStore(store, "cache"),
                device=pick_device(settings.device),
                results=_finished_results(evaluation_id, spec, store),
                allow_downloads=settings.allow_downloads,
                weights_dir=settings.weights_dir,
                report=_throttled(lambda done, total: _record_progress(evaluation_id, stage, done, total)),
                is_cancelled=_throttled_check(lambda: heartbeat.lost or _cancel_requested(evaluation_id)),
            )
            summary = pipeline.run_stage(stage, ctx)
    except pipeline.Rejected as rejection:
        results = {**pipeline.results_document(spec, ctx.results), "rejection": rejection.evidence}
        reason = rejection.reason
        retrying(lambda s: _finish(s, store, evaluation_id, REJECTED, results=results, error=reason))
        return
    except pipeline.Cancelled:
        with session_scope() as session:
            if service.is_cancel_requested(session, evaluation_id):
                service.finish(session, evaluation_id, CANCELLED)
            else:  # the job was taken over by recovery: the task holding it now goes on
                log.warning("evaluation %s: lease %d was taken over; stopping stage %s", evaluation_id, lease, stage)
        return
    except InvalidInput as exc:  # the user's to fix: retrying cannot help
        log.info("evaluation %s failed in stage %s: %s", evaluation_id, stage, exc)
        error = f"stage {stage}: {exc}"
        retrying(lambda s: _finish(s, store, evaluation_id, FAILED, error=error))
        return
    except Exception as exc:
        if self.request.retries < MAX_RETRIES:
            log.exception("evaluation %s stage %s crashed; retrying", evaluation_id, stage)
            retry = self.retry(args=(evaluation_id, stage, lease), exc=exc, countdown=RETRY_DELAY, throw=False)
            retrying(lambda s: service.release(s, evaluation_id, lease))
            raise retry from exc
        # A defect's text can hold server paths: the job names its type, the worker's log has the rest.
        log.exception("evaluation %s stage %s failed after %d attempts", evaluation_id, stage, MAX_RETRIES + 1)
        message = (
            f"stage {stage} failed after {MAX_RETRIES + 1} attempts with an internal error "
            f"({type(exc).__name__}); the worker's log has the details"
        )
        retrying(lambda s: _finish(s, store, evaluation_id, FAILED, error=message))
        return

    retrying(lambda s: service.record_stage_done(s, evaluation_id, stage, summary))
    done = retrying(lambda s: _done_stages(service.load_job(s, evaluation_id)))
    if set(spec.stages) <= done:
        results = pipeline.results_document(spec, ctx.results)
        retrying(lambda s: _finish(s, store, evaluation_id, SUCCEEDED, results=results))
    else:
        _hand_over(evaluation_id, spec, done, lease)


def _finish(session: Session, store: ArtifactStore, evaluation_id: str, status: str, **outcome: Any) -> None:
    """End the job and, if this call ended it, store its report (`report.html`). A report that cannot be rendered
    is logged and leaves the job as it ended: GET /v1/evaluations/{id}/report renders it again."""
    if service.finish(session, evaluation_id, status, **outcome):
        try:
            service.store_job_report(session, store, evaluation_id)
        except Exception:
            log.exception("evaluation %s: the report could not be stored", evaluation_id)


def _done_stages(job: Evaluation) -> set[str]:
    return {stage.name for stage in job.stages if stage.status == STAGE_DONE}


def send_next_stage(evaluation_id: str, lease: int) -> None:
    """Send the job's first unfinished stage with `lease` (a new task, the recovery's re-send) and release it."""
    with session_scope() as session:
        job = service.load_job(session, evaluation_id)
        if job.status in TERMINAL_STATUSES:
            return
        spec = EvaluationSpec.model_validate(job.spec)
        done = _done_stages(job)
    _hand_over(evaluation_id, spec, done, lease)


def _hand_over(evaluation_id: str, spec: EvaluationSpec, done: set[str], lease: int) -> None:
    """Send the first stage not done with `lease`, then release the lease (no heartbeat while the message waits).
    When all stages are done (the job stopped before it was ended), the last one, which then only reads its stored
    summary and ends the job. Dying between the two leaves a stale heartbeat: recovery sends the job again."""
    stage = next((s for s in spec.stages if s not in done), spec.stages[-1])
    enqueue("evaluations.stage", evaluation_id, stage, lease, queue=pipeline.get_stage(stage).queue)
    retrying(lambda s: service.release(s, evaluation_id, lease))


def _finished_results(evaluation_id: str, spec: EvaluationSpec, store: ArtifactStore) -> dict[str, Any]:
    return pipeline.finished_results(spec, ScopedStore(store, job_prefix(evaluation_id)))


def _record_progress(evaluation_id: str, stage: str, done: int, total: int) -> None:
    """Progress is for display: while the database is away the stage goes on, and the next report catches up."""
    try:
        with session_scope() as session:
            service.record_progress(session, evaluation_id, stage, done, total)
    except OperationalError:
        log.warning("evaluation %s: progress not recorded (database unreachable)", evaluation_id)


def _cancel_requested(evaluation_id: str) -> bool:
    """Whether the job was cancelled; not cancelled while the database is away (asked again at the next step)."""
    try:
        with session_scope() as session:
            return service.is_cancel_requested(session, evaluation_id)
    except OperationalError:
        log.warning("evaluation %s: cancellation not checked (database unreachable)", evaluation_id)
        return False


PROGRESS_INTERVAL = 0.5  # seconds between two database writes of the same job's progress


def _throttled(record: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """Record progress at most every PROGRESS_INTERVAL seconds, and always the last step."""
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= PROGRESS_INTERVAL:
            last = now
            record(done, total)

    return report


def _throttled_check(check: Callable[[], bool]) -> Callable[[], bool]:
    """Ask the database whether the job was cancelled at most every PROGRESS_INTERVAL seconds."""
    last = 0.0
    answer = False

    def is_cancelled() -> bool:
        nonlocal last, answer
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL:
            last, answer = now, check()
        return answer

    return is_cancelled
