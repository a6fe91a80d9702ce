"""The database session of worker processes and service commands, from the process settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.settings import get_settings


@lru_cache(maxsize=1)
def _sessionmaker() -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(get_settings().database_url))


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session closed at the end; the service functions commit their own changes."""
    with _sessionmaker()() as session:
        yield session


def discard_inherited_connections() -> None:
    """In a forked process: forget the parent's pooled connections without closing them (they are the parent's)."""
    if _sessionmaker.cache_info().currsize:
        engine = _sessionmaker().kw["bind"]
        engine.dispose(close=False)
        _sessionmaker.cache_clear()
