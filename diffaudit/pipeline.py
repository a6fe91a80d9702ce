"""run(spec, ...) -> results, stage by stage, with progress callbacks.

A job is a list of stages (EvaluationSpec.stages, closed over each stage's prerequisites). Each stage reads what
earlier stages stored (diffaudit.stages.artifacts), writes its outputs (arrays, images, JSON) under the job's
folder in the artifact store, and returns a JSON-able summary. A stage whose summary is already stored
(`<stage>/result.json`) is not run again, so a job interrupted anywhere resumes after its last finished stage.
Stages may also resume inside themselves (the samplers keep finished batches).

When a stage rejects the checkpoint (diffaudit.stages.base.Rejected, e.g. early IRS rejection while sampling), the
requested stages that can say something cheap about the samples already drawn (their `after_rejection`) add their
summaries to the rejection's evidence, under "after_rejection".

The stage framework is diffaudit.stages.base (StageContext, Stage, Rejected, Cancelled, re-exported here);
diffaudit.stages.registry knows every stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from diffaudit.datasets import Dataset
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.base import Cancelled, Queue, Rejected, Stage, StageContext
from diffaudit.stages.registry import STAGES, get_stage
from diffaudit.store import ArtifactStore, ScopedStore, load_json, save_json

__all__ = ["STAGES", "Cancelled", "Queue", "Rejected", "Stage", "StageContext", "get_stage", "run", "run_stage"]

ProgressFn = Callable[[str, int, int], None]


@runtime_checkable
class AfterRejection(Protocol):
    """A stage with a cheap analysis of the samples drawn before a rejection (None: nothing to say)."""

    def after_rejection(self, ctx: StageContext) -> dict[str, Any] | None: ...


def result_key(stage: str) -> str:
    return f"{stage}/result.json"


def finished_results(spec: EvaluationSpec, job: ArtifactStore) -> dict[str, dict[str, Any]]:
    """Summaries of the stages of `spec` already finished in this job's folder."""
    return {s: load_json(job, result_key(s)) for s in spec.stages if job.exists(result_key(s))}


def run_stage(name: str, ctx: StageContext) -> dict[str, Any]:
    """Run one stage (or return its stored summary) and store its summary; on a rejection, add what the requested
    stages can still say about the samples already drawn to the evidence."""
    if ctx.job.exists(result_key(name)):
        summary: dict[str, Any] = load_json(ctx.job, result_key(name))
    else:
        started = time.perf_counter()
        try:
            summary = get_stage(name).run(ctx)
        except Rejected as rejection:
            analyses = analyses_after_rejection(ctx)
            if analyses:
                rejection.evidence["after_rejection"] = analyses
            raise
        summary = {**summary, "seconds": round(time.perf_counter() - started, 3)}
        save_json(ctx.job, result_key(name), summary)
    ctx.results[name] = summary
    return summary


def analyses_after_rejection(ctx: StageContext) -> dict[str, dict[str, Any]]:
    """The summaries of the requested stages' `after_rejection` analyses that apply."""
    analyses = {}
    for name in ctx.spec.stages:
        stage = get_stage(name)
        if name not in ctx.results and isinstance(stage, AfterRejection):
            summary = stage.after_rejection(ctx)
            if summary is not None:
                analyses[name] = summary
    return analyses


def run(
    spec: EvaluationSpec,
    *,
    checkpoint_dir: Path,
    dataset: Dataset,
    store: ArtifactStore,
    job_prefix: str,
    device: torch.device | None = None,
    allow_downloads: bool = False,
    weights_dir: Path | None = None,
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
        weights_dir=weights_dir,
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
