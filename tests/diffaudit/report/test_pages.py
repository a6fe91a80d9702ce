"""The run and comparison pages: pure renderings of a trajectory and of a comparison."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

from diffaudit.metrics.trajectory import Point
from diffaudit.report import render_comparison_page, render_run_page

PNG = b"\x89PNG\r\n\x1a\nnot really"


class Tables(HTMLParser):
    """The text of every table's rows, cell by cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def rows_of(page: str) -> list[list[str]]:
    parser = Tables()
    parser.feed(page)
    return parser.rows


def test_the_run_page_embeds_the_plot_and_tabulates_the_steps_with_change_points_marked() -> None:
    steps = [
        {"step": 100, "checkpoint_id": "ck_a", "evaluation_id": "ev_a", "status": "succeeded"},
        {"step": 200, "checkpoint_id": "ck_b", "evaluation_id": "ev_b", "status": "rejected"},
    ]
    series = {
        "irs_inf": [Point(100, 0.45, 0.41, 0.5), Point(200, 0.2, 0.18, 0.22)],
        "copy_rate_pixels": [Point(200, 0.03)],
    }
    marks = {"copying starts": 200, "diversity drops": 200}
    page = render_run_page("r<1>", "abc", "digits", steps, series, marks, PNG)
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in page
    assert "r&lt;1&gt;" in page and "r<1>" not in page
    rows = rows_of(page)
    head = rows.index(["step", "checkpoint", "evaluation", "verdict", "irs_inf", "copy_rate_pixels", "change point"])
    assert rows[head + 1] == ["100", "ck_a", "ev_a", "succeeded", "0.45 [0.41, 0.5]", "none", ""]
    assert rows[head + 2] == [
        "200",
        "ck_b",
        "ev_b",
        "rejected",
        "0.2 [0.18, 0.22]",
        "0.03",
        "copying starts, diversity drops",
    ]
    assert ["copying starts", "200"] in rows and "<script" not in page


def test_a_run_without_finished_steps_says_so() -> None:
    page = render_run_page("r", None, None, [], {}, {"copying starts": None, "diversity drops": None}, PNG)
    assert "no finished evaluation of this spec yet" in page and ["copying starts", "none"] in rows_of(page)


def metric(name: str, verdict: str, difference: float) -> dict:
    return {
        "metric": name,
        "baseline": 0.5,
        "candidate": 0.5 + difference,
        "difference": difference,
        "interval": [difference - 0.01, difference + 0.01],
        "verdict": verdict,
        "higher_is_better": True,
        "error_rate": 0.05,
        "n_pairs": 256,
    }


def test_the_comparison_page_lists_worse_metrics_first() -> None:
    comparison = {
        "baseline_evaluation_id": "ev_a",
        "candidate_evaluation_id": "ev_b",
        "spec_hash": "abc",
        "dataset_id": "digits",
        "replicates": 1000,
        "seed": 0,
        "metrics": [
            metric("ds_rate", "better", 0.1),
            metric("nn_distance_pixels", "not distinguishable", 0.0),
            metric("irs_inf", "worse", -0.1),
        ],
    }
    page = render_comparison_page(comparison)
    rows = rows_of(page)
    head = rows.index(
        ["metric", "baseline", "candidate", "difference", "interval", "verdict", "higher is better", "pairs"]
    )
    assert [row[0] for row in rows[head + 1 : head + 4]] == ["irs_inf", "nn_distance_pixels", "ds_rate"]
    assert rows[head + 1] == ["irs_inf", "0.5", "0.4", "-0.1", "[-0.11, -0.09]", "worse", "yes", "256"]
    assert "1 of 3 metrics worse, 1 better, 1 not distinguishable" in page
    assert re.search(r'class="verdict rejected"', page) and ["error_rate", "0.05"] in rows
