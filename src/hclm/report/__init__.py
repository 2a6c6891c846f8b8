"""Render the plots and the Markdown and HTML report of a comparison run's output folder."""

from hclm.report.render import load_run_records, render_report

__all__ = ["load_run_records", "render_report"]
