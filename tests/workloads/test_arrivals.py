"""Arrival processes: rates, burstiness, recorded traces, and their config and CLI forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic import cli
from mosaic.core.config import load_config
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.pipeline import prepare
from mosaic.workloads.arrivals import arrival_times, scaled_trace, trace_times


def _cv(t: np.ndarray) -> float:
    gaps = np.diff(np.concatenate([[0.0], t]))
    return float(gaps.std() / gaps.mean())


@pytest.mark.parametrize("process,cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 3.0)])
def test_renewal_processes_have_the_rate_and_burstiness_asked(process, cv):
    t = arrival_times(20_000, 2.0, np.random.default_rng(0), process, cv)
    assert (np.diff(t) >= 0).all()
    assert len(t) / t[-1] == pytest.approx(2.0, rel=0.05) and _cv(t) == pytest.approx(cv, rel=0.08)


def test_poisson_draws_as_before_for_the_same_seed():
    assert np.array_equal(arrival_times(50, 0.5, np.random.default_rng(3)),
                          np.cumsum(np.random.default_rng(3).exponential(2.0, 50)))  # fmt: skip


def _csv(tmp_path: Path, stamps: list[str]) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{s},10,5\n" for s in stamps))
    return path


def test_a_trace_keeps_its_shape_scaled_to_the_rate_and_repeats(tmp_path):
    path = _csv(
        tmp_path, ["2023-11-16 18:00:00.0000000", "2023-11-16 18:00:01.0000000", "2023-11-16 18:00:04.0000000"]
    )  # fmt: skip (gaps 1 s, 3 s: mean gap 2 s)
    assert trace_times(path).tolist() == [0.0, 1.0, 4.0]
    t = scaled_trace(trace_times(path), 7, rate=1.0)  # mean gap 1 s: everything halved; cycles one mean gap apart
    assert t.tolist() == pytest.approx([0.0, 0.5, 2.0, 3.0, 3.5, 5.0, 6.0])


def test_bad_traces_name_the_file_and_line(tmp_path):
    with pytest.raises(WorkloadError, match="line 3: not a date-time"):
        trace_times(_csv(tmp_path, ["2023-11-16 18:00:00", "yesterday"]))
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(WorkloadError, match="no TIMESTAMP column"):
        trace_times(tmp_path / "x.csv")
    with pytest.raises(WorkloadError, match="does not exist"):
        trace_times(tmp_path / "none.csv")


def test_the_azure_trace_drives_a_workload_at_the_target_rate(shared_data):
    csv = shared_data / "traces" / "azure_llm_2023_conv.csv"
    exp = prepare(load_config(None, ["workload.preset=gpqa", "workload.arrival_rate=0.5",
                                     "workload.arrival_process=trace", f"workload.arrival_trace={csv}"]))  # fmt: skip
    t = np.array([q.arrival for q in exp.workload.queries])
    assert t[0] == 0.0 and (np.diff(t) >= 0).all() and _cv(t[1:]) > 1.2  # the real trace is burstier than Poisson
    full = trace_times(csv)
    assert np.allclose(t, scaled_trace(full, len(t), 0.5))  # its first arrivals, on the trace's own time scale
    whole = scaled_trace(full, len(full), 0.5)
    assert (len(whole) - 1) / whole[-1] == pytest.approx(0.5)  # the whole trace at 0.5 queries/s


def test_config_and_cli_forms(tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs arrival_trace"):
        load_config(None, ["workload.arrival_rate=1", "workload.arrival_process=trace"])
    with pytest.raises(ConfigError, match="needs arrival_rate"):
        load_config(None, ["workload.arrival_process=gamma"])
    assert cli.arrival_overrides("gamma:0.8:2") == ["workload.arrival_rate=0.8", "workload.arrival_process=gamma",
                                                    "workload.arrival_cv=2"]  # fmt: skip
    assert cli.arrival_overrides("trace:1:C:/x.csv")[-1] == "workload.arrival_trace=C:/x.csv"
    out = tmp_path / "run"
    args = ["run", "--arrivals", "gamma:0.5:2", "--set", "workload.preset=gpqa", "--set", "workload.num_queries=20",
            "--set", "tracking.mode=disabled", "--out", str(out)]  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text("name: arrivals\n")
    assert cli.main([args[0], str(config), *args[1:]]) == 0
    assert "arrival_process: gamma" in (out / "config.yaml").read_text()
    assert cli.main(["run", str(config), "--arrivals", "poisson", "--out", str(tmp_path / "bad")]) == 2
    assert "--arrivals: expected offline" in capsys.readouterr().out and not (tmp_path / "bad").exists()
