"""The database session of worker processes and service commands, from the process settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.settings import get_settings

T = TypeVar("T")
log = logging.getLogger(__name__)


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


DATABASE_OUTAGE_SECONDS = 300  # how long a worker retries a write while the database is unreachable
_RETRY_DELAY = 1.0


def retrying(write: Callable[[Session], T]) -> T:
    """`write(session)` in a fresh session, again every second while the database is unreachable (a restart, a
    failover), for up to DATABASE_OUTAGE_SECONDS; the service functions are safe to repeat (guarded updates)."""
    deadline = time.monotonic() + DATABASE_OUTAGE_SECONDS
    while True:
        try:
            with session_scope() as session:
                return write(session)
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            log.warning("database unreachable; retrying the write in %.0f s", _RETRY_DELAY)
            time.sleep(_RETRY_DELAY)
