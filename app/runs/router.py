"""Runs: checkpoints uploaded with a run name and training step, and the run's headline numbers over its steps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import HTMLResponse

from app.auth import CurrentProject
from app.dependencies import SessionDep
from app.errors import COMMON_RESPONSES, NOT_FOUND_RESPONSE
from app.evaluations.router import REPORT_HEADERS
from app.pagination import PageDep
from app.runs import service
from app.runs.schemas import RunDetail, RunPage, Trajectory
from diffaudit.metrics.trajectory import COPY_RATE_THRESHOLD
from diffaudit.plots.trajectory import trajectory_png
from diffaudit.report import render_run_page

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=COMMON_RESPONSES)

SpecHashQuery = Annotated[
    str | None,
    Query(max_length=64, description="spec of the evaluations compared; needed when the run has several"),
]
DatasetQuery = Annotated[
    str | None, Query(max_length=64, description="dataset of the evaluations; needed when they ran on several")
]
CopyThresholdQuery = Annotated[
    float, Query(ge=0, le=1, description="copying starts at the first step whose copy rate exceeds this")
]


def found_trajectory(
    name: str,
    project: CurrentProject,
    session: SessionDep,
    spec_hash: SpecHashQuery = None,
    copy_threshold: CopyThresholdQuery = COPY_RATE_THRESHOLD,
    dataset_id: DatasetQuery = None,
) -> service.RunTrajectory:
    """The run's trajectory for the query every trajectory endpoint takes (a dependency of the three)."""
    return service.trajectory(session, project, name, spec_hash, copy_threshold, dataset_id)


TrajectoryDep = Annotated[service.RunTrajectory, Depends(found_trajectory)]


@router.get(
    "",
    summary="List this project's training runs, by name",
    description="Paginated with `limit` (1-200, default 50) and `offset`; a run is every checkpoint uploaded "
    "with its name (`run` and `step` on POST /v1/checkpoints).",
    response_model=RunPage,
)
def list_runs(project: CurrentProject, session: SessionDep, page: PageDep) -> RunPage:
    items, total = service.list_runs(session, project, page)
    return RunPage.of(items, total, page)


@router.get(
    "/{name}",
    summary="A run's checkpoints by step, with their evaluations",
    response_model=RunDetail,
    responses=NOT_FOUND_RESPONSE,
)
def get_run(name: str, project: CurrentProject, session: SessionDep) -> RunDetail:
    return RunDetail.model_validate(service.get_run(session, project, name).as_dict(), from_attributes=True)


def _trajectory_out(found: service.RunTrajectory, plot: str) -> Trajectory:
    return Trajectory.model_validate(
        {
            "run": found.run,
            "spec_hash": found.spec_hash,
            "dataset_id": found.dataset_id,
            "steps": found.steps,
            "series": {name: [p.to_dict() for p in points] for name, points in found.series.items()},
            "copy_threshold": found.copy_threshold,
            "copying_starts": found.copying_starts,
            "diversity_drops": found.diversity_drops,
            "plot": plot,
        }
    )


@router.get(
    "/{name}/trajectory",
    summary="Every headline number of the run per step, for the evaluations of one spec",
    description="IRS_inf with bounds, copy rate per space, volume-growth mean and median, DS count, and the FID "
    "family when the distribution stage ran, from the newest finished (succeeded or rejected) evaluation of the "
    "spec of each step's checkpoint; with the step where copying starts and where diversity drops. Without "
    "`spec_hash`, the run's evaluations must share one spec (a 422 lists them otherwise), and without `dataset_id` "
    "that spec's evaluations one dataset (likewise).",
    response_model=Trajectory,
    responses=NOT_FOUND_RESPONSE,
)
def get_trajectory(found: TrajectoryDep) -> Trajectory:
    query = (
        f"?spec_hash={found.spec_hash}&dataset_id={found.dataset_id}&copy_threshold={found.copy_threshold}"
        if found.spec_hash
        else ""
    )
    return _trajectory_out(found, f"{router.prefix}/{found.run}/trajectory.png{query}")


@router.get(
    "/{name}/trajectory.png",
    summary="The trajectory's plot: one panel per number over the steps, change points marked",
    response_class=Response,
    responses={**NOT_FOUND_RESPONSE, 200: {"content": {"image/png": {}}, "description": "PNG"}},
)
def get_trajectory_png(found: TrajectoryDep) -> Response:
    return Response(trajectory_png(found.series, found.marks()), media_type="image/png")


@router.get(
    "/{name}/report",
    summary="The run's page: its trajectory plot and its checkpoints by step with verdicts, as one HTML page",
    description="The trajectory (same query as GET /v1/runs/{name}/trajectory) as a self-contained page: the plot "
    "embedded, then per step the checkpoint, its evaluation's status and headline numbers, change points marked.",
    response_class=Response,  # errors are documented as JSON, the page as HTML
    responses={**NOT_FOUND_RESPONSE, 200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
def get_run_report(found: TrajectoryDep) -> HTMLResponse:
    plot = trajectory_png(found.series, found.marks())
    page = render_run_page(found.run, found.spec_hash, found.dataset_id, found.steps, found.series, found.marks(), plot)
    return HTMLResponse(page, headers=REPORT_HEADERS)
