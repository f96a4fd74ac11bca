"""Arrival processes: when each query reaches the system (``workload.arrival_rate`` and ``arrival_process``).

- ``poisson``: exponential gaps of mean ``1 / rate``;
- ``gamma``: gamma gaps of mean ``1 / rate`` and coefficient of variation ``cv`` (bursty for ``cv > 1``; ``cv = 1``
  is Poisson in distribution);
- ``trace``: the arrival times of a recorded trace (a CSV with a ``TIMESTAMP`` column, such as the Azure LLM
  inference traces of 2023), time-scaled so that its mean rate is ``rate``; repeated end to end when the workload
  has more queries than the trace has requests.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import numpy as np

from mosaic.core.errors import WorkloadError

ARRIVAL_PROCESSES = ("poisson", "gamma", "trace")


def arrival_times(
    n: int, rate: float, rng: np.random.Generator, process: str = "poisson", cv: float = 1.0, trace: str | None = None
) -> np.ndarray:
    """``n`` arrival times (seconds, non-decreasing) of ``process`` at mean ``rate`` queries/s."""
    if process == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate, n))
    if process == "gamma":
        shape = 1.0 / (cv * cv)
        return np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), n))
    if process == "trace":
        if trace is None:
            raise WorkloadError("arrival process 'trace' needs workload.arrival_trace (a CSV with a TIMESTAMP column)")
        return scaled_trace(trace_times(trace), n, rate)
    raise WorkloadError(f"unknown arrival process {process!r}; valid: {', '.join(ARRIVAL_PROCESSES)}")


def trace_times(path: str | Path) -> np.ndarray:
    """Seconds since the first request of a CSV trace's ``TIMESTAMP`` column (ISO date-times), sorted."""
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"arrival trace {p} does not exist")
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "TIMESTAMP" not in (reader.fieldnames or ()):
            raise WorkloadError(f"arrival trace {p}: no TIMESTAMP column (columns: {reader.fieldnames})")
        stamps = []
        for line, row in enumerate(reader, start=2):
            try:
                stamps.append(datetime.fromisoformat(row["TIMESTAMP"].strip()[:26]).timestamp())
            except ValueError:
                raise WorkloadError(f"arrival trace {p}: line {line}: not a date-time: {row['TIMESTAMP']!r}") from None
    if len(stamps) < 2:
        raise WorkloadError(f"arrival trace {p} needs at least two requests, has {len(stamps)}")
    t = np.sort(np.asarray(stamps))
    return t - t[0]


def scaled_trace(times: np.ndarray, n: int, rate: float) -> np.ndarray:
    """The first ``n`` arrivals of ``times`` (repeated end to end, one mean gap apart) scaled to mean ``rate``."""
    span = float(times[-1])
    if span <= 0:
        raise WorkloadError("arrival trace: every request has the same timestamp; no rate to scale")
    gap = span / (len(times) - 1)
    reps = -(-n // len(times))
    tiled = np.concatenate([times + k * (span + gap) for k in range(reps)])[:n]
    return tiled * (1.0 / gap) / rate
