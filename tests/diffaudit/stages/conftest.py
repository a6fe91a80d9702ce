"""The one sampled digits job the stage tests share: sample it once, copy it for each test that adds stages."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_jobs import SAMPLED, run_on_digits

from diffaudit.spec import EvaluationSpec


@pytest.fixture(scope="session")
def sampled_digits(tmp_path_factory: pytest.TempPathFactory, tiny_demo_model: Path) -> Path:
    """A LocalStore folder with the built-in digits and a finished sample stage (SAMPLED: 64 samples, 10 DDIM
    steps of the tiny demo model) in job JOB_PREFIX. Read-only: copy it (stage_jobs.copy_store) to add stages; a
    spec with the same `sample` then reuses the samples."""
    root = tmp_path_factory.mktemp("sampled-digits")
    run_on_digits(EvaluationSpec(stages=("sample",), sample=SAMPLED), tiny_demo_model, root, "sample")
    return root
