"""The wall-clock runtime loop (:mod:`mosaic.runtime.wall_loop`) against the simulator's: driven through a link
whose workers are simulated ones on a virtual clock (:class:`SimLink`), it must make the same decisions on the same
states and write the same records as :class:`~mosaic.runtime.loop.SimLoop` in strict lockstep; bad actions raise the
same errors; a worker that keeps a job asked back (it entered the engine, or its load began) leaves the view
consistent and the job run once where it was."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.agents import make_scheduler
from mosaic.agents.pipelined import AggregateOnRelease
from mosaic.agents.policy import (
    ARRIVAL,
    DRY,
    FINISH,
    IDLE,
    START,
    WAKE,
    Dispatch,
    Event,
    PlanReplay,
    Policy,
    Steal,
    View,
    WakeAt,
    Withdraw,
)
from mosaic.core.errors import PlanError
from mosaic.core.trace import EXPERT_STAGE, LoadRecord, RequestRecord, TraceWriter
from mosaic.core.types import plan_from_order
from mosaic.runtime.interface import Gates
from mosaic.runtime.loop import SimLoop
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.wall_loop import WallLoop

INF = float("inf")


class SimLink:
    """An :class:`~mosaic.runtime.wall_loop.EngineLink` whose workers are simulated (``WorkerSim``) on a virtual
    clock (:meth:`timer`): each wait applies the earliest worker event, whose reports make one round of the loop
    (an arrival goes first on a tie, as on the simulator). It checks that every withdrawal the loop asks for names
    jobs the worker still holds queued (the loop's mirror is right)."""

    def __init__(self, backend, workload, cluster, stage=EXPERT_STAGE, start=0.0, resident=None):
        self.t = float(start)
        self.items = {it.request_id: it for it in backend.sim_requests(workload, tuple(range(len(workload.requests))))}
        self.sims = {w.id: backend.make_worker(w, stage, start, (resident or {}).get(w.id)) for w in cluster.workers}
        self.reports: deque = deque()
        self.stage_of: dict[int, str] = {}
        self.told: dict[int, str | None] = dict.fromkeys(self.sims)  # worker -> the load reported under way
        self.asked: list[tuple[int, tuple[int, ...]]] = []

    def timer(self) -> float:
        return self.t

    def open(self, workers, clock):
        assert clock() == pytest.approx(self.t)

    def job(self, stage, request_id, prerequisites=(), arrival=None, prompt_tokens=None):
        it = self.items[request_id]
        if prompt_tokens is not None:
            it = self.items[request_id] = it._replace(prompt_tokens=prompt_tokens, arrival=arrival)
        self.stage_of[request_id] = stage
        return {"request_id": request_id, "arrival": it.arrival}

    def restored(self, stage, request_id):
        return None

    def enqueue(self, worker, jobs):
        self._change(worker, lambda s: s.enqueue([self.items[j["request_id"]] for j in jobs], now=self.t))

    def withdraw(self, worker, request_ids):
        self.asked.append((worker, request_ids))
        pending = {r.request_id for r in self.sims[worker].pending()}
        assert set(request_ids) <= pending, (request_ids, pending)  # the mirror named only queued jobs
        taken = {r.request_id for r in self.sims[worker].remove_pending(request_ids)}
        return tuple(r for r in request_ids if r in taken), ()

    def next_event(self, until):
        if self.reports or until == -INF:
            return self.reports.popleft() if self.reports else None
        deadline = INF if until is None else until
        w, te = min(((w, s.next_event_time()) for w, s in self.sims.items()), key=lambda x: x[1], default=(-1, INF))
        if te == INF or te >= deadline:
            assert deadline < INF, "the loop waits for a report no worker will send"
            self.t = max(self.t, deadline)
            return None
        self._change(w, lambda s: s.step())
        self.t = max(self.t, self.sims[w].clock)
        return self.reports.popleft() if self.reports else None

    def _change(self, w, act):
        """Apply ``act`` to worker ``w``'s simulation; queue the reports of what it did."""
        sim = self.sims[w]
        before = [r.request_id for r in sim.pending()]
        act(sim)
        after = {r.request_id for r in sim.pending()}
        admitted = [r for r in before if r not in after and any(x.request_id == r for x in sim.running())]
        done = [rec for rec in sim.records if isinstance(rec, RequestRecord)]
        admitted += [rec.request_id for rec in done if rec.request_id in before and rec.request_id not in admitted]
        if admitted:
            self.reports.append((w, {"event": "admit", "request_ids": admitted, "time": self.t}))
        for rec in sim.records:
            if isinstance(rec, LoadRecord):
                self.told[w] = None
                self.reports.append((w, {"event": "load", "stage": rec.stage, "expert": rec.expert,
                                         "start": rec.start, "end": rec.end}))  # fmt: skip
            else:
                rec = replace(rec, stage=self.stage_of.get(rec.request_id, rec.stage))
                self.reports.append((w, {"event": "request", "record": rec, "busy": sim.busy_s}))
        sim.records.clear()
        if sim.loading is not None and self.told[w] != sim.loading:
            self.told[w] = sim.loading
            self.reports.append((w, {"event": "loading", "expert": sim.loading, "start": sim.clock}))

    def record(self, worker, event):
        return event["record"]

    def close(self, abort=False):
        return {w: {"end": s.last_end, "busy": s.busy_s, "loading": s.loading_s, "resident": s.resident}
                for w, s in self.sims.items()}  # fmt: skip


def _pair(rt, wl, resp, costs, n_workers, policy_of, gates_of=None):
    """(records, result, policy log) of SimLoop in lockstep, then of WallLoop on a SimLink, or the error each
    raised."""
    out = []
    for wall in (False, True):
        backend, trace, cluster = SimBackend(resp, costs), TraceWriter(None), rt.cluster(n_workers)
        gates = gates_of() if gates_of else None
        if wall:
            link = SimLink(backend, wl, cluster)
            loop = WallLoop(link, EXPERT_STAGE, wl, costs, cluster, trace, gates=gates, timer=link.timer)
        else:
            loop = SimLoop(backend, EXPERT_STAGE, wl, costs, cluster, trace, gates=gates, lookahead=False)
        pol = policy_of()
        try:
            res = loop.run(pol)
        except PlanError as e:
            out.append(("error", str(e), getattr(pol, "log", None)))
            continue
        out.append((sorted(map(repr, trace.records)), (res.end, res.worker_end, res.busy, res.loading, res.resident,
                    dict(res.responses.table)), getattr(pol, "log", None)))  # fmt: skip
    return out


class Busy(Policy):
    """Random dispatches, steals and withdrawals at every event kind (as in test_loop_events); logs what it sees."""

    name = "busy"
    events = frozenset({DRY, IDLE, ARRIVAL, WAKE, FINISH})

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.log: list[tuple] = []

    def decide(self, view: View, event: Event):
        rng, ids, out = self.rng, list(view.cluster.ids), []
        state = tuple((view.queued(w), sorted(view.running(w)), view.resident(w), view.loading(w)) for w in ids)
        self.log.append((event.kind, event.worker, event.requests, round(view.clock, 9), view.waiting(), state,
                         view.held(), len(view.finished())))  # fmt: skip
        if event.kind == START and rng.random() < 0.5:
            out.append(WakeAt(float(rng.uniform(0, 30))))
        for v in ids:
            movable = view.movable(v)
            if movable and rng.random() < 0.3:
                k = tuple(movable[-int(rng.integers(1, len(movable) + 1)) :])
                target = int(rng.choice(ids))
                out.append(Withdraw(v, k) if target == v else Steal(v, target, k))
        waiting = list(view.waiting())
        for a in out:
            if isinstance(a, Withdraw):
                waiting += [r for r in a.request_ids if view.workload.queries[view.workload.requests[r].query_id]
                            .arrival <= view.clock + 1e-9]  # fmt: skip
        if waiting and rng.random() < 0.8:
            to = event.worker if event.worker is not None else int(rng.choice(ids))
            out.append(Dispatch(to, tuple(waiting[: int(rng.integers(1, len(waiting) + 1))])))
        elif not any(view.queued(w) or view.running(w) for w in ids) and view.waiting():
            out.append(Dispatch(ids[0], tuple(view.waiting())))
        return out


def _random_case(rt, data, n_max=14):
    n = data.draw(st.integers(1, n_max))
    experts = ("a", "b", "c")
    routes = [(data.draw(st.sampled_from(experts)),) for _ in range(n)]
    arrivals = [data.draw(st.floats(0.0, 40.0)) for _ in range(n)]
    wl = rt.workload(routes, experts=experts, arrivals=arrivals)
    seed = data.draw(st.integers(0, 10_000))
    lengths = np.random.default_rng(seed).integers(1, 300, size=n)
    resp = rt.responses(wl, lambda q, e: int(lengths[q]))
    table = {e: rt.mcost(load_s=data.draw(st.floats(0.1, 3.0)), max_batch=data.draw(st.integers(1, 4)),
                         unload_s=data.draw(st.sampled_from([0.0, 0.7]))) for e in (*experts, "agg")}  # fmt: skip
    return wl, resp, rt.costs(table), seed, data.draw(st.integers(1, 3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_policies_make_the_same_decisions_and_records_as_on_the_simulator(rt, data):
    wl, resp, costs, seed, n_workers = _random_case(rt, data)
    sim, wall = _pair(rt, wl, resp, costs, n_workers, lambda: Busy(seed))
    slog, wlog = sim[-1], wall[-1]
    assert sim[:-1] == wall[:-1] and slog[: len(wlog)] == wlog
    # the simulator still wakes the policy after the last request; the wall clock does not wait for it
    assert all(e[0] == WAKE and not e[4] and all(not q and not r for q, r, *_ in e[5]) for e in slog[len(wlog) :])


@pytest.mark.parametrize("name", ["greedy-lpt", "round-robin+steal", "greedy-lpt+steal", "greedy-online",
                                  "greedy-lpt+rolling", "greedy-lpt+window"])  # fmt: skip
@pytest.mark.parametrize("online", [False, True])
def test_registered_policies_give_the_simulator_s_records(rt, name, online):
    rng = np.random.default_rng(3)
    n = 24
    routes = [tuple(rng.choice(["a", "b", "c"], size=2, replace=False)) for _ in range(n)]
    arrivals = np.cumsum(rng.exponential(2.0, size=n)).tolist() if online else None
    wl = rt.workload(routes, experts=("a", "b", "c"), arrivals=arrivals)
    lengths = rng.integers(5, 400, size=(n, 4))
    resp = rt.responses(wl, lambda q, e: int(lengths[q, "abcg".index(e[0])]))
    costs = rt.costs({e: rt.mcost(load_s=2.0, max_batch=4, unload_s=0.5) for e in ("a", "b", "c", "agg")},
                     {"a": 50.0, "b": 200.0, "c": 120.0})  # fmt: skip
    scheduler = make_scheduler(name, **({"period": 20.0} if "+" in name and "steal" not in name else {}))

    def policy():
        plan = scheduler.plan(wl, costs, rt.cluster(3), np.random.default_rng(0))
        return scheduler.runtime_policy(plan)

    sim, wall = _pair(rt, wl, resp, costs, 3, policy)
    assert sim[0] != "error" and sim == wall
    assert len([r for r in sim[0] if r.startswith("RequestRecord")]) == len(wl.requests)


def _gated(rt):
    """Three queries to experts a and b, each with an aggregator request held until both answered."""
    wl = rt.workload([("a", "b", "agg")] * 3, experts=("a", "b", "agg"), arrivals=[0.0, 1.0, 2.5])
    prereq = {r.id: tuple(x.id for x in wl.requests if x.query_id == r.query_id and x.expert != "agg")
              for r in wl.requests if r.expert == "agg"}  # fmt: skip

    def gates():
        return Gates(prereq, lambda r, now, recs: None if r == max(prereq) else 300 + len(recs), "aggregation")

    return wl, gates, prereq


def test_gated_requests_released_and_cancelled_as_on_the_simulator(rt):
    wl, gates, prereq = _gated(rt)
    resp = rt.responses(wl, lambda q, e: 20 + 7 * q + len(e))
    costs = rt.costs({e: rt.mcost(load_s=1.0, max_batch=2) for e in ("a", "b", "agg")})
    first = min(prereq)

    def policy():
        plan = plan_from_order("p", wl, {0: [r.id for r in wl.requests if r.expert == "a"],
                                         1: [r.id for r in wl.requests if r.expert == "b"]}, 0.0, 0.0)  # fmt: skip
        return AggregateOnRelease(PlanReplay(plan), first)

    sim, wall = _pair(rt, wl, resp, costs, 2, policy, gates)
    assert sim[0] != "error" and sim == wall
    agg = [r for r in sim[0] if "'aggregation'" in r]
    assert len(agg) == len(prereq) - 1 and all("prompt_tokens=302" in r for r in agg)


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
        ((Dispatch(0, tuple(range(11))), Steal(0, 1, (0,))), "cannot move"),
        ((Dispatch(0, tuple(range(11))), Steal(0, 0, (5,))), "to itself"),
        ((Dispatch(0, tuple(range(11))), Withdraw(0, (3, 3))), "listed twice"),
        ((Dispatch(0, tuple(range(11))), Steal(0, 4, (3,))), "not in the cluster"),
        ((Dispatch(0, tuple(range(11))), WakeAt(-1.0)), "the clock is at"),
        (("go",), "not an action"),
        ((Dispatch(0, (0, 1)),), "left 9 request"),
    ],
)
def test_invalid_actions_are_the_simulator_s_plan_errors(rt, actions, needle):
    wl = rt.workload([("a",)] + [("b",)] * 10, experts=("a", "b"))
    resp = rt.responses(wl, lambda q, e: 5 if e == "a" else 50)
    costs = rt.costs({"a": rt.mcost(load_s=1.0), "b": rt.mcost(load_s=2.0, max_batch=2), "agg": rt.mcost()})
    sim, wall = _pair(rt, wl, resp, costs, 2, lambda: Scripted(*actions))
    assert sim[0] == wall[0] == "error" and needle in sim[1] and sim[1] == wall[1]


class RacyLink(SimLink):
    """A link whose worker keeps the first job of every withdrawal: ``mode`` ``"kept"`` (its model load began: it
    stays queued) or ``"admitted"`` (the worker answers that it entered the engine, before its admit report)."""

    def __init__(self, *args, mode="kept", **kwargs):
        super().__init__(*args, **kwargs)
        self.mode, self.kept, self.loop, self.seen = mode, [], None, None

    def enqueue(self, worker, jobs):
        if worker == 1 and self.seen is None:  # the moved jobs: what the loop's view says of worker 0 now
            self.seen = (self.loop.queued(0), self.loop.running(0), [j["request_id"] for j in jobs])
        super().enqueue(worker, jobs)

    def withdraw(self, worker, request_ids):
        self.kept.append(request_ids[0])
        taken, _ = super().withdraw(worker, request_ids[1:])
        if self.mode == "admitted":
            return taken, (request_ids[0],)
        return taken, ()


class MoveAll(Policy):
    """Everything to worker 0; at its first finish, all that is movable there goes back and then to worker 1."""

    name = "move-all"
    events = frozenset({FINISH})

    def __init__(self):
        self.moved = ()

    def decide(self, view, event):
        if event.kind == START:
            return [Dispatch(0, tuple(view.waiting()))]
        if self.moved:
            return []
        self.moved = view.movable(0)
        return [Withdraw(0, self.moved), Dispatch(1, self.moved)]


@pytest.mark.parametrize("mode", ["kept", "admitted"])
def test_a_job_the_worker_keeps_stays_where_it_is_and_runs_once(rt, mode):
    wl = rt.workload([("a",)] * 6, experts=("a",))
    resp = rt.responses(wl, lambda q, e: 30)
    costs = rt.costs({"a": rt.mcost(load_s=1.0, max_batch=2), "agg": rt.mcost()})
    backend, trace, cluster = SimBackend(resp, costs), TraceWriter(None), rt.cluster(2)
    link = RacyLink(backend, wl, cluster, mode=mode)
    pol = MoveAll()
    link.loop = WallLoop(link, EXPERT_STAGE, wl, costs, cluster, trace, timer=link.timer)
    link.loop.run(pol)
    kept = link.kept[0]
    where = {r.request_id: r.worker for r in trace.records if isinstance(r, RequestRecord)}
    assert sorted(where) == list(range(6)) and len(where) == sum(isinstance(r, RequestRecord) for r in trace.records)
    assert where[kept] == 0 and all(where[r] == 1 for r in pol.moved if r != kept)
    queued0, running0, sent1 = link.seen
    assert kept not in sent1 and len(sent1) == len(pol.moved) - 1
    assert kept in running0 if mode == "admitted" else kept in queued0


def test_a_policy_s_wake_ups_after_the_last_request_do_not_hold_the_stage(rt):
    wl = rt.workload([("a",)] * 2, experts=("a",))
    costs = rt.costs({"a": rt.mcost(load_s=1.0), "agg": rt.mcost()})
    backend, trace, cluster = SimBackend(rt.responses(wl, lambda q, e: 5), costs), TraceWriter(None), rt.cluster(1)
    link = SimLink(backend, wl, cluster)
    res = WallLoop(link, EXPERT_STAGE, wl, costs, cluster, trace, timer=link.timer).run(
        Scripted(Dispatch(0, (0, 1)), WakeAt(1e6))
    )
    assert link.t < 100 and res.end == pytest.approx(max(r.end for r in trace.records if isinstance(r, RequestRecord)))
