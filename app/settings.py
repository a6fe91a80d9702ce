"""Infrastructure settings: one pydantic-settings class, read from `DIFFAUDIT_*` environment variables.

ML parameters never live here; they belong to EvaluationSpec and are stored with every job.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from diffaudit.store import ArtifactStore, LocalStore, S3Store

GIB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFAUDIT_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./var/diffaudit.db", description="SQLAlchemy URL (SQLite or PostgreSQL)"
    )
    broker_url: str = Field(
        default="memory://", description="Celery broker; memory:// only works with the embedded worker"
    )
    artifact_store: Literal["local", "s3"] = "local"
    artifact_dir: Path = Path("./var/artifacts")
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = ""
    cache_dir: Path = Field(default=Path("./var/cache"), description="local cache of S3 objects (memory-mapped reads)")
    embedded_worker: bool = Field(default=False, description="run a Celery worker inside the API process")
    allow_downloads: bool = Field(default=False, description="allow checkpoint references that need a hub download")
    server_paths: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="roots under which server-side checkpoint folders may be registered (comma-separated); "
        "empty = registering server paths is refused",
    )
    max_upload_bytes: int = Field(default=2 * GIB, ge=1)
    max_archive_files: int = Field(default=200_000, ge=1)
    max_archive_bytes: int = Field(default=8 * GIB, ge=1)
    max_image_side: int = Field(default=1024, ge=1)
    device: str | None = Field(default=None, description="torch device for workers; None = CUDA when present, else CPU")
    torch_threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = all cores of this process")
    broker_visibility_timeout: int = Field(
        default=300,
        ge=1,
        description="seconds before an unacknowledged task is redelivered (Redis broker); longer than "
        "heartbeat_timeout + recovery_interval, so that recovery re-sends a dead worker's job first",
    )
    heartbeat_interval: float = Field(default=5.0, gt=0, description="seconds between two heartbeats of a running job")
    heartbeat_timeout: float = Field(
        default=60.0, gt=0, description="seconds without a heartbeat after which a running job's worker is dead"
    )
    recovery_interval: float = Field(
        default=15.0, gt=0, description="seconds between two searches of every worker for jobs whose worker died"
    )
    worker_prefetch: int = Field(default=1, ge=1)
    demo_model_dir: Path = Path("./var/models")
    share_secret: SecretStr | None = Field(
        default=None,
        description="key signing the links of POST /v1/evaluations/{id}/share (the same on every API process); "
        "unset = a random key per process with the in-memory broker (links end with the process), sharing "
        "refused otherwise",
    )

    # Upload bounds on checkpoints, checked before a model is built (max_image_side above also
    # bounds a checkpoint's sample_size).
    max_checkpoint_parameters: int = Field(
        default=1_000_000_000,
        ge=1,
        description="most parameters an uploaded checkpoint may have; validation holds them in float32 in the API",
    )

    # What an evaluation spec may ask for, checked when it is submitted (app.evaluations.validation).
    weights_dir: Path | None = Field(
        default=None,
        description="folder of the weights files a spec may name (features.weights and the other weights fields), "
        "each named relative to it; unset = specs cannot use weights files",
    )
    max_batch_pixels: int = Field(
        default=2**27,
        ge=1,
        description="most values (images x height x width x channels) in one batch a spec sends through the "
        "checkpoint or an extractor (at the extractor's input size); bounds the time of one forward pass",
    )

    @model_validator(mode="after")
    def _weights_apart_from_project_files(self) -> Settings:
        """A weights folder overlapping the artifact or cache folder would let a spec name another project's files."""
        if self.weights_dir is not None:
            weights = self.weights_dir.resolve()
            for name, folder in (
                ("DIFFAUDIT_ARTIFACT_DIR", self.artifact_dir),
                ("DIFFAUDIT_CACHE_DIR", self.cache_dir),
            ):
                stored = folder.resolve()
                if stored.is_relative_to(weights) or weights.is_relative_to(stored):
                    raise ValueError(f"DIFFAUDIT_WEIGHTS_DIR must not overlap {name} (it holds every project's files)")
        return self

    @model_validator(mode="after")
    def _heartbeats_within_their_timeout(self) -> Settings:
        """A live task must be able to beat at least twice before it is taken for dead."""
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ValueError("DIFFAUDIT_HEARTBEAT_TIMEOUT must be at least twice DIFFAUDIT_HEARTBEAT_INTERVAL")
        return self

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        """postgresql:// would pick psycopg2, which is not installed; use psycopg 3."""
        for scheme in ("postgresql://", "postgres://"):
            if url.startswith(scheme):
                return "postgresql+psycopg://" + url[len(scheme) :]
        return url

    @field_validator("server_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def make_store(settings: Settings) -> ArtifactStore:
    """The artifact store named by the settings."""
    if settings.artifact_store == "s3":
        if not settings.s3_bucket:
            raise ValueError("DIFFAUDIT_ARTIFACT_STORE=s3 needs DIFFAUDIT_S3_BUCKET")
        return S3Store(
            settings.s3_bucket,
            cache_dir=settings.cache_dir,
            endpoint_url=settings.s3_endpoint_url,
            prefix=settings.s3_prefix,
        )
    return LocalStore(settings.artifact_dir)
