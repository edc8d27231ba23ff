"""The atlas report: a static HTML site and Markdown pages with plots, rendered from a results database."""

from .site import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
