"""Latency metrics: answer times, SLO attainment against the idle-cluster latency, throughput, utilisation, and the
latency table; the idle-cluster latency priced by the simulator's own timing."""

from __future__ import annotations

import pytest

from mosaic.core.trace import AggregationRecord, RequestRecord
from mosaic.core.types import Cluster
from mosaic.predictors.interface import ModelCost
from mosaic.report.metrics import RunMetrics, answer_times, slo_attainment, throughput, utilisation
from mosaic.report.table import latency_rows
from mosaic.runtime.slo import alone_seconds, idle_latencies

RECS = [
    RequestRecord("expert", 0, 0, "a", 0, 1.0, 5.0, 10, 4),
    RequestRecord("expert", 1, 0, "b", 1, 2.0, 9.0, 10, 4),
    RequestRecord("expert", 2, 1, "a", 0, 5.0, 7.0, 10, 4),
    RequestRecord("aggregation", 3, 0, "agg", 0, 9.0, 12.0, 30, 2),
    AggregationRecord(0, 0.5, False, "A", True),
    AggregationRecord(1, 1.0, True, "A", True),
]


def test_answer_times_take_the_aggregator_or_the_last_expert_when_skipped():
    assert answer_times(RECS) == {0: 12.0, 1: 7.0}


def test_slo_attainment_throughput_and_utilisation():
    done, arrivals = answer_times(RECS), [0.0, 4.0]
    assert slo_attainment(done, arrivals, {0: 2.0, 1: 1.0}, (5.0, 10.0)) == {"5x": 0.5, "10x": 1.0}  # 12 <= 20, 3 <= 5
    assert slo_attainment(done, arrivals, {}) == {}
    assert throughput(done, arrivals) == pytest.approx(2 / 12.0)
    assert utilisation(RECS, [0, 1, 2], 0.0, 12.0) == {0: pytest.approx(9 / 12), 1: pytest.approx(7 / 12), 2: 0.0}


class Costs:
    def model_cost(self, expert, gpu_type):
        return ModelCost(5.0, 100.0, 0.02, 0.001, 1e-4, 16.0, 8, 10_000)


def test_alone_seconds_is_prefill_plus_batch_one_decode_by_hand():
    # prefill 10 / 100 = 0.1 s; 4 steps at batch 1: 0.021 + 1e-4 * kv, kv = 10, 11, 12, 13
    by_hand = 0.1 + sum(0.021 + 1e-4 * kv for kv in (10, 11, 12, 13))
    assert alone_seconds(Costs(), "g", "a", 10, 4) == pytest.approx(by_hand)


def test_idle_latency_is_the_slowest_expert_then_the_aggregator():
    cluster = Cluster.homogeneous(2, "g", 80.0)
    idle = idle_latencies(RECS, Costs(), cluster)
    expert, agg = alone_seconds(Costs(), "g", "a", 10, 4), alone_seconds(Costs(), "g", "agg", 30, 2)
    assert idle == {0: pytest.approx(expert + agg), 1: pytest.approx(expert)}


def test_latency_rows_show_dashes_when_a_run_has_no_latency():
    m = RunMetrics("x", 1.0, 1.0, 2.0, 1.0, 1.0, 1, 0, 1, 0.0, None)
    assert latency_rows([m]) == [["x", "-", "-", "-", "-", "-", "-", "-", "-"]]
    lat = {"mean": 3.0, "p50": 2.0, "p90": 4.0, "p99": 5.0}
    m2 = RunMetrics("y", 1.0, 1.0, 2.0, 1.0, 1.0, 1, 0, 1, 0.0, None, latency=lat, slo={"5x": 0.25, "10x": 0.5},
                    throughput=0.5, utilisation={0: 0.5, 1: 1.0})  # fmt: skip
    assert latency_rows([m2]) == [["y", "3.0", "2.0", "4.0", "5.0", "25.0", "50.0", "0.500", "75.0"]]
