"""run(spec, ...) -> results, stage by stage, with progress callbacks.

A job is a list of stages (EvaluationSpec.stages). Each stage reads what earlier stages
stored, writes its outputs (arrays, images, JSON) under the job's folder in the artifact
store, and returns a JSON-able summary. A stage whose summary is already stored
(`<stage>/result.json`) is not run again, so a job interrupted anywhere resumes after its
last finished stage. Stages may also resume inside themselves (the sampler keeps finished
batches).

Stage implementations live in `diffaudit/stages/`, one module per stage, registered in
STAGES below. Each stage declares the queue it belongs on: `gpu` for anything that runs the
UNet or an extractor, `cpu` for statistics and plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from diffaudit.datasets import Dataset
from diffaudit.spec import EvaluationSpec
from diffaudit.store import ArtifactStore, ScopedStore, load_json, save_json

Queue = Literal["gpu", "cpu"]
ProgressFn = Callable[[str, int, int], None]


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
    name: str
    queue: Queue

    def run(self, ctx: StageContext) -> dict[str, Any]: ...


def _registry() -> dict[str, Stage]:
    from diffaudit.stages.augmentation import AugmentationStage
    from diffaudit.stages.balance import BalanceStage
    from diffaudit.stages.features import FeaturesStage
    from diffaudit.stages.guided import GuidedStage
    from diffaudit.stages.irs import IRSStage
    from diffaudit.stages.memorization import MemorizationStage
    from diffaudit.stages.novelty import NoveltyStage
    from diffaudit.stages.sample import SampleStage

    stages: list[Stage] = [
        SampleStage(),
        FeaturesStage(),
        GuidedStage(),
        MemorizationStage(),
        NoveltyStage(),
        IRSStage(),
        BalanceStage(),
        AugmentationStage(),
    ]
    return {s.name: s for s in stages}


STAGES: dict[str, Stage] = {}


def get_stage(name: str) -> Stage:
    if not STAGES:
        STAGES.update(_registry())
    return STAGES[name]


def result_key(stage: str) -> str:
    return f"{stage}/result.json"


def finished_results(spec: EvaluationSpec, job: ArtifactStore) -> dict[str, dict[str, Any]]:
    """Summaries of the stages of `spec` already finished in this job's folder."""
    return {s: load_json(job, result_key(s)) for s in spec.stages if job.exists(result_key(s))}


def run_stage(name: str, ctx: StageContext) -> dict[str, Any]:
    """Run one stage (or return its stored summary) and store its summary."""
    if ctx.job.exists(result_key(name)):
        summary: dict[str, Any] = load_json(ctx.job, result_key(name))
    else:
        started = time.perf_counter()
        summary = get_stage(name).run(ctx)
        summary = {**summary, "seconds": round(time.perf_counter() - started, 3)}
        save_json(ctx.job, result_key(name), summary)
    ctx.results[name] = summary
    return summary


def run(
    spec: EvaluationSpec,
    *,
    checkpoint_dir: Path,
    dataset: Dataset,
    store: ArtifactStore,
    job_prefix: str,
    device: torch.device | None = None,
    allow_downloads: bool = False,
    on_progress: ProgressFn | None = None,
    on_stage_done: Callable[[str, dict[str, Any]], None] | None = None,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Run every stage of `spec` in order and return the versioned results document."""
    from diffaudit.device import pick_device

    job = ScopedStore(store, job_prefix)
    ctx = StageContext(
        spec=spec,
        checkpoint_dir=checkpoint_dir,
        dataset=dataset,
        job=job,
        cache=ScopedStore(store, "cache"),
        device=device or pick_device(),
        results={},
        allow_downloads=allow_downloads,
        is_cancelled=is_cancelled,
    )
    for name in spec.stages:
        if on_progress is not None:
            ctx.report = lambda done, total, name=name: on_progress(name, done, total)  # type: ignore[misc]
        summary = run_stage(name, ctx)
        if on_stage_done is not None:
            on_stage_done(name, summary)
    return results_document(spec, ctx.results)


RESULTS_VERSION = 1


def results_document(spec: EvaluationSpec, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The versioned JSON returned by GET /v1/evaluations/{id}/results and the CLI."""
    return {
        "version": RESULTS_VERSION,
        "spec": spec.model_dump(mode="json"),
        "stages": {name: results[name] for name in spec.stages if name in results},
    }
