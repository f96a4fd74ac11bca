"""``mosaic reproduce``: the paper study's report agrees with the runs it summarises, and script studies work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosaic.cli import main
from mosaic.core.config import load_config
from mosaic.pipeline import plan_scheduler, prepare, run_scheduler
from mosaic.reproduce.paper import CONFIG_DIR, POLICIES, SCHEDULERS, Cell, policy_of, ratios
from mosaic.reproduce.tables import speedup_table

SMALL = ["--set", "workload.num_queries=24"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paper")
    args = ["reproduce", "paper", "--seeds", "2", "--out", str(out), "--wandb-dir", str(out.parent / "wandb"), *SMALL]
    assert main(args) == 0
    assert list((out.parent / "wandb").glob("wandb/offline-run-*"))  # the study's one W&B run
    return out


def test_report_folder_holds_page_charts_and_results(report: Path) -> None:
    names = {p.name for p in report.iterdir()}
    assert {"index.md", "report.html", "results.json", "speedups.png", "status.json"} <= names
    assert {f"gantt_{w}.png" for w in ("mmlu_pro", "medmcqa", "gpqa")} <= names
    assert json.loads((report / "status.json").read_text())["status"] == "finished"
    page = (report / "index.md").read_text()
    assert "mosaic reproduce paper --seeds 2" in page and "| medmcqa |" in page
    for png in report.glob("*.png"):
        assert png.stat().st_size > 5_000  # a real chart, not an empty figure


def test_every_cell_is_the_run_compare_would_make(report: Path) -> None:
    cells = [Cell(**c) for c in json.loads((report / "results.json").read_text())["cells"]]
    assert len(cells) == 3 * 2 * len(SCHEDULERS) * len(POLICIES)
    cfg = load_config(CONFIG_DIR / "gpqa.yaml", ["workload.num_queries=24", "seed=1", "tracking.mode=disabled"])
    exp = prepare(cfg)
    for c in (c for c in cells if c.workload == "gpqa" and c.seed == 1 and c.scheduler == "mosaic-ilp"):
        m = run_scheduler(exp, plan_scheduler(exp, c.scheduler, policy_of(c.policy))).metrics
        assert (c.expert_s, c.end_to_end_s, c.skip_rate) == (m.expert_makespan, m.end_to_end, m.skip_rate)
    # the expert stage does not depend on the aggregation policy; skipping never lengthens the aggregation stage
    ilp = {c.policy: c for c in cells if (c.workload, c.seed, c.scheduler) == ("gpqa", 1, "mosaic-ilp")}
    assert len({c.expert_s for c in ilp.values()}) == 1
    assert ilp["T=2/3"].skip_rate >= ilp["T=1"].skip_rate >= ilp["always"].skip_rate == 0
    # the true-length bound is a bound: no scheduler's simulated expert stage beats it
    assert all(c.true_bound_s is not None and c.expert_s >= c.true_bound_s * (1 - 1e-9) for c in cells)


def test_speedup_table_is_the_mean_ratio_over_seeds(report: Path) -> None:
    cells = [Cell(**c) for c in json.loads((report / "results.json").read_text())["cells"]]
    pick = {(c.seed, c.scheduler, c.policy): c for c in cells if c.workload == "medmcqa"}
    by_seed = [pick[(s, "round-robin", "always")].end_to_end_s / pick[(s, "mosaic-ilp", "T=1")].end_to_end_s
               for s in (0, 1)]  # fmt: skip
    mean, hw = ratios(cells, "medmcqa", "mosaic-ilp", "T=1", "end_to_end_s")
    assert mean == pytest.approx(sum(by_seed) / 2) and hw > 0
    row = next(r for r in speedup_table(cells, ["medmcqa"]).rows if r[0] == "medmcqa")
    assert row[7].startswith(f"{mean:,.2f} ± ")
    # the ceiling is a bound on every scheduler's expert-stage speedup, seed by seed
    for s in (0, 1):
        rr, bound = pick[(s, "round-robin", "always")], pick[(s, "round-robin", "always")].true_bound_s
        assert all(rr.expert_s / pick[(s, n, "always")].expert_s <= rr.expert_s / bound for n in SCHEDULERS)


def test_bad_requests_fail_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert main(["reproduce", "no_such_study", "--out", str(out)]) == 2
    assert "unknown study 'no_such_study'" in capsys.readouterr().out and not out.exists()
    assert main(["reproduce", "paper", "--seeds", "0", "--out", str(out)]) == 2
    assert main(["reproduce", "paper", "--out", str(out), "--set", "cluster.workers=zero"]) == 2
    assert not out.exists()


def test_a_script_study_gets_its_page(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    args = ["reproduce", "calibration", "--out", str(out), "--", "--sizes", "1000", "--caps", "128"]
    assert main(args) == 0
    page = (out / "index.md").read_text()
    assert "mosaic reproduce calibration --out" in page and "-- --sizes 1000 --caps 128" in page
    assert "Vidur" in page and "![calibration](calibration.png)" in page
