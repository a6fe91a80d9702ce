"""One self-contained HTML page of a finished job: verdict and evidence, then a section per stage with its headline,
its numbers as tables and every figure it stored (PNG embedded as data URIs), then the spec, the checkpoint and
dataset facts and the timings.

The page needs no network (no external CSS, fonts or scripts; a Content-Security-Policy says so to the browser) and
reads at phone width. Stage summaries are rendered generically, whatever their shape (nested dicts, lists of rows,
numbers, strings), so a new stage appears in the report without a change here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from diffaudit.store import ArtifactStore

REPORT_KEY = "report.html"  # where the report is stored in the job's folder
MAX_ROWS = 200  # rows shown of one table (a list of rows); the rest are counted
MAX_LIST_ITEMS = 24  # values shown of one list of numbers or strings; the rest are counted
SKIPPED_KEYS = ("headline", "seconds")  # shown elsewhere in a stage's section

Row = tuple[str, str]  # (label, cell HTML)


@dataclass(frozen=True)
class JobFacts:
    """What the report says about a job besides its results document.

    `stages` holds one mapping per stage row (name, status, seconds, started_at, finished_at) when the job ran under
    the service; `times` the job's created_at / started_at / finished_at; `spec` the job's spec, used when the job
    has no results (a failed job)."""

    evaluation_id: str
    status: str
    error: str | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    stages: Sequence[Mapping[str, Any]] = ()
    times: Mapping[str, Any] = field(default_factory=dict)


def store_report(facts: JobFacts, results: Mapping[str, Any] | None, job: ArtifactStore) -> str:
    """Render the report of the job whose folder is `job` and store it there as REPORT_KEY; returns the HTML."""
    page = render_report(facts, results, job)
    job.put_bytes(REPORT_KEY, page.encode())
    return page


def render_report(facts: JobFacts, results: Mapping[str, Any] | None, job: ArtifactStore) -> str:
    """The report page of one job: `results` is its results document (None when it has none), `job` its folder."""
    results = results or {}
    summaries: Mapping[str, Any] = results.get("stages") or {}
    spec: Mapping[str, Any] = results.get("spec") or facts.spec
    keys = job.list()
    figures = figures_by_section(keys)
    names = section_names(spec.get("stages") or [], summaries, figures)
    rows = {str(row.get("name")): row for row in facts.stages}
    body = [
        verdict_section(facts, results, summaries, names),
        *(stage_section(name, summaries.get(name), rows.get(name), figures.get(name, []), job) for name in names),
        facts_section("Spec", spec, raw=True),
        facts_section("Checkpoint", facts.checkpoint),
        facts_section("Dataset", facts.dataset),
        timings_section(facts, summaries, names),
        files_section(keys),
    ]
    return page_html(f"diffaudit report: evaluation {facts.evaluation_id} ({facts.status})", body)


def page_html(title: str, sections: Iterable[str]) -> str:
    """A whole self-contained page: the title, then the non-empty sections, with the report's CSS."""
    return PAGE.format(title=escape(title), css=CSS, body="\n".join(part for part in sections if part))


