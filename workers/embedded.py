"""The embedded deployment: the API and a Celery worker in one process, over an in-memory broker.

Same code and same tasks as production; only the broker (memory://) and the database
(SQLite) differ. The worker consumes both queues, one task at a time. The in-memory broker
does not outlive the process, so when the worker starts it sends again every job the
database still has queued or running: a restarted server resumes them after their last
finished stage (and inside it, after its last stored batch).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery.worker import WorkController
from fastapi import FastAPI

from app.evaluations.service import unfinished_job_ids
from app.main import create_app as create_api
from app.queue import RUN_EVALUATION, enqueue
from workers.celery_app import celery_app
from workers.db import session_scope

QUEUES = ("gpu", "cpu")

log = logging.getLogger(__name__)


def start_worker_thread() -> WorkController:
    """Start a solo-pool worker on both queues in a daemon thread of this process."""
    worker = WorkController(
        app=celery_app,
        pool="solo",
        concurrency=1,
        queues=list(QUEUES),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="INFO",
    )

    # Threads other than the one that created the app (this worker's, and the timer thread that runs a task
    # whose countdown has passed) see Celery's default app: without this, a retry would be published through
    # its AMQP broker and never come back.
    celery_app.set_default()
    threading.Thread(target=worker.start, name="diffaudit-worker", daemon=True).start()
    return worker


def resume_unfinished_jobs() -> None:
    """Send every job left queued or running by a previous process to the worker again."""
    with session_scope() as session:
        evaluation_ids = unfinished_job_ids(session)
    for evaluation_id in evaluation_ids:
        enqueue(RUN_EVALUATION, evaluation_id)
    if evaluation_ids:
        log.warning("resumed %d unfinished evaluation(s): %s", len(evaluation_ids), ", ".join(evaluation_ids))


def create_app() -> FastAPI:
    """The API with an in-process worker started and stopped by its lifespan."""
    api = create_api()
    inner = api.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            worker = start_worker_thread()
            resume_unfinished_jobs()
            try:
                yield
            finally:
                worker.stop(in_sighandler=False)

    api.router.lifespan_context = lifespan
    return api
