"""Pages for a training run and for a comparison, in the job report's page template (diffaudit.report.html).

The run page: its trajectory plot embedded, then a table of the checkpoints by step with their evaluation's verdict
(status) and headline numbers, the steps where copying starts or diversity drops marked. The comparison page: per
metric the candidate minus the baseline, its paired bootstrap interval and the verdict, worse ones first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from diffaudit.metrics.trajectory import Point
from diffaudit.report.html import cell, html_table, page_html, pairs_table, png_figure, section

VERDICT_ORDER = {"worse": 0, "not distinguishable": 1, "better": 2}


def _interval(point: Point) -> str:
    if point.lower is None or point.upper is None:
        return cell(point.value)
    return f"{cell(point.value)} [{cell(point.lower)}, {cell(point.upper)}]"


def run_rows(
    steps: Sequence[Mapping[str, Any]], series: Mapping[str, Sequence[Point]], marks: Mapping[str, int | None]
) -> list[dict[str, str]]:
    """One row per step: step, checkpoint, evaluation, verdict, each headline number (with its interval) and the
    change points at that step. Cells are HTML."""
    by_step = {name: {p.step: p for p in points} for name, points in series.items()}
    rows = []
    for step in steps:
        at = int(step["step"])
        marked = [name for name, where in marks.items() if where == at]
        row = {
            "step": str(at),
            "checkpoint": escape(str(step["checkpoint_id"])),
            "evaluation": escape(str(step["evaluation_id"])),
            "verdict": escape(str(step["status"])),
            **{name: _interval(points[at]) if at in points else cell(None) for name, points in by_step.items()},
            "change point": f'<span class="mark">{escape(", ".join(marked))}</span>' if marked else "",
        }
        rows.append(row)
    return rows


def _table(rows: Sequence[Mapping[str, str]]) -> str:
    return html_table(list(rows[0]), [list(row.values()) for row in rows])


def render_run_page(
    run: str,
    spec_hash: str | None,
    dataset_id: str | None,
    steps: Sequence[Mapping[str, Any]],
    series: Mapping[str, Sequence[Point]],
    marks: Mapping[str, int | None],
    plot_png: bytes,
) -> str:
    """The page of a training run: facts, change points, the trajectory plot, the table of its steps."""
    facts = [("run", escape(run)), ("spec_hash", cell(spec_hash)), ("dataset_id", cell(dataset_id))]
    facts += [(name, cell(step)) for name, step in marks.items()]
    rows = run_rows(steps, series, marks)
    table = _table(rows) if rows else '<p class="note">no finished evaluation of this spec yet</p>'
    return page_html(
        f"diffaudit run {run}",
        [
            section("run", "Run", pairs_table(facts)),
            section("trajectory", "Trajectory", png_figure(plot_png, f"{run}: headline numbers over the steps")),
            section("steps", "Checkpoints by step", table),
        ],
    )


def comparison_rows(metrics: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Per metric (worse first, then not distinguishable, then better): both values, the difference and interval,
    the verdict, the pairs."""
    ordered = sorted(metrics, key=lambda m: VERDICT_ORDER.get(str(m["verdict"]), len(VERDICT_ORDER)))
    return [
        {
            "metric": escape(str(m["metric"])),
            "baseline": cell(m["baseline"]),
            "candidate": cell(m["candidate"]),
            "difference": cell(m["difference"]),
            "interval": f"[{cell(m['interval'][0])}, {cell(m['interval'][1])}]",
            "verdict": _verdict_html(str(m["verdict"])),
            "higher is better": cell(m["higher_is_better"]),
            "pairs": cell(m["n_pairs"]),
        }
        for m in ordered
    ]


def _verdict_html(verdict: str) -> str:
    """A comparison verdict, coloured by its class (worse, better)."""
    return f'<span class="{escape(verdict.replace(" ", "-"))}">{escape(verdict)}</span>'


def render_comparison_page(comparison: Mapping[str, Any]) -> str:
    """The page of a comparison (POST /v1/comparisons' answer): a verdict line, the facts, the table of metrics."""
    metrics = comparison["metrics"]
    counts = {v: sum(m["verdict"] == v for m in metrics) for v in VERDICT_ORDER}
    worse = counts["worse"]
    status = "rejected" if worse else "succeeded"
    lead = (
        f"{worse} of {len(metrics)} metrics worse, {counts['better']} better, "
        f"{counts['not distinguishable']} not distinguishable"
    )
    error_rate = metrics[0]["error_rate"] if metrics else None
    facts = [
        (key, cell(comparison.get(key)))
        for key in (
            "baseline_evaluation_id",
            "candidate_evaluation_id",
            "spec_hash",
            "dataset_id",
            "replicates",
            "seed",
        )
    ]
    facts.append(("error_rate", cell(error_rate)))
    return page_html(
        f"diffaudit comparison: {comparison['candidate_evaluation_id']} vs {comparison['baseline_evaluation_id']}",
        [
            section("verdict", "Verdict", f'<p class="verdict {status}"><strong>{escape(lead)}</strong></p>'),
            section(
                "metrics", "Metrics (candidate minus baseline)", _table(comparison_rows(metrics)) if metrics else ""
            ),
            section("facts", "Comparison", pairs_table(facts)),
        ],
    )
