"""Session-wide test setup: a deliberate torch thread count, a throwaway PostgreSQL database,
and the tiny demo model trained once."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from diffaudit.device import configure_threads

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("DIFFAUDIT_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Models trained by the tests are cached here between runs (a fresh clone trains them once).
TEST_MODEL_DIR = ROOT / "var" / "test-models"
TINY_TRAIN_STEPS = 400

# All cores by default; DIFFAUDIT_TORCH_THREADS=1 when several test runs share the machine.
configure_threads(int(os.environ.get("DIFFAUDIT_TORCH_THREADS", "0")))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head by Alembic, dropped at the end of the session."""
    from app.db import upgrade_database

    name = f"diffaudit_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tiny_demo_model() -> Path:
    """The demo architecture trained briefly on all digits: a real, small, class-conditional checkpoint."""
    from diffaudit.demo import ensure_demo_model

    return ensure_demo_model("digits", TEST_MODEL_DIR, progress=False, train_steps=TINY_TRAIN_STEPS)


# 200 steps: IRS_inf 0.17 [0.16, 0.18] against 0.45 [0.41, 0.50] for tiny_demo_model (random-cnn, 512 samples,
# 10 DDIM steps; docs/irs.md), clearly low-diversity
TINY_OVERFIT_TRAIN_STEPS = 200


@pytest.fixture(scope="session")
def tiny_overfit_model() -> Path:
    """The demo architecture trained briefly on the first 64 digits only: a real low-diversity checkpoint."""
    from diffaudit.demo import ensure_demo_model

    return ensure_demo_model("digits-overfit", TEST_MODEL_DIR, progress=False, train_steps=TINY_OVERFIT_TRAIN_STEPS)


@pytest.fixture
def no_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a layer's weights are initialised anywhere but on the meta device (i.e. allocated)."""
    import torch

    real = torch.nn.init.kaiming_uniform_

    def meta_only(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert tensor.is_meta, "a model was built with real memory before the checks"
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", meta_only)
