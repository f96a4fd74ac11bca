"""Gantt chart of workers over time: one colour per expert, model loads hatched, stages separated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from mosaic.core.trace import AGGREGATION_STAGE, LoadRecord, Record, RequestRecord


@dataclass(frozen=True, slots=True)
class Segment:
    """One bar: a worker serving (or loading) one expert from start to end."""

    worker: int
    expert: str
    start: float
    end: float
    stage: str
    loading: bool


def segments(records: Sequence[Record]) -> list[Segment]:
    """Bars of a run: consecutive requests of one expert on one worker merge into one bar."""
    out = [Segment(r.worker, r.expert, r.start, r.end, r.stage, True) for r in records if isinstance(r, LoadRecord)]
    by_worker: dict[tuple[int, str], list[RequestRecord]] = {}
    for r in records:
        if isinstance(r, RequestRecord):
            by_worker.setdefault((r.worker, r.stage), []).append(r)
    for (w, stage), reqs in by_worker.items():
        reqs.sort(key=lambda r: (r.start, r.end))
        cur: list[RequestRecord] = []
        for r in reqs:
            if cur and r.expert != cur[-1].expert:
                out.append(Segment(w, cur[0].expert, cur[0].start, max(x.end for x in cur), stage, False))
                cur = []
            cur.append(r)
        if cur:
            out.append(Segment(w, cur[0].expert, cur[0].start, max(x.end for x in cur), stage, False))
    return out


def expert_colours(names: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(sorted(set(names)))}


def _draw(ax, segs: list[Segment], colours: Mapping[str, tuple], workers: Sequence[int], title: str) -> None:
    for s in segs:
        y = workers.index(s.worker) if s.worker in workers else s.worker
        c = colours[s.expert]
        if s.loading:
            ax.barh(y, s.end - s.start, left=s.start, color="white", edgecolor=c, hatch="////", height=0.7, lw=1)
        else:
            alpha = 0.55 if s.stage == AGGREGATION_STAGE else 1.0
            ax.barh(y, s.end - s.start, left=s.start, color=c, alpha=alpha, height=0.7, edgecolor="black", lw=0.3)
    agg_starts = [s.start for s in segs if s.stage == AGGREGATION_STAGE]
    if agg_starts:
        ax.axvline(min(agg_starts), color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(workers)), [f"GPU {w}" for w in workers])
    ax.set_ylim(len(workers) - 0.5, -0.5)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)


def plot_gantt(runs: Mapping[str, Sequence[Record]], workers: Sequence[int], path: str | Path, title: str = "",
               arrivals: Sequence[float] | None = None) -> Path:  # fmt: skip
    """One panel per run (scheduler name -> its trace records), shared time axis; writes a PNG. ``arrivals``: the
    queries' arrival times, drawn as ticks above the workers (online workloads)."""
    segs = {name: segments(recs) for name, recs in runs.items()}
    colours = expert_colours([s.expert for ss in segs.values() for s in ss] or ["-"])
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(11, 0.5 + len(runs) * (0.45 * len(workers) + 0.8)), sharex=True, squeeze=False
    )
    for ax, (name, ss) in zip(axes[:, 0], segs.items(), strict=True):
        end = max((s.end for s in ss), default=0.0)
        _draw(ax, ss, colours, list(workers), f"{name}  (end-to-end {end:,.0f} s)")
        if arrivals is not None and len(arrivals) and max(arrivals) > 0:
            ax.plot(arrivals, [-0.45] * len(arrivals), "|", color="black", ms=5, alpha=0.35)
            ax.set_ylim(len(workers) - 0.5, -0.7)
    online = " ; ticks on top: query arrivals" if arrivals is not None and len(arrivals) and max(arrivals) > 0 else ""
    axes[-1, 0].set_xlabel("time (s)   — hatched: model load; faded: aggregation (the dashed line: its first "
                           f"start){online}")  # fmt: skip
    handles = [Patch(color=c, label=n) for n, c in colours.items()]
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 7),
               fontsize=8, frameon=False)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