def figures_by_section(keys: Iterable[str]) -> dict[str, list[str]]:
    """The PNG keys of a job's folder grouped by their first folder (the stage that stored them; '' at the top)."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        if key.lower().endswith(".png"):
            folder = key.split("/", 1)[0] if "/" in key else ""
            groups.setdefault(folder, []).append(key)
    return groups


def section_names(spec_stages: Iterable[str], summaries: Mapping[str, Any], figures: Mapping[str, Any]) -> list[str]:
    """The sections in order: the spec's stages, then stages with a summary outside the spec, then folders with
    figures (a stage that stored figures before it was rejected, or one this module does not know)."""
    names: list[str] = []
    for name in [*spec_stages, *summaries, *figures]:
        if name not in names:
            names.append(name)
    return names


# --- sections --------------------------------------------------------------------------------------------------


def verdict_section(
    facts: JobFacts, results: Mapping[str, Any], summaries: Mapping[str, Any], names: Sequence[str]
) -> str:
    """The outcome first: what ended the job, the rejection's evidence or the error, each stage's headline."""
    status = facts.status
    lead = {
        "succeeded": "Succeeded: every requested stage finished.",
        "rejected": "Rejected: the checkpoint failed a gate.",
        "failed": "Failed: the job stopped with an error.",
        "cancelled": "Cancelled before it finished.",
    }.get(status, f"Not finished ({status}).")
    parts = [f'<p class="verdict {escape(status)}"><strong>{escape(lead)}</strong></p>']
    if facts.error:
        label = "Reason" if status == "rejected" else "Error"
        parts.append(f'<p class="error"><strong>{label}:</strong> {escape(facts.error)}</p>')
    headlines = [(name, summaries[name]["headline"]) for name in names if _headline(summaries.get(name))]
    if headlines:
        items = "".join(f'<li><a href="#{_anchor(n)}">{escape(n)}</a>: {escape(str(h))}</li>' for n, h in headlines)
        parts.append(f'<ul class="headlines">{items}</ul>')
    if "rejection" in results:
        parts.append("<h3>Rejection evidence</h3>")
        parts.append(value_html(results["rejection"]))
    return section("verdict", "Verdict", "\n".join(parts))


def stage_section(
    name: str,
    summary: Any,
    row: Mapping[str, Any] | None,
    figures: Sequence[str],
    job: ArtifactStore,
) -> str:
    """One stage: its headline, its numbers as tables, every figure it stored."""
    title = name or "Other figures"
    parts = []
    if _headline(summary):
        parts.append(f'<p class="headline">{escape(str(summary["headline"]))}</p>')
    if summary is None:
        state = row.get("status") if row else None
        note = f"no result (stage {state})" if state else "no result"
        parts.append(f'<p class="note">{escape(note)}</p>')
    elif isinstance(summary, Mapping):
        numbers = {k: v for k, v in summary.items() if k not in SKIPPED_KEYS}
        if numbers:
            parts.append(value_html(numbers))
    else:
        parts.append(value_html(summary))
    parts.extend(figure_html(key, job) for key in figures)
    return section(_anchor(name), title, "\n".join(parts))


def facts_section(title: str, facts: Mapping[str, Any], raw: bool = False) -> str:
    """A table of facts (spec, checkpoint, dataset); with `raw`, also the JSON to copy."""
    if not facts:
        return ""
    parts = [value_html(dict(facts))]
    if raw:
        text = escape(json.dumps(facts, indent=2, sort_keys=True, default=str))
        parts.append(f"<details><summary>as JSON</summary><pre>{text}</pre></details>")
    return section(_anchor(title.lower()), title, "\n".join(parts))


def timings_section(facts: JobFacts, summaries: Mapping[str, Any], names: Sequence[str]) -> str:
    """Seconds each stage computed (the stored summary's, else the stage row's), and the job's times."""
    rows = {str(row.get("name")): row for row in facts.stages}
    table = []
    total = 0.0
    for name in names:
        summary, row = summaries.get(name), rows.get(name, {})
        seconds = summary.get("seconds") if isinstance(summary, Mapping) else None
        seconds = row.get("seconds") if seconds is None else seconds
        if seconds is None and not row:
            continue
        total += float(seconds or 0.0)
        status = row.get("status") or ("done" if summary is not None else "")
        table.append({"stage": name, "status": status, "seconds": seconds})
    if not table and not facts.times:
        return ""
    parts = []
    if table:
        table.append({"stage": "all stages", "status": "", "seconds": round(total, 3)})
        parts.append(rows_table(table))
    if facts.times:
        parts.append(value_html(dict(facts.times)))
    return section("timings", "Timings", "\n".join(parts))


def files_section(keys: Sequence[str]) -> str:
    """The job's other files (arrays, CSV, zips), by name: download them from the artifacts endpoint."""
    others = [k for k in keys if not k.lower().endswith(".png") and k != REPORT_KEY]
    if not others:
        return ""
    items = "".join(f"<li><code>{escape(k)}</code></li>" for k in others)
    return section("files", "Other files of the job", f'<ul class="files">{items}</ul>')


def figure_html(key: str, job: ArtifactStore) -> str:
    """A stored PNG embedded as a data URI, captioned with its key."""
    return png_figure(job.get_bytes(key), key)


