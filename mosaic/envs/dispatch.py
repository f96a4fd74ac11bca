"""Run-time dispatch over simulated workers: the state machine behind ``mosaic/Reschedule-v0`` (no gymnasium here).

A :class:`Dispatcher` drives one :class:`~mosaic.runtime.sim_worker.WorkerSim` per GPU in lockstep (always the
earliest event next) and stops at *decision points*: a worker whose queue has run dry while work is left that it
could take (unassigned requests in the pool, or requests queued on another worker). Every second comes from the
simulator; the dispatcher only moves requests between the pool and the workers' queues.

Actions at a decision point of worker ``w`` (slot ``e`` is the e-th expert of the workload):

- ``e < n_slots``: serve expert ``e``: take a quantum of its pooled requests (longest predicted first); with none
  pooled, steal the tail half of its queued work from the worker holding the most of it (replication).
- ``STEAL`` (``n_slots``): steal from the most loaded worker: the tail half of its queued work of its last expert.
- ``WAIT`` (``n_slots + 1``): take nothing; ask again when ``w`` has gone idle (or, if idle, when another has).

Requests at the head of a queue whose load is under way (batch drained, head expert not resident) are never
stolen: the load has started, and a steal must not change the past.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import add

import numpy as np

from mosaic.agents.bounds import lower_bound
from mosaic.core.errors import ConfigError, PlanError
from mosaic.core.trace import EXPERT_STAGE, TraceWriter
from mosaic.core.types import Plan
from mosaic.envs.problem import Instance
from mosaic.runtime.sim import SimBackend
from mosaic.runtime.sim_worker import discard

INF = float("inf")
DEFAULT_BUCKETS = (512.0, 2048.0)  # predicted output tokens: edges of the short / medium / long buckets
_ACTIVE, _WAIT_IDLE, _WAIT_OTHER = 0, 1, 2
_MANY = 1 << 62  # "no limit" on the number of events
_MIN_WORK = 1e-12  # predicted seconds queued of an expert with requests queued (never 0: they can be stolen)


class Prepared:
    """Per-instance arrays computed once and shared by every episode on the instance (read-only by convention)."""

    def __init__(self, inst: Instance, n_slots: int, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        wl = inst.workload
        if len(wl.experts) > n_slots:
            raise ConfigError(f"workload {wl.name!r} has {len(wl.experts)} experts; the env has {n_slots} expert slots")
        if not inst.cluster.workers:
            raise PlanError("reschedule env: the cluster has no workers")
        self.inst = inst
        self.experts = tuple(e.name for e in wl.experts)
        self.slot = {e: i for i, e in enumerate(self.experts)}  # expert name -> slot
        gpu = inst.cluster.workers[0].gpu_type  # observations use the first worker's GPU type
        reqs = wl.requests
        self.pred_s = np.asarray(inst.costs.seconds_array(reqs, gpu), dtype=float)  # request -> predicted seconds
        tokens = np.fromiter((inst.costs.predicted_tokens(r) for r in reqs), dtype=float, count=len(reqs))
        self.bucket = np.searchsorted(np.asarray(buckets, dtype=float), tokens, side="right")  # request -> bucket
        self.n_buckets = len(buckets) + 1
        self.expert_of = np.fromiter((self.slot[r.expert] for r in reqs), dtype=np.int64, count=len(reqs))
        self.expert_list: list[int] = self.expert_of.tolist()  # the same as lists (fast scalar access)
        self.pred_list: list[float] = self.pred_s.tolist()
        self.bucket_list: list[int] = self.bucket.tolist()
        self.load_s = np.zeros(n_slots)
        for e, i in self.slot.items():
            self.load_s[i] = inst.costs.load_seconds(e, gpu)
        # seconds, normaliser (the cheap terms only: the placement relaxation is a MIP, too slow per reset)
        self.ref = max(lower_bound(wl, inst.costs, inst.cluster, inst.resident, placement=False), 1e-9)
        self.backend = SimBackend(inst.responses, inst.costs, inst.max_batch)
        self.sim_requests = self.backend.sim_requests(wl, tuple(range(len(reqs))))
        by_pred = np.argsort(-self.pred_s, kind="stable")
        self.pool_order = [by_pred[self.expert_of[by_pred] == i].tolist() for i in range(n_slots)]
        self.max_batch = np.array([self.backend.model_cost(e, gpu).max_batch for e in self.experts] or [1])
        self.max_batch_list: list[int] = [*self.max_batch.tolist(), *[1] * (n_slots + 1 - len(self.max_batch))]
        self.load_list: list[float] = self.load_s.tolist()
        self.plans: dict[str, Plan] = {}  # scheduler name -> its plan of this instance (cache)
        self.static_makespans: dict[str, float] = {}  # scheduler name -> simulated makespan of its plan (cache)
        self.obs_scale: np.ndarray | None = None  # the env's per-entry observation factors (cache)

    def simulate(self, plan: Plan) -> float:
        """Simulated makespan of ``plan`` run as is (true lengths, the instance's resident experts)."""
        inst = self.inst
        with TraceWriter(None) as trace:
            stage = self.backend.run_stage(EXPERT_STAGE, plan, inst.workload, inst.cluster, trace, 0.0, inst.resident)
        return stage.makespan


# every attribute of a Dispatcher (``Dispatcher.copy``; a test checks that the list is complete)
_DISPATCHER_STATE = ("p", "lookahead", "n_slots", "steal_action", "wait_action", "quantum", "ids", "sims", "track",
                     "executed", "qwork", "qcount", "admitted_pred", "pool", "pwork", "mode", "next_t", "calm_t",
                     "now", "deciding", "_decision", "steals", "waits", "takes", "pcount", "pool_total",
                     "_ask")  # fmt: skip


class Dispatcher:
    """One episode: workers, the pool of unassigned requests, and the decision loop (see the module docstring).

    The per-worker and per-expert tallies are plain lists (the env reads and updates single entries on every event,
    where numpy's per-call overhead dominates); :attr:`pool_work` and :attr:`pool_count` give arrays."""

    def __init__(
        self,
        prep: Prepared,
        n_slots: int,
        quantum_frac: float = 0.25,
        plan: Plan | None = None,
        lookahead: bool = True,
    ) -> None:
        """``lookahead``: advance a worker with two or more queued requests up to the earliest moment another
        worker could need a decision (:meth:`WorkerSim.dry_bound`), not only to the others' next events; the
        same decisions at the same states, in fewer simulator calls (False: strict lockstep, for tests)."""
        if not quantum_frac > 0:
            raise ConfigError(f"reschedule env: quantum_frac must be > 0, got {quantum_frac}")
        self.p = prep
        self.lookahead = lookahead
        self.n_slots = n_slots
        self.steal_action, self.wait_action = n_slots, n_slots + 1
        self.quantum = quantum_frac * prep.ref
        inst = prep.inst
        self.ids = list(inst.cluster.ids)
        self.sims = [prep.backend.make_worker(w, "expert", 0.0, inst.resident.get(w.id), discard)
                     for w in inst.cluster.workers]  # fmt: skip
        n_w = len(self.sims)
        self.track: list[deque[int]] = [deque() for _ in range(n_w)]  # mirror of each worker's queue (request ids)
        self.executed: list[list[int]] = [[] for _ in range(n_w)]  # worker -> request ids admitted, in order
        self.qwork = [[0.0] * n_slots for _ in range(n_w)]  # worker x expert -> predicted seconds queued
        self.qcount = [[0] * n_slots for _ in range(n_w)]  # worker x expert -> requests queued
        self.admitted_pred = [0.0] * n_w  # worker -> predicted seconds of every request admitted so far
        self.pool = [list(reversed(ids)) for ids in prep.pool_order]  # expert -> ids, longest predicted last
        self.pwork = [[0.0] * prep.n_buckets for _ in range(n_slots)]  # expert x bucket -> predicted s pooled
        self.mode = [_ACTIVE] * n_w
        self.next_t = [INF] * n_w
        self.calm_t = [INF] * n_w  # worker -> no decision can come from it before (its next event, or with 2+
        # queued: a lower bound on when its queue runs dry, WorkerSim.dry_bound)
        self.now = 0.0
        self.deciding: int | None = None
        # the pending decision's valid actions, stealable work (worker x expert) and its column sums (cache)
        self._decision: tuple[list[bool], list[list[float]], list[float]] | None = None
        self.steals = self.waits = self.takes = 0
        if plan is not None:
            self._start_from(plan)
        else:
            for r, (e, b) in enumerate(zip(prep.expert_list, prep.bucket_list, strict=True)):
                self.pwork[e][b] += prep.pred_list[r]
        self.pcount = [len(q) for q in self.pool]  # expert -> requests pooled
        self.pool_total = sum(self.pcount)
        for i in range(n_w):
            self._refresh(i)
        self._ask = set(range(n_w))

    def copy(self) -> Dispatcher:
        """An independent copy of the episode's state at this moment (shares the read-only :class:`Prepared`);
        built attribute by attribute, like :meth:`WorkerSim.copy`."""
        new = object.__new__(Dispatcher)
        for name in _DISPATCHER_STATE:
            value = getattr(self, name)
            if isinstance(value, list) and value and isinstance(value[0], list | deque):
                value = [type(row)(row) for row in value]  # lists of lists or of deques
            elif isinstance(value, list | set):
                value = type(value)(value)
            setattr(new, name, value)
        new.sims = [sim.copy() for sim in self.sims]
        new._decision = None  # recomputed from the state on demand (its lists are handed out)
        return new

    # --- setup -------------------------------------------------------------------------------------------------

    def _start_from(self, plan: Plan) -> None:
        """Queue every worker's planned order (the pool starts empty)."""
        index = {w: i for i, w in enumerate(self.ids)}
        unknown = sorted(set(plan.order) - set(index))
        if unknown:
            raise PlanError(f"plan {plan.scheduler!r} uses workers {unknown} that are not in the cluster")
        planned = sum(len(r) for r in plan.order.values())
        if planned != len(self.p.sim_requests):
            raise PlanError(f"plan {plan.scheduler!r} runs {planned} of {len(self.p.sim_requests)} requests")
        self.pool = [[] for _ in range(self.n_slots)]
        for w, reqs in plan.order.items():
            self._enqueue(index[w], list(reqs), None)

    # --- queries -----------------------------------------------------------------------------------------------

    @property
    def n_workers(self) -> int:
        return len(self.sims)

    @property
    def pool_work(self) -> np.ndarray:
        """Expert x bucket -> predicted seconds pooled (a new array)."""
        return np.array(self.pwork, dtype=float)

    @property
    def pool_count(self) -> np.ndarray:
        """Expert -> requests pooled (a new array)."""
        return np.array(self.pcount, dtype=np.int64)

    def stealable(self) -> list[list[float]]:
        """Worker x expert -> predicted seconds the deciding worker may steal: its own row zero, and a head run
        whose load started excluded (the cached rows of the pending decision; do not modify)."""
        if self.deciding is not None:
            self._valid(self.deciding)
            return self._decision[1]
        return self._stealable()

    def stealable_by_expert(self) -> list[float]:
        """Expert -> the column sums of :meth:`stealable` (cached while a decision is pending; do not modify)."""
        if self.deciding is not None:
            self._valid(self.deciding)
            return self._decision[2]
        return list(map(sum, zip(*self._stealable(), strict=True)))

    def _stealable(self) -> list[list[float]]:
        """Worker x expert -> predicted seconds any other worker may steal (a new list of rows)."""
        out = [row[:] for row in self.qwork]  # queued work is >= _MIN_WORK wherever anything is queued
        p = self.p
        for i, sim in enumerate(self.sims):
            tr = self.track[i]
            if tr and not sim.batch_size and p.experts[p.expert_list[tr[0]]] != sim.resident:
                out[i][p.expert_list[tr[0]]] = 0.0  # its load is under way
        return out

    def _remaining(self) -> list[float]:
        """Worker -> predicted seconds left: queued work + admitted work not yet covered by busy time."""
        rows = zip(self.qwork, self.admitted_pred, self.sims, strict=True)
        return [sum(q) + max(a - s.busy_s, 0.0) for q, a, s in rows]

    def valid_actions(self, w: int) -> np.ndarray:
        """Boolean mask over the ``n_slots + 2`` actions for worker ``w`` (a new array)."""
        return np.array(self._valid(w), dtype=bool)

    def is_valid(self, action: int) -> bool:
        """Whether ``action`` is valid for the deciding worker."""
        mask = self._valid(self.deciding) if self.deciding is not None else ()
        return 0 <= action < len(mask) and mask[action]

    def _valid(self, w: int) -> list[bool]:
        """The valid-action mask of worker ``w`` as a list (cached while ``w`` decides; do not modify)."""
        if self._decision is not None and w == self.deciding:
            return self._decision[0]
        steal = self._stealable()
        steal[w] = [0.0] * self.n_slots
        by_expert = list(map(sum, zip(*steal, strict=True)))
        mask = list(map(bool, map(add, self.pcount, by_expert)))  # pooled or stealable (both are >= 0)
        mask.append(sum(by_expert) > 0)
        mask.append(not all([s.is_idle for s in self.sims]))  # wait: until some worker (w or another) goes idle
        if w == self.deciding:
            self._decision = (mask, steal, by_expert)
        return mask

    def makespan(self) -> float:
        """When the last request finished so far (0 before any)."""
        return max([s.last_end for s in self.sims], default=0.0)

    def order(self) -> dict[int, list[int]]:
        """Worker id -> request ids in the order they ran (the episode's schedule, once finished)."""
        return {w: list(self.executed[i]) for i, w in enumerate(self.ids)}

    # --- actions -----------------------------------------------------------------------------------------------

    def apply(self, action: int) -> None:
        """Apply ``action`` (assumed valid) for the deciding worker."""
        w = self.deciding
        if w is None:
            raise PlanError("reschedule env: no decision is pending")
        steal = self.stealable()
        self.deciding, self._decision = None, None
        if action == self.wait_action:
            self.waits += 1
            self.mode[w] = _WAIT_OTHER if self.sims[w].is_idle else _WAIT_IDLE
            return
        self.mode[w] = _ACTIVE
        if action < self.n_slots and self.pool[action]:
            self.takes += 1
            self._enqueue(w, self._take_pool(action), self.now)
            return
        if action < self.n_slots:
            column = [row[action] for row in steal]
            victim, expert = column.index(max(column)), action
        else:
            left = self._remaining()
            loaded = [left[i] if sum(row) > 0 else -1.0 for i, row in enumerate(steal)]
            victim = loaded.index(max(loaded))
            expert = self._tail_expert(victim, steal[victim])
        self.steals += 1
        self._enqueue(w, self._steal(victim, expert, steal[victim][expert]), self.now)

    def _take_pool(self, e: int) -> list[int]:
        """Pop the longest pooled requests of expert ``e`` until their predicted seconds reach the quantum."""
        ids, got = self.pool[e], []
        work = 0.0
        p, pw = self.p, self.pwork[e]
        pred, bucket = p.pred_list, p.bucket_list
        while ids and (not got or work < self.quantum):
            r = ids.pop()
            got.append(r)
            work += pred[r]
            left = pw[bucket[r]] - pred[r]
            pw[bucket[r]] = left if left > 0.0 else 0.0  # no negative float residue (max() costs a call)
        if not ids:
            self.pwork[e] = [0.0] * len(pw)  # no float residue once the expert's pool is empty
        self.pool_total -= len(got)
        self.pcount[e] -= len(got)
        return got

    def _tail_expert(self, victim: int, stealable: list[float]) -> int:
        """The expert of the last stealable request queued on ``victim``."""
        for r in reversed(self.track[victim]):
            e = self.p.expert_list[r]
            if stealable[e] > 0:
                return e
        raise PlanError(f"reschedule env: worker {victim} has nothing to steal")

    def _steal(self, victim: int, e: int, available: float) -> list[int]:
        """Remove the tail requests of expert ``e`` (about half of ``available`` seconds) from ``victim``'s queue."""
        p, tr = self.p, self.track[victim]
        got, work = [], 0.0
        for r in reversed(tr):
            if p.expert_list[r] != e:
                continue
            if got and work >= available / 2:
                break
            got.append(r)
            work += p.pred_list[r]
        taken = set(got)
        self.sims[victim].remove_pending(taken)
        self.track[victim] = deque(r for r in tr if r not in taken)
        count = self.qcount[victim]
        count[e] -= len(got)
        left = self.qwork[victim][e] - work
        self.qwork[victim][e] = max(left, _MIN_WORK) if count[e] else 0.0
        self._refresh(victim)
        got.reverse()  # keep the victim's order (longest first within a planned run)
        return got

    def _enqueue(self, w: int, ids: list[int], now: float | None) -> None:
        reqs, expert_of, pred = self.p.sim_requests, self.p.expert_list, self.p.pred_list
        self.sims[w].enqueue([reqs[r] for r in ids], now)
        self.track[w].extend(ids)
        work, count = self.qwork[w], self.qcount[w]
        for r in ids:
            e = expert_of[r]
            queued = work[e] + pred[r]
            work[e] = queued if queued > _MIN_WORK else _MIN_WORK
            count[e] += 1
        self._sync(w)

    # --- the event loop ----------------------------------------------------------------------------------------

    def _sync(self, i: int) -> None:
        """Mirror admissions of worker ``i`` (its queue shrank from the front) and refresh its next event time."""
        sim, tr = self.sims[i], self.track[i]
        n_queued = sim.queued
        if len(tr) > n_queued:
            p, work, count = self.p, self.qwork[i], self.qcount[i]
            expert_of, pred_s = p.expert_list, p.pred_list
            admitted = [tr.popleft() for _ in range(len(tr) - n_queued)]
            total = 0.0
            for r in admitted:
                e, s = expert_of[r], pred_s[r]
                total += s
                count[e] -= 1
                left = work[e] - s
                work[e] = (left if left > _MIN_WORK else _MIN_WORK) if count[e] else 0.0
            self.admitted_pred[i] += total
            self.executed[i].extend(admitted)
        self._refresh(i)

    def _refresh(self, i: int) -> None:
        """Worker ``i``'s next event time and the time before which no decision can come from it."""
        sim = self.sims[i]
        self.next_t[i] = sim.next_event_time()
        lookahead = self.lookahead and len(self.track[i]) >= 2
        self.calm_t[i] = sim.dry_bound() if lookahead else self.next_t[i]

    def _wants_decision(self, i: int) -> bool:
        if self.track[i] or self.mode[i] != _ACTIVE:
            return False
        return self.pool_total > 0 or any(self.track)  # track[i] is empty: any other queue

    def advance(self) -> bool:
        """Run the workers to the next decision point with at least two valid actions (actions with a single
        valid choice are applied on the way). Returns False when every request has finished."""
        while True:
            if self._ask:
                self._catch_up()
            for i in sorted(self._ask) if self._ask else ():
                self._ask.discard(i)
                if not self._wants_decision(i):
                    continue
                self.deciding = i
                mask = self._valid(i)
                n_valid = sum(mask)
                if n_valid >= 2:
                    return True
                if n_valid == 1:
                    self.apply(mask.index(True))
                self.deciding, self._decision = None, None
            if self.pool_total == 0 and not any(self.track):
                return self._drain()
            t = min(self.next_t)
            if t == INF:
                raise PlanError("reschedule env: work is left but no worker can run it")  # a dispatcher bug
            i = self.next_t.index(t)
            self._event(i)

    def _event(self, i: int) -> None:
        """Apply the next event of worker ``i`` (the earliest of all workers) and the run of its events after it
        that cannot create a decision point: while requests stay queued, up to the admission that empties the
        queue and no later than another worker could need a decision (:attr:`calm_t`; workers left behind catch
        up before a decision, :meth:`_catch_up`); with none queued, until it goes idle, up to the next event of
        any other worker."""
        sim = self.sims[i]
        was_idle = sim.is_idle
        nt, own = self.next_t, self.next_t[i]
        if self.track[i]:  # up to the first moment a decision could come from another worker
            calm = self.calm_t
            mine, calm[i] = calm[i], INF
            limit = min(calm)
            calm[i] = mine
            sim.advance_until_dry(limit if limit > own else own)
        else:
            nt[i] = INF
            limit = min(nt)  # the next event of any other worker
            nt[i] = own
            sim.advance(limit if limit > own else own, _MANY)
        if sim.clock > self.now:
            self.now = sim.clock
        self._sync(i)
        if not self.track[i]:
            self._ask.add(i)
        if sim.is_idle and not was_idle:
            if self.mode[i] == _WAIT_IDLE:
                self.mode[i] = _ACTIVE
            for j, m in enumerate(self.mode):
                if j != i and m == _WAIT_OTHER:
                    self.mode[j] = _ACTIVE
                    self._ask.add(j)

    def _catch_up(self) -> None:
        """Before a decision at :attr:`now`: apply every other worker's events that end before it (they cannot
        create a decision: :attr:`calm_t`), so the decision sees every worker as it is at that moment."""
        now = self.now
        for k, sim in enumerate(self.sims):
            if self.next_t[k] < now:
                if self.track[k]:
                    sim.advance_until_dry(now)
                else:
                    sim.advance(now, _MANY)
                self._sync(k)
                if not self.track[k]:  # its queue ran dry at ``now`` itself (a tie)
                    self._ask.add(k)

    def _drain(self) -> bool:
        """Nothing is left to decide: run every worker to the end."""
        for i, sim in enumerate(self.sims):
            sim.run_until_idle()
            self._sync(i)
        self.now = max(self.now, self.makespan())
        self.deciding, self._decision = None, None
        return False
