import io
from dataclasses import replace

import pytest
from rich.console import Console

from mosaic.core.config import TrackingCfg
from mosaic.core.trace import AggregationRecord, LoadRecord, RequestRecord
from mosaic.report.gantt import plot_gantt, segments
from mosaic.report.metrics import (
    RunMetrics,
    WorkerUsage,
    aggregation_summary,
    latency_summary,
    mean_ci,
    query_latencies,
    speedup,
    worker_usage,
)
from mosaic.report.table import comparison_table, paper_line, rows
from mosaic.report.tracking import Tracker, log_run

RECORDS = [
    LoadRecord("expert", 0, "a", 0.0, 10.0),
    RequestRecord("expert", 0, 0, "a", 0, 10.0, 20.0, 5, 5),
    RequestRecord("expert", 1, 1, "a", 0, 15.0, 25.0, 5, 5),  # overlaps the first: batched
    LoadRecord("expert", 0, "b", 25.0, 30.0),
    RequestRecord("expert", 2, 1, "b", 0, 30.0, 40.0, 5, 5),
    RequestRecord("expert", 3, 0, "b", 1, 0.0, 8.0, 5, 5),
    RequestRecord("aggregation", 0, 0, "b", 1, 40.0, 45.0, 5, 5),
    AggregationRecord(0, 0.5, False, "A", True),
    AggregationRecord(1, 1.0, True, "C", False),
]


def test_worker_usage_unions_batched_intervals():
    usage = worker_usage(RECORDS, [0, 1, 2], "expert", 0.0, 40.0)
    assert usage[0] == WorkerUsage(busy=25.0, loading=15.0, idle=0.0)
    assert usage[1] == WorkerUsage(busy=8.0, loading=0.0, idle=32.0)
    assert usage[2] == WorkerUsage(busy=0.0, loading=0.0, idle=40.0)


def test_mean_ci_is_a_student_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446 * 1.290994 / 2.0, rel=1e-5)  # t(0.975, 3) x sample std / sqrt(4)
    assert mean_ci([7.0]) == (7.0, 0.0)
    assert all(v != v for v in mean_ci([]))  # NaN, NaN


def test_aggregation_summary():
    assert aggregation_summary(RECORDS) == (1, 0.5, 0.5)
    assert aggregation_summary([]) == (0, 0.0, None)


def test_segments_merge_consecutive_requests_of_one_expert():
    segs = sorted(segments(RECORDS), key=lambda s: (s.stage, s.worker, s.start, s.loading))
    bars = [(s.worker, s.expert, s.start, s.end, s.loading) for s in segs if s.stage == "expert"]
    assert (0, "a", 10.0, 25.0, False) in bars and (0, "b", 30.0, 40.0, False) in bars
    assert (0, "a", 0.0, 10.0, True) in bars


def _metrics(name, expert, agg, predicted=None):
    w = {0: WorkerUsage(expert / 2, 1.0, expert / 2 - 1.0)}
    return RunMetrics(name, expert, agg, expert + agg, 50.0, predicted or expert, 10, 2, 3, 0.25, 0.8, w)


def test_table_speedups_against_baseline():
    ms = [_metrics("round-robin", 200.0, 40.0), _metrics("lpt", 100.0, 20.0, predicted=51.0)]
    r = rows(ms, "round-robin")
    assert r[0][2] == "1.00" and r[1][2] == "2.00" and r[1][6] == "2.00"
    assert r[1][7:10] == ["-", "-", "-"]  # no true lengths known: no true bound, gap or oracle
    assert r[1][10] == "50.0" and r[1][11] == "2.0"  # pred gap: predicted 51 s vs the predicted bound 50 s
    known = replace(ms[1], stats={"true_lb_s": 80.0, "oracle_s": 90.0})
    assert rows([ms[0], known], "round-robin")[1][7:10] == ["80.0", "25.0", "+11.1"]  # 100 s vs 80 s and vs 90 s
    out = io.StringIO()
    Console(file=out, width=250).print(comparison_table(ms, "round-robin", "t"))
    assert "speedup over round-robin" in out.getvalue()
    assert speedup(0.0, 0.0) == 1.0


def test_paper_line():
    assert "4.23x" in paper_line("medmcqa") and paper_line("custom") is None


def test_gantt_png(tmp_path):
    path = plot_gantt({"a": RECORDS, "b": RECORDS[:3]}, [0, 1, 2], tmp_path / "g.png", "title", [0.0, 3.0, 12.0])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_tracker_disabled_is_a_noop(tmp_path):
    t = Tracker(TrackingCfg(mode="disabled"), "x", {}, tmp_path)
    t.log_metrics({"a": 1.0})
    t.finish()
    assert t.directory is None and not any(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore")
def test_tracker_offline_writes_a_run_directory(tmp_path):
    t = Tracker(TrackingCfg(mode="offline"), "x", {"k": 1}, tmp_path)
    t.log_metrics({"m": 2.0, "skip": None})
    png = plot_gantt({"a": RECORDS}, [0, 1], tmp_path / "g.png")
    t.log_image("gantt", png)
    t.log_file("trace", png, kind="plot")
    t.log_file("trace-mosaic-ilp+steal", png)  # a scheduler name W&B would refuse as is
    directory = t.directory
    t.finish()
    assert directory is not None and directory.name.startswith("offline-run-")
    assert any(directory.glob("*.wandb"))


@pytest.mark.filterwarnings("ignore")
def test_log_run_records_tables_images_and_metrics(tmp_path):
    png = plot_gantt({"a": RECORDS}, [0, 1], tmp_path / "g.png")
    tables = {"rows": (["name", "value"], [["a", 1.0], ["b", 2.0]])}
    directory = log_run(TrackingCfg(mode="offline"), "x", {"k": 1}, tmp_path / "run", tables, {"plot": png},
                        {"score": 0.5})  # fmt: skip
    assert directory is not None and directory.name.startswith("offline-run-")
    files = directory / "files"
    assert [p.name.split("_")[0] for p in (files / "media" / "table").iterdir()] == ["rows"]
    assert any((files / "media" / "images").iterdir())
    assert log_run(TrackingCfg(mode="disabled"), "x", {}, tmp_path / "off", tables) is None
    assert not (tmp_path / "off").exists()


def test_query_latency_ends_at_the_aggregator_or_at_the_last_expert_when_skipped():
    recs = [
        RequestRecord("expert", 0, 0, "a", 0, 0.0, 3.0, 10, 5),
        RequestRecord("expert", 1, 0, "b", 1, 0.0, 4.0, 10, 5),
        AggregationRecord(0, 1.0, True, "A", True),  # skipped: done when its last expert is
        RequestRecord("expert", 2, 1, "a", 0, 5.0, 9.0, 10, 5),
        RequestRecord("aggregation", 0, 1, "agg", 1, 9.0, 12.0, 30, 5),
        AggregationRecord(1, 0.5, False, "B", False),
        RequestRecord("expert", 3, 2, "a", 0, 9.0, 10.0, 10, 5),  # no decision yet: left out
    ]
    lat = query_latencies(recs, [0.0, 5.0, 8.0])
    assert lat.tolist() == [4.0, 7.0]
    s = latency_summary(lat)
    assert s["mean"] == 5.5 and s["p50"] == 5.5 and abs(s["p99"] - 6.97) < 1e-9
    assert latency_summary(lat[:0]) == {}
