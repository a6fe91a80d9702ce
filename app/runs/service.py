"""Runs: the project's checkpoints grouped by run name, and a run's headline numbers per step for one spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import Invalid, NotFound
from app.models import REJECTED, SUCCEEDED, Checkpoint, Evaluation, Project
from app.pagination import PageParams
from diffaudit.metrics.trajectory import (
    IRS_INF,
    Point,
    copying_starts,
    diversity_drops,
    headline_numbers,
    trajectory_series,
)

FINISHED_WITH_RESULTS = (SUCCEEDED, REJECTED)


def list_runs(session: Session, project: Project, page: PageParams) -> tuple[list[dict[str, Any]], int]:
    """One page of the project's runs by name (with their checkpoint count and step range), and how many in all."""
    in_project = (Checkpoint.project_id == project.id, Checkpoint.run_name.is_not(None))
    query = (
        select(
            Checkpoint.run_name.label("name"),
            func.count(Checkpoint.id).label("checkpoints"),
            func.min(Checkpoint.step).label("first_step"),
            func.max(Checkpoint.step).label("last_step"),
            func.max(Checkpoint.created_at).label("updated_at"),
        )
        .where(*in_project)
        .group_by(Checkpoint.run_name)
        .order_by(Checkpoint.run_name)
    )
    total = session.scalar(select(func.count(func.distinct(Checkpoint.run_name))).where(*in_project)) or 0
    rows = session.execute(query.limit(page.limit).offset(page.offset)).mappings()
    return [dict(row) for row in rows], total


def run_checkpoints(session: Session, project: Project, name: str) -> list[Checkpoint]:
    """The run's checkpoints by step; 404 when the project has no run of that name."""
    query = (
        select(Checkpoint)
        .where(Checkpoint.project_id == project.id, Checkpoint.run_name == name)
        .order_by(Checkpoint.step)
    )
    checkpoints = list(session.scalars(query))
    if not checkpoints:
        raise NotFound(f"run {name!r} not found in this project (upload checkpoints with `run` and `step`)")
    return checkpoints


def evaluations_of(session: Session, checkpoints: list[Checkpoint]) -> list[Evaluation]:
    """Every evaluation of these checkpoints, oldest first."""
    query = (
        select(Evaluation)
        .where(Evaluation.checkpoint_id.in_([c.id for c in checkpoints]))
        .order_by(Evaluation.created_at, Evaluation.id)
    )
    return list(session.scalars(query))


def finished_spec_hashes(evaluations: list[Evaluation]) -> list[str]:
    return sorted({e.spec_hash for e in evaluations if e.status in FINISHED_WITH_RESULTS and e.results is not None})


@dataclass(frozen=True)
class RunDetail:
    name: str
    checkpoints: list[Checkpoint]
    evaluations: list[Evaluation]

    def as_dict(self) -> dict[str, Any]:
        by_checkpoint: dict[str, list[Evaluation]] = {}
        for evaluation in self.evaluations:
            by_checkpoint.setdefault(evaluation.checkpoint_id, []).append(evaluation)
        return {
            "name": self.name,
            "spec_hashes": finished_spec_hashes(self.evaluations),
            "checkpoints": [
                {
                    "step": c.step,
                    "checkpoint_id": c.id,
                    "name": c.name,
                    "content_hash": c.content_hash,
                    "created_at": c.created_at,
                    "evaluations": by_checkpoint.get(c.id, []),
                }
                for c in self.checkpoints
            ],
        }


def get_run(session: Session, project: Project, name: str) -> RunDetail:
    checkpoints = run_checkpoints(session, project, name)
    return RunDetail(name, checkpoints, evaluations_of(session, checkpoints))


def chosen_spec_hash(evaluations: list[Evaluation], name: str, spec_hash: str | None) -> str | None:
    """The spec whose jobs the trajectory compares: the one asked for, or the run's only one (422 otherwise)."""
    present = finished_spec_hashes(evaluations)
    if spec_hash is None:
        if len(present) > 1:
            raise Invalid(
                f"run {name!r} has finished evaluations of {len(present)} specs; choose one with "
                f"?spec_hash= (one of {', '.join(present)})",
                details={"spec_hashes": present},
            )
        return present[0] if present else None
    if spec_hash not in present:
        listed = ", ".join(present) if present else "none"
        raise Invalid(
            f"run {name!r} has no finished evaluation of spec {spec_hash}; its specs: {listed}",
            details={"spec_hashes": present},
        )
    return spec_hash


@dataclass(frozen=True)
class RunTrajectory:
    run: str
    spec_hash: str | None
    dataset_id: str | None
    steps: list[dict[str, Any]]
    series: dict[str, list[Point]]
    copy_threshold: float

    @property
    def copying_starts(self) -> int | None:
        return copying_starts(self.series, self.copy_threshold)

    @property
    def diversity_drops(self) -> int | None:
        return diversity_drops(self.series.get(IRS_INF, []))

    def marks(self) -> dict[str, int | None]:
        return {"copying starts": self.copying_starts, "diversity drops": self.diversity_drops}


def chosen_dataset(evaluations: list[Evaluation], name: str, dataset_id: str | None) -> str | None:
    """The dataset the trajectory's jobs ran on: the one asked for, or the only one (422 otherwise)."""
    present = sorted({e.dataset_id for e in evaluations})
    if dataset_id is not None or len(present) <= 1:
        return dataset_id if dataset_id is not None else (present[0] if present else None)
    raise Invalid(
        f"run {name!r} has finished evaluations of this spec on {len(present)} datasets; choose one with "
        f"?dataset_id= (one of {', '.join(present)})",
        details={"dataset_ids": present},
    )


def trajectory(
    session: Session,
    project: Project,
    name: str,
    spec_hash: str | None,
    copy_threshold: float,
    dataset_id: str | None = None,
) -> RunTrajectory:
    """Per step, the headline numbers of the newest finished evaluation of the spec (and dataset) of that step's
    checkpoint."""
    checkpoints = run_checkpoints(session, project, name)
    evaluations = [
        e
        for e in evaluations_of(session, checkpoints)
        if e.status in FINISHED_WITH_RESULTS and e.results and dataset_id in (None, e.dataset_id)
    ]
    chosen = chosen_spec_hash(evaluations, name, spec_hash)
    of_spec = [e for e in evaluations if e.spec_hash == chosen]
    dataset = chosen_dataset(of_spec, name, dataset_id)
    newest: dict[str, Evaluation] = {}
    for evaluation in of_spec:  # oldest first: a later one replaces an earlier one
        if evaluation.dataset_id == dataset:
            newest[evaluation.checkpoint_id] = evaluation
    steps, numbers = [], []
    for checkpoint in checkpoints:
        job = newest.get(checkpoint.id)
        if job is None or job.results is None or checkpoint.step is None:
            continue
        steps.append(
            {"step": checkpoint.step, "checkpoint_id": checkpoint.id, "evaluation_id": job.id, "status": job.status}
        )
        numbers.append((checkpoint.step, headline_numbers(job.results)))
    return RunTrajectory(name, chosen, dataset, steps, trajectory_series(numbers), copy_threshold)
