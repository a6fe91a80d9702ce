"""Database models. The schema is created and changed only by Alembic migrations."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

QUEUED, RUNNING, SUCCEEDED, REJECTED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "rejected",
    "failed",
    "cancelled",
)
EVALUATION_STATUSES = (QUEUED, RUNNING, SUCCEEDED, REJECTED, FAILED, CANCELLED)
TERMINAL_STATUSES = frozenset({SUCCEEDED, REJECTED, FAILED, CANCELLED})
STAGE_PENDING, STAGE_RUNNING, STAGE_DONE = "pending", "running", "done"
STAGE_FAILED, STAGE_REJECTED, STAGE_CANCELLED, STAGE_SKIPPED = "failed", "rejected", "cancelled", "skipped"
# What the stage running when a job ends becomes; the job's pending stages become skipped.
STAGE_ENDINGS = {FAILED: STAGE_FAILED, REJECTED: STAGE_REJECTED, CANCELLED: STAGE_CANCELLED}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A random, URL-safe identifier such as ck_3f2a9c01d4e5b6a7c8d9."""
    return f"{prefix}_{secrets.token_hex(10)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite returns naive ones: they are UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("pr"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """A bearer token; only the sha256 of its secret is stored."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("tk"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(lazy="joined")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("project_id", "content_hash"),
        UniqueConstraint("project_id", "run_name", "step"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    run_name: Mapped[str | None] = mapped_column(String(100), doc="the training run it belongs to, if any")
    step: Mapped[int | None] = mapped_column(BigInteger, doc="its training step in that run")
    content_hash: Mapped[str] = mapped_column(String(64))
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    sample_size: Mapped[int] = mapped_column(Integer)
    in_channels: Mapped[int] = mapped_column(Integer)
    out_channels: Mapped[int] = mapped_column(Integer)
    num_class_embeds: Mapped[int | None] = mapped_column(Integer)
    source_path: Mapped[str | None] = mapped_column(Text, doc="server-side folder; None = files are in the store")
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def conditioning(self) -> str:
        return "class" if self.num_class_embeds else "none"

    @property
    def source(self) -> str:
        return "server_path" if self.source_path is not None else "upload"


class Dataset(Base):
    """A training set; built-ins (e.g. 'digits') have no project and are visible to all."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "content_hash", "heldout_hash"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(Integer)
    item_shape: Mapped[list[Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    heldout_hash: Mapped[str | None] = mapped_column(
        String(64), doc="sha256 of the held-out mask; with content_hash, what makes two uploads the same dataset"
    )
    class_names: Mapped[list[Any] | None] = mapped_column(JSON)
    class_counts: Mapped[list[Any] | None] = mapped_column(JSON)
    heldout_count: Mapped[int] = mapped_column(Integer, default=0)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def builtin(self) -> bool:
        return self.project_id is None


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key"),
        Index("ix_evaluations_project_created", "project_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ev"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Which task may run the job (workers/tasks.py): a task claims lease n from a message carrying n and
    # holds n + 1; heartbeat_at is beaten by the holder, None while the job's next message waits in a queue.
    lease: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    stages: Mapped[list[EvaluationStage]] = relationship(
        order_by="EvaluationStage.position", lazy="selectin", cascade="all, delete-orphan"
    )


class EvaluationStage(Base):
    """One stage of a job; progress updates touch only this row."""

    __tablename__ = "evaluation_stages"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=STAGE_PENDING)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
