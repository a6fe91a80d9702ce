"""A finished job on the built-in digits, shared by the stage tests that run a whole pipeline."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec
from diffaudit.store import LocalStore, ScopedStore

JOB_PREFIX = "evaluations/a"
SAMPLED = {"n": 64, "steps": 10}  # the sample spec of the shared sampled job (conftest.sampled_digits)


@dataclass
class Job:
    store: LocalStore
    dataset: Dataset
    job: ScopedStore
    results: dict[str, Any]
    model: Path
    stage: str

    @property
    def summary(self) -> dict[str, Any]:
        """The summary of the stage under test."""
        return self.results["stages"][self.stage]


def run_on_digits(spec: EvaluationSpec, model: Path, folder: Path, stage: str) -> Job:
    """Run `spec` with `model` on the built-in digits stored in a LocalStore at `folder` (stored there if absent)."""
    store = LocalStore(folder)
    if not store.exists("datasets/digits/meta.json"):
        write_builtin_dataset("digits", store, "datasets/digits")
    dataset = Dataset.open(store, "datasets/digits")
    results = run(spec, checkpoint_dir=model, dataset=dataset, store=store, job_prefix=JOB_PREFIX)
    return Job(store, dataset, ScopedStore(store, JOB_PREFIX), results, model, stage)


def copy_store(sampled: Path, folder: Path) -> LocalStore:
    """A private copy, at `folder`, of the shared sampled store (conftest.sampled_digits)."""
    shutil.copytree(sampled, folder)
    return LocalStore(folder)
