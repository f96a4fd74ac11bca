"""Metrics, the comparison table, the Gantt chart and W&B tracking."""

from mosaic.report.metrics import RunMetrics, WorkerUsage, speedup, worker_usage
from mosaic.report.table import PAPER_FIGURES, comparison_table

__all__ = ["PAPER_FIGURES", "RunMetrics", "WorkerUsage", "comparison_table", "speedup", "worker_usage"]
