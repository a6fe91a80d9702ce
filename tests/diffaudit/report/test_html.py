"""The report page: verdict first, a section per stage with its numbers and every figure embedded, facts, timings."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from diffaudit.report import REPORT_KEY, JobFacts, render_report, store_report
from diffaudit.report.html import MAX_LIST_ITEMS, MAX_ROWS
from diffaudit.store import LocalStore, ScopedStore


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 6), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


FIGURES = {
    "sample/grid.png": png(10),
    "irs/distinct_curve.png": png(20),
    "memorization/pixels/nn_histogram.png": png(30),
    "brightness/bars.png": png(40),  # a stage the report module does not know
    "overview.png": png(50),  # at the top of the job's folder
}

RESULTS: dict[str, Any] = {
    "version": 1,
    "spec": {"version": 1, "stages": ["sample", "irs", "memorization", "brightness"], "sample": {"n": 64}},
    "stages": {
        "sample": {"headline": "64 samples with ddim", "n": 64, "seconds": 2.5},
        "irs": {
            "headline": "IRS_inf 0.22 [0.12, 0.49]: pass",
            "passed": True,
            "synthetic": {"irs_inf": 0.21835883171070933, "s_hat": 314},
            "per_class": [{"class": 0, "ratio": 1.25}, {"class": 1, "ratio": 0.5, "status": "under"}],
            "per_space": {"pixels": {"n": 1, "q": {"0.5": 2.0}}, "features": {"n": 3, "q": {"0.5": 4.0}}},
            "seconds": 1.25,
        },
        "memorization": {"spaces": {"pixels": {"extraction": {"n_flagged": 3, "threshold": None}}}, "seconds": 4.0},
        "brightness": {"headline": "mean pixel 101.2 against 99.0", "passed": True, "seconds": 0.5},
    },
}


class Page(HTMLParser):
    """The parts of the page the tests read: section ids in order, image sources, link and source URLs."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(str(values["id"]))
        if tag == "img":
            self.images.append(str(values["src"]))
        self.urls.extend(str(values[a]) for a in ("href", "src") if a in values)


def render(facts: JobFacts, results: Any, job: ScopedStore) -> str:
    """The page without the line-break hints of its keys (`<wbr>` after dots and underscores)."""
    return render_report(facts, results, job).replace("<wbr>", "")


@pytest.fixture()
def job(tmp_path: Path) -> ScopedStore:
    job = ScopedStore(LocalStore(tmp_path), "evaluations/ev_1")
    for key, data in FIGURES.items():
        job.put_bytes(key, data)
    job.put_bytes("memorization/pixels/nn_generated.npy", b"\x93NUMPY")
    return job


def test_verdict_first_then_a_section_per_stage_then_facts_and_timings(job: ScopedStore) -> None:
    facts = JobFacts("ev_1", "succeeded", checkpoint={"name": "demo"}, dataset={"name": "digits", "count": 1797})
    page = render(facts, RESULTS, job)
    assert Page(page).sections == [
        "verdict",
        "s-sample",
        "s-irs",
        "s-memorization",
        "s-brightness",
        "s-other",
        "s-spec",
        "s-checkpoint",
        "s-dataset",
        "timings",
        "files",
    ]
    verdict = page[: page.index('<section id="s-sample"')]
    assert "Succeeded" in verdict
    for name in ("sample", "irs", "brightness"):
        assert RESULTS["stages"][name]["headline"] in verdict


def test_every_figure_is_embedded_in_its_stage_section(job: ScopedStore) -> None:
    page = render(JobFacts("ev_1", "succeeded"), RESULTS, job)
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in Page(page).images]
    assert sorted(embedded) == sorted(FIGURES.values())
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))
    assert base64.b64encode(FIGURES["irs/distinct_curve.png"]).decode() in sections["s-irs"]
    assert base64.b64encode(FIGURES["brightness/bars.png"]).decode() in sections["s-brightness"]
    assert base64.b64encode(FIGURES["overview.png"]).decode() in sections["s-other"]


def test_the_page_needs_no_network(job: ScopedStore) -> None:
    page = render(JobFacts("ev_1", "succeeded"), RESULTS, job)
    parser = Page(page)
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert all(url.startswith(("#", "data:")) for url in parser.urls), parser.urls
    assert "<script" not in page and "<style>" in page  # no script; styles inline
    assert re.findall(r"<link [^>]*>", page) == ['<link rel="icon" href="data:,">']  # no favicon request
    assert "default-src 'none'" in page


