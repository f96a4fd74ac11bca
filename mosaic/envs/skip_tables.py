"""Per-query facts behind a skip decision (features, aggregator seconds, correctness) and the aggregation-stage time
of a set of skip decisions, both from the simulator. Sources: any workload + responses (synthetic or recorded), and
RouterBench's real answers of 11 LLMs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mosaic.aggregation.interface import confidence
from mosaic.aggregation.thresholds import FEATURE_HIGH, FEATURE_NAMES, features
from mosaic.core.errors import WorkloadError
from mosaic.core.trace import AGGREGATION_STAGE, TraceWriter
from mosaic.core.types import Cluster, Expert, ExpertKind, Responses, Workload
from mosaic.envs.problem import Instance
from mosaic.runtime.executor import aggregation_workload, is_correct
from mosaic.runtime.sim import SimBackend

AGGREGATOR_PARAMS_B = 8.0  # a RouterBench aggregator is timed as an 8B model (the paper's aggregators are 7-9B)


@dataclass(frozen=True, slots=True, eq=False)
class SkipTable:
    """One row per query: what a skip policy sees and what skipping costs or saves (arrays aligned by row)."""

    instance: Instance  # the workload the rows come from (responses, costs, cluster for stage timing)
    query_ids: np.ndarray  # row -> query id in ``instance.workload``
    features: np.ndarray  # row -> float32 features (FEATURE_NAMES order)
    confidence: np.ndarray  # row -> share of the k experts giving the most common answer
    saved_s: np.ndarray  # row -> simulator seconds of its aggregator call alone (true lengths)
    majority_correct: np.ndarray  # row -> the experts' majority answer is correct (bool; unknown -> False)
    aggregator_correct: np.ndarray  # row -> the aggregator's answer is correct (bool; unknown -> False)

    def __len__(self) -> int:
        return len(self.query_ids)

    def __repr__(self) -> str:
        return f"SkipTable({len(self)} queries of {self.instance.workload.name!r})"

    def __deepcopy__(self, memo: dict) -> SkipTable:
        return self  # immutable by convention; gymnasium.make deep-copies its kwargs

    def subset(self, rows: Sequence[int] | np.ndarray) -> SkipTable:
        """The table restricted to ``rows`` (e.g. a train or held-out split)."""
        idx = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            query_ids=self.query_ids[idx],
            features=self.features[idx],
            confidence=self.confidence[idx],
            saved_s=self.saved_s[idx],
            majority_correct=self.majority_correct[idx],
            aggregator_correct=self.aggregator_correct[idx],
        )

    def split(self, test_share: float, rng: np.random.Generator) -> tuple[SkipTable, SkipTable]:
        """(train, held-out) tables: a random ``test_share`` of the rows is held out."""
        if not 0.0 < test_share < 1.0:
            raise WorkloadError(f"skip table split: test_share must be in (0, 1), got {test_share}")
        perm = rng.permutation(len(self))
        n_test = max(1, round(test_share * len(self)))
        return self.subset(np.sort(perm[n_test:])), self.subset(np.sort(perm[:n_test]))

    def accuracy(self, skip: np.ndarray) -> float:
        """Share of rows answered correctly when ``skip`` rows take the majority and the rest the aggregator."""
        return float(np.where(skip, self.majority_correct, self.aggregator_correct).mean()) if len(self) else 0.0


def skip_table(inst: Instance) -> SkipTable:
    """The skip table of every query of ``inst`` that has experts (true answers from ``inst.responses``)."""
    wl, resp = inst.workload, inst.responses
    agg_wl = aggregation_workload(wl, resp, [False] * len(wl.queries))
    agg_costs = inst.costs.bind(agg_wl)
    saved = aggregator_seconds(inst, agg_wl)
    rows, feats, conf, maj, agg = [], [], [], [], []
    for q, route in zip(wl.queries, wl.routes, strict=True):
        if not route:
            continue
        resps = [resp.get(q.id, e) for e in route]
        answers = [r.answer for r in resps]
        c, majority = confidence(answers)
        recorded = next((r.correct for r in resps if majority is not None and r.answer == majority), None)
        agg_req = agg_wl.requests[q.id]  # nothing skipped: one aggregator request per query, in query order
        cost = agg_costs.request_latency(agg_req, inst.cluster.workers[0].gpu_type)
        kinds = [wl.expert(e).kind for e in route]
        feats.append(features(q, answers, c, kinds, cost))
        a = resp.get(q.id, wl.aggregator.name)
        rows.append(q.id)
        conf.append(c)
        maj.append(bool(is_correct(majority, q, recorded)))
        agg.append(bool(is_correct(a.answer, q, a.correct)))
    ids = np.array(rows, dtype=np.int64)
    return SkipTable(inst, ids, np.array(feats, dtype=np.float32).reshape(-1, len(FEATURE_NAMES)),
                     np.array(conf, dtype=float), saved[ids] if len(ids) else np.zeros(0), np.array(maj, dtype=bool),
                     np.array(agg, dtype=bool))  # fmt: skip


def aggregator_seconds(inst: Instance, agg_wl: Workload) -> np.ndarray:
    """Query id -> seconds its aggregator call takes alone on the first worker, aggregator resident (simulator)."""
    backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
    worker = inst.cluster.workers[0]
    out = np.zeros(len(agg_wl.queries))
    for item in backend.sim_requests(agg_wl, tuple(r.id for r in agg_wl.requests)):
        sim = backend.make_worker(worker, AGGREGATION_STAGE, 0.0, agg_wl.aggregator.name, lambda _r: None)
        sim.enqueue([item._replace(arrival=0.0)])
        out[item.query_id] = sim.run_until_idle()
    return out


def stage_time(table: SkipTable, skip: np.ndarray, scheduler: str = "greedy-lpt") -> float:
    """Simulated makespan of the aggregation stage that runs the aggregator for the table's rows not skipped
    (queries outside the table run nothing), planned by ``scheduler``, the aggregator resident on every worker."""
    from mosaic.agents import make_scheduler

    inst = table.instance
    wl = inst.workload
    run = np.zeros(len(wl.queries), dtype=bool)
    run[table.query_ids[~np.asarray(skip, dtype=bool)]] = True
    agg_wl = aggregation_workload(wl, inst.responses, list(~run))
    if not agg_wl.requests:
        return 0.0
    resident = dict.fromkeys(inst.cluster.ids, wl.aggregator.name)
    costs = inst.costs.bind(agg_wl)
    plan = make_scheduler(scheduler).plan(agg_wl, costs, inst.cluster, np.random.default_rng(0), resident)
    backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
    with TraceWriter(None) as trace:
        return backend.run_stage(AGGREGATION_STAGE, plan, agg_wl, inst.cluster, trace, 0.0, resident).makespan


# --- RouterBench ---------------------------------------------------------------------------------------------------


def params_from_name(name: str, default: float = AGGREGATOR_PARAMS_B) -> float:
    """Billions of parameters read from a model name (``mixtral-8x7b`` -> 56, ``Yi-34B`` -> 34), else ``default``."""
    m = re.search(r"(\d+)x(\d+(?:\.\d+)?)b", name, re.IGNORECASE)
    if m:
        return float(m.group(1)) * float(m.group(2))
    m = re.search(r"(\d+(?:\.\d+)?)b(?![a-z])", name, re.IGNORECASE)
    return float(m.group(1)) if m else default


def routerbench_instance(tasks: Sequence[object], experts: Sequence[str], aggregator: str, cluster: Cluster,
                         max_batch: int = 256) -> Instance:  # fmt: skip
    """One workload over the questions of ``tasks`` (loaded :class:`RouterBenchTask` s): every question goes to
    ``experts`` (real recorded answers); the aggregator's answer is ``aggregator``'s recorded one, timed with
    roofline costs of an 8B model (experts are not timed here; their sizes are read from their names)."""
    from mosaic.predictors.costmodel import ProfiledCostModel
    from mosaic.predictors.lengths import MeanLengthPredictor
    from mosaic.predictors.roofline import roofline_profile

    if aggregator in experts:
        raise WorkloadError(f"RouterBench aggregator {aggregator!r} must not be one of the experts")
    ex = tuple(Expert(m, m, params_from_name(m), ExpertKind.INSTRUCT, 0.0) for m in experts)
    agg = Expert(aggregator, aggregator, AGGREGATOR_PARAMS_B, ExpertKind.INSTRUCT, 0.0)
    queries, table = [], {}
    for task in tasks:
        for q in task.queries:
            qid = len(queries)
            queries.append(replace(q, id=qid))
            for m in (*experts, aggregator):
                table[(qid, m)] = task.responses.get(q.id, m)
    routes = tuple(tuple(experts) for _ in queries)
    wl = Workload.build("routerbench:" + "+".join(t.name for t in tasks), tuple(queries), ex, routes, agg)
    responses = Responses(table)
    means = {m: _mean_tokens(responses, m, len(queries)) for m in (*experts, aggregator)}
    profile = roofline_profile([agg], [cluster.workers[0].gpu_type], max_batch)  # experts are not timed here
    costs = ProfiledCostModel(profile, MeanLengthPredictor(means), wl)
    return Instance(wl, responses, costs, cluster, max_batch, name=wl.name)


def _mean_tokens(responses: Responses, model: str, n: int) -> float:
    tokens = [responses.get(q, model).output_tokens for q in range(n)]
    mean = sum(tokens) / len(tokens) if tokens else 0.0
    return mean if math.isfinite(mean) else 0.0


def observations(table: SkipTable) -> np.ndarray:
    """The table's features clipped into the AggThreshold observation box (what a policy sees), float32."""
    high = np.array([FEATURE_HIGH[n] for n in FEATURE_NAMES], dtype=np.float32)
    return np.clip(table.features, 0.0, high).astype(np.float32)


