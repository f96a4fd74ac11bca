"""The vllm backend running policies on the wall-clock loop, with fake engines in worker threads (real sessions,
no vLLM): the same requests as the simulator, in the policy's order on each worker, the simulator's errors for bad
actions, gated aggregation without a barrier, resume, engine failures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mosaic.agents import make_scheduler
from mosaic.agents.policy import START, Dispatch, Policy, Steal, WakeAt, Withdraw, plan_dispatches
from mosaic.core.errors import PlanError
from mosaic.core.trace import AGGREGATION_STAGE, EXPERT_STAGE, LoadRecord, RequestRecord, TraceWriter
from mosaic.core.types import Cluster, Response, Responses, plan_from_order
from mosaic.runtime.executor import Executor
from mosaic.runtime.fidelity import responses_of
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.vllm_backend import EngineError

CLUSTER = Cluster.homogeneous(2, "cpu", 8.0)


class Spy(Policy):
    """``inner``'s decisions, recorded: worker -> every request dispatched or stolen to it, in order."""

    def __init__(self, inner: Policy) -> None:
        self.inner, self.name, self.events = inner, inner.name, inner.events
        self.sent: dict[int, list[int]] = {}

    def decide(self, view, event):
        acts = list(self.inner.decide(view, event))
        for a in acts:
            if isinstance(a, Dispatch | Steal):
                self.sent.setdefault(a.worker if isinstance(a, Dispatch) else a.target, []).extend(a.request_ids)
        return acts


class SpyScheduler:
    """A scheduler whose run-time policies are spied on (one :class:`Spy` per stage)."""

    def __init__(self, name: str, **options) -> None:
        self.inner = make_scheduler(name, **options)
        self.name, self.plans_ahead = self.inner.name, self.inner.plans_ahead
        self.spies: list[Spy] = []

    def plan(self, *args, **kwargs):
        return self.inner.plan(*args, **kwargs)

    def runtime_policy(self, plan):
        spy = Spy(self.inner.runtime_policy(plan))
        self.spies.append(spy)
        return spy


def timed(vt, step_s=0.002, load_s=0.03):
    class Timed(vt.FakeEngine):
        def __init__(self, expert, spec):
            time.sleep(load_s)
            super().__init__(expert, spec)

        def step(self):
            time.sleep(step_s)
            return super().step()

    return Timed


def one_at_a_time(vt, tmp_path):
    """The test specs with one sequence per engine: each worker's records start in its admission order."""
    from dataclasses import replace

    return {k: replace(s, max_num_seqs=1, max_tokens=6 if k != "b" else 12) for k, s in vt.specs(tmp_path).items()}


def run(vt, backend, scheduler, wl, barrier=True, path=None):
    try:
        with TraceWriter(path) as trace:
            res = Executor(backend, barrier=barrier).run(wl, scheduler, vt.table_costs(wl, load_s=0.03), CLUSTER,
                                                         np.random.default_rng(0), trace)  # fmt: skip
    finally:
        backend.close()
    return res, list(trace.records)


def online(vt, tmp_path, n=6, gap=0.02):
    from dataclasses import replace

    wl = vt.tiny_workload(tmp_path, n)
    return replace(wl, queries=tuple(replace(q, arrival=gap * q.id) for q in wl.queries))


def keys(records):
    return sorted((r.stage, r.request_id) for r in records if isinstance(r, RequestRecord))


def in_order(spies, records):
    """Every worker ran what the policy sent it, in the order sent (a job the worker kept stays where it was)."""
    for stage, spy in zip((EXPERT_STAGE, AGGREGATION_STAGE), spies, strict=False):
        ran = {}
        for r in sorted(
            (r for r in records if isinstance(r, RequestRecord) and r.stage == stage), key=lambda r: r.start
        ):
            ran.setdefault(r.worker, []).append(r.request_id)
        for w, ids in ran.items():
            sent = iter(spy.sent.get(w, []))
            assert all(any(r == s for s in sent) for r in ids), (stage, w, ids, spy.sent.get(w))
    return True


@pytest.mark.parametrize("name", ["greedy-lpt+steal", "greedy-online", "greedy-lpt+rolling", "round-robin+steal"])
@pytest.mark.parametrize("barrier", [True, False])
@pytest.mark.parametrize("arrivals", ["offline", "online"])
def test_policies_run_every_request_of_the_simulator_once_in_their_order(vt, tmp_path, name, barrier, arrivals):
    wl = online(vt, tmp_path) if arrivals == "online" else vt.tiny_workload(tmp_path, 6)
    opts = {"period": 0.05, "solve_charge": 0.01} if name.endswith("rolling") else {}
    real_sched = SpyScheduler(name, **opts)
    backend = vt.FakeBackend(one_at_a_time(vt, tmp_path), opener=timed(vt))
    res, recs = run(vt, backend, real_sched, wl, barrier)
    sim_sched = SpyScheduler(name, **opts)
    _, sim_recs = run(vt, SimBackend(responses_of(recs), vt.table_costs(wl, load_s=0.03)), sim_sched, wl, barrier)
    assert keys(recs) == keys(sim_recs) and len(keys(recs)) == len(wl.requests) + len(wl.queries)
    assert in_order(real_sched.spies, recs) and in_order(sim_sched.spies, sim_recs)
    assert res.accuracy == 1.0 and res.end_to_end > 0
    loads = [r for r in recs if isinstance(r, LoadRecord)]
    assert all(ld.end > ld.start for ld in loads) and {ld.expert for ld in loads} >= {"a", "b", "a@agg"}


