"""The stage framework: what a stage is given (StageContext), what it is (Stage), and how it stops early.

A stage reads what earlier stages stored (through diffaudit.stages.artifacts), writes its own outputs under the
job's folder, and returns a JSON-able summary. Stages never import each other; diffaudit.stages.registry is the one
module that knows them all. A stage's prerequisites are declared by its sub-spec (diffaudit.spec), so that a spec
is complete, and checked, before any stage runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from diffaudit.datasets import Dataset
from diffaudit.spec import EvaluationSpec
from diffaudit.store import ArtifactStore

Queue = Literal["gpu", "cpu"]


class Cancelled(Exception):
    """The job was cancelled while a stage ran."""


class Rejected(Exception):
    """The checkpoint failed a gate (e.g. early IRS rejection); `evidence` says why."""

    def __init__(self, reason: str, evidence: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence


@dataclass
class StageContext:
    """Everything a stage may use. Components are passed in; nothing is global."""

    spec: EvaluationSpec
    checkpoint_dir: Path
    dataset: Dataset
    job: ArtifactStore  # this job's folder
    cache: ArtifactStore  # content-addressed, shared by all jobs
    device: torch.device
    results: dict[str, dict[str, Any]]  # summaries of finished stages
    allow_downloads: bool = False  # may extractors fetch hub weights (DIFFAUDIT_ALLOW_DOWNLOADS)
    weights_dir: Path | None = None  # the operator's folder of weights files a spec may name (settings)
    report: Callable[[int, int], None] = lambda done, total: None
    is_cancelled: Callable[[], bool] = lambda: False
    _checkpoint: Any = field(default=None, repr=False)

    @cached_property
    def checkpoint(self) -> Any:
        """The loaded checkpoint (UNet on the device, scheduler config), loaded once."""
        from diffaudit.checkpoints import load_checkpoint

        return self._checkpoint or load_checkpoint(self.checkpoint_dir, self.device)

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled()


class Stage(Protocol):
    """One step of a job. Its prerequisites come from its sub-spec: `spec.<name>.requires()`."""

    name: str
    queue: Queue  # "gpu" for anything that runs the UNet or an extractor, "cpu" for statistics and plots

    def run(self, ctx: StageContext) -> dict[str, Any]: ...
