"""GET /v1/runs/{name}/report and GET /v1/comparisons/report: the run and comparison pages over the API."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from test_comparisons import checkpoints, pair, submit  # noqa: F401 (fixtures)
from test_runs import STEPS, results, run_of, step_zips  # noqa: F401 (fixtures)

from app.evaluations import service as evaluations
from app.models import SUCCEEDED


def test_the_run_page_embeds_the_plot_and_marks_the_change_points(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    run_of: Callable[[str], list[str]],  # noqa: F811
) -> None:
    ids = run_of("paged")
    documents = [
        results((0.80, 0.75, 0.85), 0.0, 40),
        results((0.78, 0.72, 0.84), 0.005, 38),
        results((0.60, 0.55, 0.65), 0.02, 20),  # diversity drops and copying starts here
        results((0.58, 0.50, 0.66), 0.10, 10),
    ]
    jobs = [submit(client, auth, ck) for ck in ids]
    for job, document in zip(jobs, documents, strict=True):
        evaluations.finish(session, job, SUCCEEDED, results=document)
    response = client.get("/v1/runs/paged/report", headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert page.count("data:image/png;base64,") == 1
    assert all(job in page for job in jobs)
    assert f"<td>{STEPS[2]}</td>" in page and "copying starts, diversity drops" in page
    assert client.get("/v1/runs/missing/report", headers=auth).status_code == 404


def test_the_comparison_page_lists_worse_metrics_first(
    client: TestClient,
    auth: dict[str, str],
    pair: tuple[str, str],  # noqa: F811
) -> None:
    baseline, candidate = pair
    query = {"baseline_evaluation_id": baseline, "candidate_evaluation_id": candidate}
    response = client.get("/v1/comparisons/report", headers=auth, params=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "3 of 5 metrics worse, 1 better, 1 not distinguishable" in page
    order = [page.index(f"<td>{m}</td>") for m in ("irs_inf", "nn_distance_pixels", "ds_rate")]
    assert order == sorted(order)  # worse, then not distinguishable, then better
    same = client.get("/v1/comparisons/report", headers=auth, params={**query, "candidate_evaluation_id": baseline})
    assert same.status_code == 422 and "same evaluation" in same.json()["error"]["message"]
    bad = client.get("/v1/comparisons/report", headers=auth, params={"baseline_evaluation_id": baseline})
    assert bad.status_code == 422