class Replay(Policy):
    """A plan replayed by a policy the backend does not recognise as a static plan: it runs on the wall loop."""

    name = "replay"

    def __init__(self, plan):
        self.plan = plan

    def decide(self, view, event):
        return plan_dispatches(self.plan) if event.kind == START else []


def test_a_plan_on_the_wall_loop_runs_as_the_static_path_does(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path, 4)
    plan = plan_from_order("p", wl, vt.by_expert(wl), 0.0, 0.0)
    out = []
    for policy in (None, Replay(plan)):
        backend = vt.FakeBackend(one_at_a_time(vt, tmp_path))
        with TraceWriter(None) as trace:
            if policy is None:
                res = backend.run_stage(EXPERT_STAGE, plan, wl, CLUSTER, trace)
            else:
                res = backend.run_policy(EXPERT_STAGE, policy, wl, vt.table_costs(wl), CLUSTER, trace)
        backend.close()
        reqs = sorted((r for r in trace.records if isinstance(r, RequestRecord)), key=lambda r: r.start)
        out.append(({w: [r.request_id for r in reqs if r.worker == w] for w in (0, 1)},
                    sorted((r.worker, r.expert) for r in trace.records if isinstance(r, LoadRecord)),
                    {(r.request_id, r.output_tokens, r.text) for r in reqs}, res.resident))  # fmt: skip
    assert out[0] == out[1] and out[0][0] == {w: list(ids) for w, ids in plan.order.items()}


class Scripted(Policy):
    name = "scripted"

    def __init__(self, *actions):
        self.actions = list(actions)

    def decide(self, view, event):
        return self.actions if event.kind == START else []


@pytest.mark.parametrize(
    "actions,needle",
    [
        ((Dispatch(0, (0, 0)),), "listed twice"),
        ((Dispatch(7, (0,)),), "not in the cluster"),
        ((Dispatch(0, (99,)),), "cannot be dispatched"),
        ((Dispatch(0, tuple(range(8))), Steal(0, 1, (0,))), "cannot move"),
        ((Dispatch(0, tuple(range(8))), Steal(0, 0, (5,))), "to itself"),
        ((Dispatch(0, tuple(range(8))), Withdraw(0, (3, 3))), "listed twice"),
        ((Dispatch(0, tuple(range(8))), WakeAt(-1.0)), "the clock is at"),
        (("go",), "not an action"),
        ((Dispatch(0, (0, 1)),), "left 6 request"),
    ],
)
def test_bad_actions_are_the_simulator_s_plan_errors_and_the_workers_stay_usable(vt, tmp_path, actions, needle):
    wl = vt.tiny_workload(tmp_path, 4)
    errors = []
    backend = vt.FakeBackend(vt.specs(tmp_path))
    replies = Responses({(r.query_id, r.expert): Response(5, "C") for r in wl.requests})
    for be in (SimBackend(replies, vt.table_costs(wl)), backend):
        with pytest.raises(PlanError, match=needle) as err:
            be.run_policy(EXPERT_STAGE, Scripted(*actions), wl, vt.table_costs(wl), CLUSTER, TraceWriter(None))
        errors.append(str(err.value))
    assert errors[0] == errors[1] or errors[1].startswith(errors[0].split("the clock is at")[0])  # a later clock
    with TraceWriter(None) as trace:  # the sessions ended: the same workers run the next stage
        backend.run_policy(EXPERT_STAGE, Scripted(Dispatch(0, tuple(range(8)))), wl, vt.table_costs(wl), CLUSTER,
                           trace)  # fmt: skip
    backend.close()
    assert keys(trace.records) == [(EXPERT_STAGE, i) for i in range(8)]


def test_resume_skips_finished_requests_under_a_policy(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path, 4)
    _, first = run(vt, vt.FakeBackend(vt.specs(tmp_path)), make_scheduler("greedy-online"), wl)
    done = {(r.stage, r.request_id): r for r in first if isinstance(r, RequestRecord) and r.stage == EXPERT_STAGE
            and r.request_id % 2 == 0}  # fmt: skip
    res, second = run(vt, vt.FakeBackend(vt.specs(tmp_path), done=done), make_scheduler("greedy-online"), wl)
    assert keys(second) == sorted({*((EXPERT_STAGE, i) for i in range(8) if i % 2), *((AGGREGATION_STAGE, q)
                                   for q in range(4))})  # fmt: skip
    assert len(res.expert.responses) == len(wl.requests) and res.accuracy == 1.0


def test_an_engine_failure_under_a_policy_names_expert_and_worker(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path, 4)
    b_ids = frozenset(r.id for r in wl.requests if r.expert == "b")

    def opener(expert, spec):
        return vt.FakeEngine(expert, spec, fail_on=b_ids if expert == "b" else frozenset())

    backend = vt.FakeBackend(vt.specs(tmp_path), opener=opener)
    with pytest.raises(EngineError, match=r"expert 'b' on worker \d failed during serve.*fake engine crash"):
        run(vt, backend, make_scheduler("greedy-online"), wl)
    assert backend.workers == {}
