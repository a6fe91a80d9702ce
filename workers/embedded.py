"""The embedded deployment: the API and a Celery worker in one process, over an in-memory broker.

Same code and same tasks as production; only the broker (memory://) and the database
(SQLite) differ. The worker consumes both queues, one task at a time.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery.worker import WorkController
from fastapi import FastAPI

from app.main import create_app as create_api
from workers.celery_app import celery_app

QUEUES = ("gpu", "cpu")


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
    threading.Thread(target=worker.start, name="diffaudit-worker", daemon=True).start()
    return worker


def create_app() -> FastAPI:
    """The API with an in-process worker started and stopped by its lifespan."""
    api = create_api()
    inner = api.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            worker = start_worker_thread()
            try:
                yield
            finally:
                worker.stop(in_sighandler=False)

    api.router.lifespan_context = lifespan
    return api
