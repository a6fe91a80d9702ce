"""The report: one self-contained HTML page of a finished job (diffaudit.report.html)."""

from diffaudit.report.html import REPORT_KEY, JobFacts, render_report, store_report
from diffaudit.report.pages import render_comparison_page, render_run_page

__all__ = ["REPORT_KEY", "JobFacts", "render_comparison_page", "render_report", "render_run_page", "store_report"]