def png_figure(png: bytes, caption: str) -> str:
    """PNG bytes embedded as a data URI, captioned."""
    data = base64.b64encode(png).decode("ascii")
    text = escape(caption)
    return (
        f'<figure id="{_anchor(caption)}"><img src="data:image/png;base64,{data}" alt="{text}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


# --- values -------------------------------------------------------------------------------------------------------


def value_html(value: Any) -> str:
    """Any JSON value as HTML: a mapping as a table of its (dotted) scalar entries followed by a table per list of
    rows it holds; a list of rows as a table; anything else as text."""
    if isinstance(value, Mapping):
        scalars, tables = flatten(value)
        parts = [pairs_table(scalars)] if scalars else []
        for name, rows in tables:
            parts.append(f'<h4 class="table-name">{escape(name)}</h4>{rows_table(rows)}')
        return "\n".join(parts)
    if _is_rows(value):
        return rows_table(value)
    return f"<p>{cell(value)}</p>"


def flatten(value: Mapping[str, Any], prefix: str = "") -> tuple[list[Row], list[tuple[str, list[Any]]]]:
    """Scalar entries of a nested mapping under dotted keys, and its lists of rows (mappings) under theirs."""
    scalars: list[Row] = []
    tables: list[tuple[str, list[Any]]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        keyed = keyed_rows(item)
        if keyed is not None:
            tables.append((name, keyed))
        elif isinstance(item, Mapping) and item:
            inner_scalars, inner_tables = flatten(item, f"{name}.")
            scalars.extend(inner_scalars)
            tables.extend(inner_tables)
        elif _is_rows(item):
            tables.append((name, list(item)))
        else:
            scalars.append((name, cell(item)))
    return scalars, tables


def keyed_rows(value: Any) -> list[dict[str, Any]] | None:
    """A mapping of two or more mappings holding no lists of rows (per class, per space) as rows: a first column
    with each key, then each mapping's entries under dotted keys; None for anything else."""
    if not isinstance(value, Mapping) or len(value) < 2:
        return None
    if not all(isinstance(item, Mapping) and item for item in value.values()):
        return None
    rows = []
    for key, item in value.items():
        entries = _scalar_entries(item)
        if entries is None:
            return None
        rows.append({"": key, **entries})
    return rows


def _scalar_entries(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any] | None:
    """The entries of a nested mapping under dotted keys; None if it holds a list of rows."""
    entries: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping) and item:
            inner = _scalar_entries(item, f"{prefix}{key}.")
            if inner is None:
                return None
            entries.update(inner)
        elif _is_rows(item):
            return None
        else:
            entries[f"{prefix}{key}"] = item
    return entries


def pairs_table(rows: Sequence[Row]) -> str:
    body = "".join(f"<tr><th>{_key_html(k)}</th><td>{v}</td></tr>" for k, v in rows[:MAX_ROWS])
    return _scroll(f'<table class="pairs">{body}</table>{_more(len(rows), "entries")}')


def rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A list of mappings as one table, a column per key (in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return html_table([str(c) for c in columns], [[cell(row.get(c)) for c in columns] for row in rows])


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of cells that are already HTML, under a head of column names (MAX_ROWS rows shown)."""
    head = "".join(f"<th>{_key_html(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows[:MAX_ROWS])
    return _scroll(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{_more(len(rows), 'rows')}")


def cell(value: Any) -> str:
    """One value in a table cell: numbers at 4 significant digits, lists shortened, nested values as JSON."""
    if value is None:
        return '<span class="none">none</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, Sequence) and all(not isinstance(v, (Mapping, list, tuple)) for v in value):
        shown = ", ".join(cell(v) for v in value[:MAX_LIST_ITEMS])
        rest = f" … ({len(value)} values)" if len(value) > MAX_LIST_ITEMS else ""
        return f"[{shown}{rest}]" if value else "[]"
    return f"<code>{escape(json.dumps(value, sort_keys=True, default=str))}</code>"


def _key_html(name: str) -> str:
    """A (dotted) key that may wrap after its dots and underscores, not inside its words."""
    return escape(name).replace(".", ".<wbr>").replace("_", "_<wbr>")


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _headline(summary: Any) -> bool:
    return isinstance(summary, Mapping) and bool(summary.get("headline"))


def _more(count: int, what: str) -> str:
    return f'<p class="note">{MAX_ROWS} of {count} {what} shown</p>' if count > MAX_ROWS else ""


def _scroll(table: str) -> str:
    return f'<div class="scroll">{table}</div>'


def _anchor(name: str) -> str:
    """An element id for a section or figure name ('' is the section of the figures outside a stage's folder)."""
    return "s-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or "other"))


def section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{content}\n</section>'


CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:12px;color:#1b1b1b;background:#fff}
h1{font-size:1.35em;overflow-wrap:anywhere}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px}
h4.table-name{margin:14px 0 4px;font-size:.95em;font-family:ui-monospace,monospace;overflow-wrap:anywhere}
section{margin-bottom:28px}
.verdict{padding:10px 12px;border-radius:6px;background:#eee}
.verdict.succeeded{background:#e3f4e3}.verdict.rejected{background:#fdecd2}.verdict.failed{background:#fbe0e0}
.worse{background:#fbe0e0}.better{background:#e3f4e3}.mark{font-weight:600;color:#a33}
.error{overflow-wrap:anywhere}.headline{font-weight:600}.note,.none{color:#666}
.scroll{max-width:100%;overflow-x:auto;margin:6px 0}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
table.pairs th,table.pairs td{overflow-wrap:break-word;word-break:break-word}
table.pairs th{min-width:9em;font-weight:500;font-family:ui-monospace,monospace;background:#f7f7f7}
thead th{background:#f2f2f2}
code,pre{font-family:ui-monospace,monospace;font-size:.85em;overflow-wrap:anywhere;word-break:break-word}
pre{white-space:pre-wrap;background:#f7f7f7;padding:8px}
figure{margin:12px 0}figure img{max-width:100%;height:auto;image-rendering:pixelated;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;font-family:ui-monospace,monospace;overflow-wrap:anywhere}
ul{padding-left:1.2em}li{overflow-wrap:anywhere}
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""
