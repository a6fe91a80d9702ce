"""The schema comes only from Alembic: migrations and models agree, on PostgreSQL and on SQLite."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from alembic import command
from app.db import REPO_ROOT, make_engine, upgrade_database
from app.models import Base


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, Base.metadata))


def test_postgres_migrations_match_the_models(engine: Engine) -> None:
    assert schema_differences(engine) == []


def test_sqlite_upgrade_from_empty_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def alembic_config(url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    return config


def test_sqlite_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cycle.db'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade_database(url)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


@pytest.fixture
def empty_postgres(database_url: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database beside the test database; dropped afterwards."""
    server, _ = database_url.rsplit("/", 1)
    name = f"diffaudit_migration_{secrets.token_hex(6)}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


INSERT_DATASET = text(
    "INSERT INTO datasets (id, project_id, name, kind, count, item_shape, content_hash, class_names, "
    "class_counts, heldout_count, info, created_at) VALUES (:id, 'pr_1', 'd', 'images', 1, '[1, 1, 1]', "
    "'same-content', NULL, NULL, 0, '{}', now())"
)


def test_postgres_0002_keeps_earlier_duplicate_datasets_and_refuses_new_ones(empty_postgres: str) -> None:
    upgrade_database(empty_postgres, "0001")
    engine = make_engine(empty_postgres)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO projects (id, name, created_at) VALUES ('pr_1', 'p', now())"))
            for dataset_id in ("ds_1", "ds_2"):  # identical uploads, as made before 0002
                connection.execute(INSERT_DATASET, {"id": dataset_id})
        upgrade_database(empty_postgres)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT heldout_hash FROM datasets")).scalars().all() == [None, None]
            connection.execute(text("UPDATE datasets SET heldout_hash = 'mask' WHERE id = 'ds_1'"))
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text("UPDATE datasets SET heldout_hash = 'mask' WHERE id = 'ds_2'"))
        command.downgrade(alembic_config(empty_postgres), "0001")
        assert "heldout_hash" not in {c["name"] for c in inspect(engine).get_columns("datasets")}
        upgrade_database(empty_postgres)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
