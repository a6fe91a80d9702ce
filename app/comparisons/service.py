"""Comparisons: check that two jobs can be compared sample by sample, then compare their stored artifacts."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.comparisons.schemas import ComparisonCreate
from app.errors import Conflict, Invalid
from app.evaluations.service import get_evaluation, job_prefix
from app.models import SUCCEEDED, Evaluation, Project
from diffaudit.comparison import compare_jobs, spec_differences
from diffaudit.spec import EvaluationSpec
from diffaudit.store import ArtifactStore, ScopedStore

BOOTSTRAP_SEED = 0


def _succeeded(evaluation: Evaluation, role: str) -> None:
    if evaluation.status != SUCCEEDED or evaluation.results is None:
        raise Conflict(
            f"the {role} evaluation {evaluation.id} is {evaluation.status}: compare two succeeded evaluations",
            code="not_comparable",
            details={"evaluation_id": evaluation.id, "status": evaluation.status},
        )


def check_comparable(baseline: Evaluation, candidate: Evaluation) -> None:
    """Refuse (422, field by field) two jobs whose samples are not paired: another spec, seeds or dataset."""
    if baseline.id == candidate.id:
        raise Invalid(f"baseline and candidate are the same evaluation ({baseline.id}); compare two evaluations")
    differences = spec_differences(
        {"dataset_id": baseline.dataset_id, "spec": baseline.spec},
        {
            "dataset_id": candidate.dataset_id,
            "spec": candidate.spec,
        },
    )
    if differences:
        listed = "; ".join(f"{d['field']}: {d['baseline']!r} vs {d['candidate']!r}" for d in differences)
        raise Invalid(
            f"the evaluations differ, so their samples are not paired (sample i must come from the same seed of "
            f"the same spec on the same dataset): {listed}",
            details={"differences": differences},
        )


def compare(session: Session, project: Project, store: ArtifactStore, request: ComparisonCreate) -> dict[str, Any]:
    baseline = get_evaluation(session, project, request.baseline_evaluation_id)
    candidate = get_evaluation(session, project, request.candidate_evaluation_id)
    check_comparable(baseline, candidate)
    _succeeded(baseline, "baseline")
    _succeeded(candidate, "candidate")
    assert baseline.results is not None
    metrics = compare_jobs(
        EvaluationSpec.model_validate(baseline.spec),
        ScopedStore(store, job_prefix(baseline.id)),
        ScopedStore(store, job_prefix(candidate.id)),
        baseline.results,
        error_rate=request.error_rate,
        replicates=request.replicates,
        seed=BOOTSTRAP_SEED,
    )
    if not metrics:
        raise Invalid(
            "the evaluations stored no per-sample quantity to compare: run the irs, memorization or novelty stage"
        )
    return {
        "baseline_evaluation_id": baseline.id,
        "candidate_evaluation_id": candidate.id,
        "spec_hash": baseline.spec_hash,
        "dataset_id": baseline.dataset_id,
        "replicates": request.replicates,
        "seed": BOOTSTRAP_SEED,
        "metrics": [m.to_dict() for m in metrics],
    }
