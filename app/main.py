"""The FastAPI application: `create_app(settings)` wires settings, database, store, queue and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from app.checkpoints.router import router as checkpoints_router
from app.comparisons.router import router as comparisons_router
from app.datasets.router import router as datasets_router
from app.datasets.service import ensure_builtin_datasets
from app.db import make_engine, make_sessionmaker
from app.errors import ErrorResponse, Unavailable, install_error_handlers
from app.evaluations.router import router as evaluations_router
from app.queue import configure_client
from app.runs.router import router as runs_router
from app.settings import Settings, get_settings, make_store
from app.tokens.router import router as tokens_router
from app.uploads import BodySizeLimit

DESCRIPTION = """
Audit diffusion-model checkpoints against their training data.

Upload a checkpoint (`POST /v1/checkpoints`) and a dataset (`POST /v1/datasets`, or use the built-in
`digits`), start an evaluation (`POST /v1/evaluations`), poll it (`GET /v1/evaluations/{id}`) and read its
results and artifacts. Every endpoint except `/healthz` and the docs needs `Authorization: Bearer <token>`
(`diffaudit token create --project NAME`). Errors always have the shape
`{"error": {"code": ..., "message": ..., "details": ...}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    store = make_store(settings)
    configure_client(settings)

    def prepare() -> None:
        with sessionmaker() as session:
            ensure_builtin_datasets(session, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(prepare)
        yield
        engine.dispose()

    app = FastAPI(
        title="diffaudit",
        version=version("diffaudit"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker
    app.state.store = store
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes)
    install_error_handlers(app)

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Liveness and database reachability (no token needed)",
        responses={503: {"model": ErrorResponse, "description": "the database is unreachable"}},
    )
    def healthz() -> dict[str, str]:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            raise Unavailable(f"database unreachable: {type(exc).__name__}") from exc
        return {"status": "ok"}

    for router in (
        checkpoints_router,
        comparisons_router,
        datasets_router,
        evaluations_router,
        runs_router,
        tokens_router,
    ):
        app.include_router(router)
    return app
