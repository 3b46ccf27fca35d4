"""Self-contained HTML reports from MLflow data: `retrain` (the entry point `write_report` and a retrain's
tables, panels and reliability), `images` (one test image across methods, the worst-first table of test
images), `sweep` (a sweep's Pareto front, parameters and ASHA stops), `html` (page,
tables, embedded figures, artifacts), `figures` (the sweep figures)."""

from .retrain import WrittenReport, write_report

__all__ = ["WrittenReport", "write_report"]
