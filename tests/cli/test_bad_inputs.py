"""Bad inputs through the ``mosaic`` command: exit 2, one message naming what is wrong, and no run folder left (or
one marked failed when the run broke after it started)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mosaic import cli
from mosaic.core.errors import MosaicError
from mosaic.core.trace import RequestRecord, TraceWriter
from mosaic.predictors.length_data import toy, write_rows_jsonl
from mosaic.runtime.sim import SimBackend

REPO = Path(__file__).resolve().parents[2]
GPQA = str(REPO / "experiments" / "configs" / "gpqa.yaml")
SMALL = ["--set", "workload.num_queries=12", "--set", "tracking.mode=disabled"]
FIXED = "scheduler_options.mosaic-ilp-fixed.placement"


def _say(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().out.split())


def _run(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "run"
    return cli.main(["run", GPQA, *SMALL, "--out", str(out), *args]), out


def _rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    write_rows_jsonl(toy(30, np.random.default_rng(0)), path)
    return path


def test_predictor_train_on_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    path = _rows(tmp_path)
    lines = path.read_text().splitlines()
    lines[4] = lines[4][:25]  # a broken line in the middle
    path.write_text("\n".join(lines) + "\n")
    model = tmp_path / "m.json"
    assert cli.main(["predictor", "train", "--data", str(path), "--kind", "linear", "--out", str(model)]) == 2
    assert f"{path}: line 5 is not valid JSON" in _say(capsys) and not model.exists()


@pytest.mark.parametrize("kind", ["rows", "trace"])
def test_torn_last_line_warns_with_file_and_line_and_strict_refuses(tmp_path, capsys, kind):
    if kind == "rows":
        path = _rows(tmp_path)
    else:
        path = tmp_path / "t.jsonl"
        with TraceWriter(path, meta={"scheduler": "x"}) as w:
            for i in range(20):
                w.write(RequestRecord("expert", i, i // 2, f"e{i % 2}", 0, 0.0, 1.0, 10 + i, 50 + 7 * i))
    n = len(path.read_text().splitlines())
    with path.open("a") as fh:
        fh.write('{"query_id": 3, "tex')
    model = tmp_path / "m.json"
    args = ["predictor", "train", "--data", str(path), "--kind", "expert-mean", "--out", str(model)]
    assert cli.main(args) == 0
    assert f"warning: {path}: line {n + 1} is cut short" in _say(capsys) and model.exists()
    model.unlink()
    assert cli.main([*args, "--strict"]) == 2
    assert f"error: {path}: line {n + 1} is cut short" in _say(capsys) and not model.exists()


def test_placement_of_the_wrong_shape_names_the_field_and_the_shape(tmp_path, capsys):
    rc, out = _run(tmp_path, "--scheduler", "mosaic-ilp-fixed", "--set", f"{FIXED}=garbage")
    said = _say(capsys)
    assert rc == 2 and "'scheduler_options.mosaic-ilp-fixed'" in said and "placement must be a mapping" in said
    assert "worker id -> list of expert names" in said and not out.exists()


def test_placement_with_an_unknown_expert_names_it(tmp_path, capsys):
    rc, out = _run(tmp_path, "--scheduler", "mosaic-ilp-fixed", "--set", f"{FIXED}={{0: [Nope, QwenR1]}}")
    said = _say(capsys)
    assert rc == 2 and "unknown expert(s) ['Nope']" in said and "LlamaR1" not in said.split("workload's")[0]
    assert not out.exists()


def test_an_invalid_plan_leaves_no_run_folder(tmp_path, capsys):
    rc, out = _run(tmp_path, "--scheduler", "mosaic-ilp-fixed", "--set", f"{FIXED}={{9: [QwenR1]}}")
    assert rc == 2 and "names workers [9] that are not in the cluster" in _say(capsys) and not out.exists()
    rc = cli.main(["compare", GPQA, *SMALL, "--out", str(out), "--schedulers", "round-robin,mosaic-ilp-fixed",
                   "--set", f"{FIXED}={{9: [QwenR1]}}"])  # fmt: skip
    assert rc == 2 and not out.exists()  # the valid first scheduler did not run either


def test_mean_predictor_on_a_truncated_trace_is_rejected_before_the_run(tmp_path, capsys):
    rc, full = _run(tmp_path)
    assert rc == 0 and json.loads((full / "status.json").read_text())["status"] == "finished"
    lines = (full / "round-robin.trace.jsonl").read_text().splitlines()
    cut = tmp_path / "cut.jsonl"  # the expert stage only: no aggregator records to fit its length on
    cut.write_text("\n".join(line for line in lines if '"stage": "aggregation"' not in line) + "\n")
    out = tmp_path / "again"
    rc = cli.main(["run", GPQA, *SMALL, "--out", str(out), "--set", f"costs.predictor=mean:{cut}"])
    said = _say(capsys)
    assert rc == 2 and "has no lengths for expert(s) ['QwenR1@agg']" in said and not out.exists()


def test_a_run_that_fails_after_it_started_is_marked_failed(tmp_path, capsys, monkeypatch):
    def broken(self, stage, *args, **kwargs):
        raise MosaicError(f"engine lost during the {stage} stage")

    monkeypatch.setattr(SimBackend, "run_policy", broken)
    rc, out = _run(tmp_path)
    status = json.loads((out / "status.json").read_text())
    assert rc == 2 and status["status"] == "failed" and "engine lost during the expert stage" in status["error"]
    assert not (out / "metrics.json").exists()


def test_resume_refuses_the_simulator_before_touching_the_trace(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"type": "meta"}\n{"type": "req')
    assert cli.main(["resume", GPQA, *SMALL, "--trace", str(trace)]) == 2
    assert "resume needs a real backend (vllm or ray), got runtime.backend='sim'" in _say(capsys)
    assert trace.read_text() == '{"type": "meta"}\n{"type": "req' and not (tmp_path / "status.json").exists()


def test_an_invalid_config_field_is_one_error_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cluster": {"workers": 0}}))
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "cluster.workers" in _say(capsys) and not (tmp_path / "x").exists()


class _PlansOnly(SimBackend):
    name, runs_policies = "plans-only", False


@pytest.fixture
def plans_only(monkeypatch):
    """A backend that replays static plans only (registered for the test)."""
    from mosaic.runtime.registry import BACKENDS

    monkeypatch.setitem(BACKENDS._items, "plans-only", lambda cfg, responses, costs: _PlansOnly(responses, costs))


@pytest.mark.parametrize("args,needle", [
    (("--scheduler", "greedy-lpt+steal"), "['greedy-lpt+steal'] act at run time"),
    (("--no-barrier",), "runtime.barrier=false needs a backend that runs the runtime loop"),
])  # fmt: skip
def test_what_a_backend_that_only_replays_plans_cannot_do_is_refused_first(tmp_path, capsys, plans_only, args,
                                                                           needle):  # fmt: skip
    rc, out = _run(tmp_path, *args, "--backend", "plans-only")
    said = _say(capsys)
    assert rc == 2 and needle in said and "'plans-only'" in said
    assert not out.exists()
