"""The schema comes only from Alembic: migrations and models agree, on PostgreSQL and on SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from app.db import make_engine, upgrade_database
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


def test_sqlite_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cycle.db'}"
    upgrade_database(url)
    from alembic.config import Config

    from alembic import command
    from app.db import REPO_ROOT

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.downgrade(config, "base")
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade_database(url)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()