def test_numbers_of_any_shape_are_tables(job: ScopedStore) -> None:
    page = render(JobFacts("ev_1", "succeeded"), RESULTS, job)
    irs = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))["s-irs"]
    assert "<th>synthetic.irs_inf</th><td>0.2184</td>" in irs  # nested mappings under dotted keys, 4 digits
    assert "<th>passed</th><td>yes</td>" in irs
    assert '<h4 class="table-name">per_class</h4>' in irs  # a list of rows is a table with a column per key
    assert "<th>class</th><th>ratio</th><th>status</th>" in irs
    assert "<td>under</td>" in irs
    assert '<h4 class="table-name">per_space</h4>' in irs  # a mapping of mappings is a table, a row per key
    assert "<th></th><th>n</th><th>q.0.5</th>" in irs and "<td>features</td><td>3</td><td>4</td>" in irs
    assert "spaces.pixels.extraction.n_flagged</th><td>3</td>" in page
    assert "<th>seconds</th>" not in irs  # seconds are in the timings


def test_long_lists_and_tables_are_shortened(job: ScopedStore) -> None:
    results = {
        "spec": {"stages": ["big"]},
        "stages": {"big": {"rows": [{"i": i} for i in range(MAX_ROWS + 50)], "values": list(range(100))}},
    }
    page = render(JobFacts("ev_1", "succeeded"), results, job)
    assert f"{MAX_ROWS} of {MAX_ROWS + 50} rows shown" in page
    assert f"<td>{MAX_ROWS - 1}</td>" in page and f"<td>{MAX_ROWS}</td>" not in page
    assert f"{MAX_LIST_ITEMS - 1} … (100 values)]" in page


def test_a_rejection_shows_its_reason_and_evidence_and_the_figures_drawn_before(job: ScopedStore) -> None:
    results = {
        "spec": {"stages": ["sample", "irs"]},
        "stages": {},
        "rejection": {"samples_drawn": 96, "distinct": 61, "after_rejection": {"memorization": {"n_copied": 7}}},
    }
    facts = JobFacts("ev_1", "rejected", error="early IRS rejection after 96 samples", stages=[{"name": "sample"}])
    page = render(facts, results, job)
    verdict = page[: page.index('<section id="s-sample"')]
    assert "Rejected" in verdict and "early IRS rejection after 96 samples" in verdict
    assert "<th>samples_drawn</th><td>96</td>" in verdict
    assert "<th>after_rejection.memorization.n_copied</th><td>7</td>" in verdict
    irs = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))["s-irs"]
    assert "no result" in irs and base64.b64encode(FIGURES["irs/distinct_curve.png"]).decode() in irs


def test_a_failed_job_shows_its_error_escaped_and_its_spec(tmp_path: Path) -> None:
    job = ScopedStore(LocalStore(tmp_path), "evaluations/ev_2")
    facts = JobFacts(
        "ev_2",
        "failed",
        error="stage sample: <script>alert(1)</script> lower batch_size",
        spec={"stages": ["sample"], "sample": {"n": 8}},
        stages=[{"name": "sample", "status": "failed", "seconds": None}],
        times={"created_at": "2026-01-01T12:00:00+00:00"},
    )
    page = render(facts, None, job)
    assert "Failed" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; lower batch_size" in page and "<script>" not in page
    assert "<th>sample.n</th><td>8</td>" in page  # the spec from the facts when there are no results
    assert "no result (stage failed)" in page
    assert "2026-01-01T12:00:00+00:00" in page


def test_timings_take_the_summary_seconds_and_sum_them(job: ScopedStore) -> None:
    page = render(JobFacts("ev_1", "succeeded"), RESULTS, job)
    timings = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))["timings"]
    assert "<td>irs</td><td>done</td><td>1.25</td>" in timings
    assert "<td>all stages</td><td></td><td>8.25</td>" in timings


def test_store_report_writes_the_page_into_the_job_folder(job: ScopedStore) -> None:
    page = store_report(JobFacts("ev_1", "succeeded"), RESULTS, job)
    assert job.get_bytes(REPORT_KEY).decode() == page
    again = render(JobFacts("ev_1", "succeeded"), RESULTS, job)
    assert "report.html" not in again  # the report is not one of the job's files it lists
    assert "memorization/pixels/nn_generated.npy" in again
