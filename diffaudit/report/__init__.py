"""The report: one self-contained HTML page of a finished job (diffaudit.report.html)."""

from diffaudit.report.html import REPORT_KEY, JobFacts, render_report, store_report

__all__ = ["REPORT_KEY", "JobFacts", "render_report", "store_report"]