# The expert set and aggregator of experiments/routerbench_aggregation.py (fixed set, k = 3).
ROUTERBENCH_EXPERTS = ("mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat", "meta/llama-2-70b-chat")
ROUTERBENCH_AGGREGATOR = "gpt-4-1106-preview"
ROUTERBENCH_TASKS = ("arc-challenge", "winogrande")  # multiple-choice tasks: exact answer agreement


def routerbench_table(
    tasks: Sequence[str] = ROUTERBENCH_TASKS,
    experts: Sequence[str] = ROUTERBENCH_EXPERTS,
    aggregator: str = ROUTERBENCH_AGGREGATOR,
    cluster: Cluster | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
) -> SkipTable:
    """The skip table of RouterBench's real answers (``../shared/data/routerbench``; raises WorkloadError when
    absent): ``experts`` answer every question of ``tasks``, ``aggregator``'s recorded answer is the aggregator's."""
    from mosaic.workloads.routerbench import load_routerbench

    loaded = [load_routerbench(t, data_dir, limit) for t in tasks]
    for task in loaded:
        for m in (*experts, aggregator):
            task.model_index(m)  # raises with the valid names
    inst = routerbench_instance(loaded, experts, aggregator, cluster or Cluster.homogeneous(4, "A100-80GB", 80.0))
    return skip_table(inst)
