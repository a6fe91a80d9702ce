"""API tests against the real PostgreSQL: one throwaway database per test session, built by Alembic.

Each test gets its own project(s) and a LocalStore in tmp_path; tasks are not sent to a broker but
recorded, together with what a fresh database session sees at the moment of sending.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from app_helpers import (
    TEST_LIMITS,
    EnqueueRecorder,
    TinyCheckpoint,
    num_parameters,
    save_pipeline_folder,
    tiny_unet,
    zip_folder,
)
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.queue import get_enqueue
from app.settings import Settings
from app.tokens.service import create_token
from diffaudit.store import LocalStore


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/app/" in item.nodeid:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture()
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session:
        yield session


@pytest.fixture()
def recorder(sessions: sessionmaker[Session]) -> EnqueueRecorder:
    return EnqueueRecorder(sessions)


@pytest.fixture()
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "artifact_dir": tmp_path / "artifacts",
            "cache_dir": tmp_path / "cache",
            **TEST_LIMITS,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture()
def make_client(
    make_settings: Callable[..., Settings], recorder: EnqueueRecorder
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        app = create_app(make_settings(**overrides))
        app.dependency_overrides[get_enqueue] = lambda: recorder
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture()
def store(client: TestClient) -> LocalStore:
    store: LocalStore = client.app.state.store  # type: ignore[attr-defined]
    return store


def _headers(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session:
        token = create_token(session, f"project-{secrets.token_hex(6)}")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def auth(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Headers of a fresh project."""
    return _headers(sessions)


@pytest.fixture()
def other_auth(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Headers of a second, unrelated project."""
    return _headers(sessions)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """A class-conditional 16x16 greyscale UNet2DModel + DDPMScheduler, zipped under one top folder."""
    unet = tiny_unet()
    folder = save_pipeline_folder(tmp_path_factory.mktemp("ckpt") / "tiny-model", unet)
    return TinyCheckpoint(folder, zip_folder(folder, "tiny-model"), num_parameters(unet))


@pytest.fixture(scope="session")
def unconditional_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    unet = tiny_unet(num_class_embeds=None)
    folder = save_pipeline_folder(tmp_path_factory.mktemp("ckpt") / "uncond", unet)
    return TinyCheckpoint(folder, zip_folder(folder), num_parameters(unet))
