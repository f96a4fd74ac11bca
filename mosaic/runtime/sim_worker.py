"""One simulated GPU worker: an event-driven model of a continuous-batching engine with one expert resident.

Timing model (all seconds come from :class:`~mosaic.predictors.interface.ModelCost` of (expert, GPU type)):

- **Order.** The worker runs its queue strictly in order: it never skips ahead of a request that has not
  arrived, does not fit the batch, or needs another expert (head-of-line blocking, like a FIFO engine queue).
- **Loads.** When the head needs an expert that is not resident, the worker first drains its running batch,
  then frees the resident expert (its ``unload_s``; nothing to free when none is resident) and loads the new one
  (``load_s``); only one expert is resident at a time. One :class:`LoadRecord` spans free + load, from the drain
  to the end of the load, as the real engine worker (:mod:`mosaic.runtime.vllm_worker`) records a swap, and
  ``loading_s`` counts both. The swap starts as soon as the batch has drained, even if the head has not arrived
  yet (the plan says what comes next).
- **Admission.** The head joins the batch when it has arrived (``arrival <= clock + ARRIVAL_EPS``), the batch
  holds fewer than ``max_batch`` sequences and its KV fits ``kv_capacity_tokens``. Memory mode ``reserve`` (the
  default): admission reserves the request's full prompt + output tokens (an oracle reservation: the simulator
  knows true lengths, so it never preempts). A request that does not fit even an empty batch runs alone.
- **Paged KV** (memory mode ``paged``, as vLLM): the cache holds ``kv_capacity_tokens // kv_block_tokens``
  blocks; a request holding ``t`` tokens holds ``ceil(t / block)`` of them, taking a new one at each step that
  starts with ``t`` a multiple of the block size. Admission needs the blocks of the tokens it prefills plus the
  next step's new blocks of the whole batch (so admitting never forces a preemption). When a step's new blocks do
  not fit, the most recently admitted running requests are preempted (vLLM v1's policy, by recompute) until they
  do: each goes back to the front of the queue (earliest admitted first) with its blocks freed and its generated
  tokens kept; when admitted again, its prefill recomputes prompt + generated tokens and it decodes the rest, so
  it ends with the same output tokens (its record keeps its first admission as ``start``). The earliest admitted
  request is never preempted (alone it may exceed the cache, as an oversized request runs alone in ``reserve``).
- **Prefill.** Admitting a request adds ``prompt_tokens / prefill_tps`` seconds to the worker clock and stalls
  the running batch meanwhile (prefill and decode do not overlap). Prefill writes the prompt to the KV cache and
  produces no output token; the request counts as in the batch (busy) from its admission.
- **Decode.** A step of a batch of ``b`` sequences holding ``kv`` KV tokens takes ``step_time(b, kv)`` and adds
  one token to every sequence (kv grows by ``b``). A request with ``o`` output tokens leaves after ``o`` steps,
  freeing its ``prompt + o`` KV tokens. Between events the batch is fixed, so ``n`` steps from ``kv0`` take
  ``n * step_time(b, kv0) + step_per_kv_token_s * b * n (n - 1) / 2`` (closed form, no per-step loop). With a
  second step line (``ModelCost.has_compute_line``) a step is the larger of two lines, each linear in the step
  index, so the steps split at one crossover into two such sums (:func:`split_lines`). Requests wait for the step
  boundary at or after their arrival to join a running batch.

Each event costs O(log n): a per-worker step counter and a heap of finish steps. ``RequestRecord.start`` is the
admission time, ``end`` the completion time. The incremental API (``enqueue``, ``next_event_time``, ``step``,
``advance_to``, ``run_until_idle``, ``remove_pending`` and the state queries) lets an environment run several
workers in lockstep and move work between them without re-implementing any timing.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import NamedTuple

from mosaic.core.errors import ProfileError
from mosaic.core.trace import EXPERT_STAGE, LoadRecord, Record, request_record
from mosaic.core.types import Response
from mosaic.predictors.interface import MEMORY_MODES, ModelCost
from mosaic.runtime.sim_steps import (
    _NEVER,
    blocks_allocated,
    split_lines,
    split_seconds,
    split_steps_to_reach,
    steps_that_fit,
    steps_to_reach,
)

__all__ = ["ARRIVAL_EPS", "SimRequest", "WorkerSim", "discard", "split_lines", "split_seconds",
           "split_steps_to_reach", "steps_to_reach"]  # fmt: skip

ARRIVAL_EPS = 1e-9  # a request counts as arrived when arrival <= clock + ARRIVAL_EPS (absorbs float noise)
_INF = math.inf


def discard(_record: Record) -> None:
    """An ``emit`` that drops every record: the worker then builds none (environments that need only timing)."""
    return None


class SimRequest(NamedTuple):
    """One request as a worker sees it (a tuple, for speed: the simulator builds one per request)."""

    request_id: int
    query_id: int
    expert: str
    prompt_tokens: int
    output_tokens: int  # true output length, replayed
    arrival: float  # earliest time the worker may admit it (seconds, run clock)
    response: Response | None = None  # replayed answer, copied into the RequestRecord


_Params = tuple[float, float, float, float, float, int, int, float, float, float, float, bool, int, bool, int]


def _params(mc: ModelCost, expert: str) -> _Params:
    """ModelCost as a plain tuple, validated (a bad profile raises ProfileError naming the expert)."""
    bad = [
        name
        for name, ok in (
            ("load_s >= 0", mc.load_s >= 0),
            ("prefill_tps > 0", mc.prefill_tps > 0),
            ("step_base_s >= 0", mc.step_base_s >= 0),
            ("step_per_seq_s >= 0", mc.step_per_seq_s >= 0),
            ("step_per_kv_token_s >= 0", mc.step_per_kv_token_s >= 0),
            ("max_batch >= 1", mc.max_batch >= 1),
            ("kv_capacity_tokens >= 1", mc.kv_capacity_tokens >= 1),
            ("unload_s >= 0", mc.unload_s >= 0),
            ("step_compute_base_s >= 0", mc.step_compute_base_s >= 0),
            ("step_compute_per_seq_s >= 0", mc.step_compute_per_seq_s >= 0),
            ("step_compute_per_kv_token_s >= 0", mc.step_compute_per_kv_token_s >= 0),
            ("kv_block_tokens >= 1", mc.kv_block_tokens >= 1),
            (f"memory_mode in {MEMORY_MODES}", mc.memory_mode in MEMORY_MODES),
        )
        if not ok
    ]
    if bad:
        raise ProfileError(f"cost of expert {expert!r} violates {', '.join(bad)}: {mc}")
    return (float(mc.load_s), float(mc.prefill_tps), float(mc.step_base_s), float(mc.step_per_seq_s),
            float(mc.step_per_kv_token_s), int(mc.max_batch), int(mc.kv_capacity_tokens), float(mc.unload_s),
            float(mc.step_compute_base_s), float(mc.step_compute_per_seq_s), float(mc.step_compute_per_kv_token_s),
            mc.has_compute_line, int(mc.kv_block_tokens), mc.memory_mode == "paged",
            max(1, int(mc.kv_capacity_tokens) // max(1, int(mc.kv_block_tokens))))  # fmt: skip


# every attribute of a WorkerSim (``WorkerSim.copy``; a test checks that the list is complete)
_WORKER_STATE = ("worker_id", "stage", "start", "clock", "resident", "busy_s", "loading_s", "last_end", "completed",
                 "records", "_emit", "_cost_of", "_cache", "_queue", "_heap", "_step", "_kv", "_reserved", "_seq",
                 "_next", "_next_known", "_prefill_s", "_used", "_cls", "_preempted", "_order",
                 "preemptions")  # fmt: skip


class WorkerSim:
    """A simulated worker (one GPU). Records go to ``emit`` (default: appended to :attr:`records`).

    ``cost_of(expert)`` returns the expert's :class:`ModelCost` on this worker's GPU type.
    """

    def __init__(
        self,
        worker_id: int,
        cost_of: Callable[[str], ModelCost],
        stage: str = EXPERT_STAGE,
        start: float = 0.0,
        resident: str | None = None,
        emit: Callable[[Record], None] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.stage = stage
        self.start = float(start)
        self.clock = float(start)  # time of the last applied event (or of the last enqueue(now) while idle)
        self.resident = resident  # expert loaded now (None: nothing)
        self.busy_s = 0.0  # seconds with a non-empty batch (prefill included)
        self.loading_s = 0.0  # seconds loading models
        self.last_end = float(start)  # when the last request finished (start if none yet)
        self.completed = 0  # requests finished
        self.records: list[Record] = []
        self._emit = emit if emit is not None else self.records.append
        self._cost_of = cost_of
        self._cache: dict[str, _Params] = {}
        self._queue: deque[SimRequest] = deque()  # not yet admitted, in execution order
        self._heap: list[tuple[int, int, float, SimRequest]] = []  # (finish step, admission seq, start, request)
        self._step = 0  # decode steps run so far
        self._kv = 0  # KV tokens held by the running batch
        self._reserved = 0  # KV tokens reserved by the running batch (prompt + output each)
        self._seq = 0  # admissions so far (heap tie-break)
        self._next = _INF  # end time of the next event, set by _run
        self._next_known = False  # _next holds for the current state (no request moved since the last _run)
        self._prefill_s: float | None = None  # prefill seconds of the queued requests (None: not tracked yet)
        self._used = 0  # paged KV: blocks held by the running batch
        self._cls: list[int] = []  # paged KV: running requests per phase (tokens - step) mod block (sim_steps)
        self._preempted: dict[int, tuple[int, float]] = {}  # queued preempted request -> (generated, first start)
        self._order: list[tuple[int, int, float, SimRequest]] = []  # paged KV: heap entries by admission (+ done)
        self.preemptions = 0  # requests preempted so far (paged KV)

    # --- state queries ---------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return len(self._heap)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def kv_tokens(self) -> int:
        return self._kv

    @property
    def decode_steps(self) -> int:
        """Decode steps run so far (every step adds one token to each running sequence)."""
        return self._step

    @property
    def is_idle(self) -> bool:
        """Nothing running and nothing queued."""
        return not self._heap and not self._queue

    @property
    def idle_s(self) -> float:
        """Seconds since ``start`` neither serving nor loading, up to :attr:`clock`."""
        return max(self.clock - self.start - self.busy_s - self.loading_s, 0.0)

    @property
    def head(self) -> SimRequest | None:
        """The next queued request (None when nothing is queued)."""
        return self._queue[0] if self._queue else None

    @property
    def loading(self) -> str | None:
        """The expert whose load is under way (the batch drained, the head needs another expert), else None."""
        head = self._queue[0] if self._queue and not self._heap else None
        return head.expert if head is not None and head.expert != self.resident else None

    def pending(self) -> tuple[SimRequest, ...]:
        """Queued requests not yet admitted, in execution order."""
        return tuple(self._queue)

    def running(self) -> tuple[SimRequest, ...]:
        """Requests in the batch, in finishing order."""
        return tuple(item for *_, item in sorted(self._heap))

    def cost(self, expert: str) -> _Params:
        """(load_s, prefill_tps, step_base_s, step_per_seq_s, step_per_kv_token_s, max_batch, kv_capacity,
        unload_s, step_compute_base_s, step_compute_per_seq_s, step_compute_per_kv_token_s, has_compute_line,
        kv_block_tokens, paged, KV blocks)."""
        p = self._cache.get(expert)
        if p is None:
            p = self._cache[expert] = _params(self._cost_of(expert), expert)
        return p

    def copy(self) -> WorkerSim:
        """An independent copy of the worker's state (queue, running batch, clocks). It shares the read-only cost
        cache; records go to a copy of :attr:`records` when they go there, else to the same ``emit``.

        Built attribute by attribute on a new object: ``copy.copy`` goes through ``__dict__``, which in CPython
        3.11 leaves both objects with slower attribute access (the simulator's hot loop reads many)."""
        new = object.__new__(WorkerSim)
        for name in _WORKER_STATE:
            setattr(new, name, getattr(self, name))
        new._queue, new._heap = deque(self._queue), self._heap[:]  # their items are tuples (immutable)
        new._cls, new._preempted, new._order = self._cls[:], dict(self._preempted), self._order[:]
        if self._emit == self.records.append:
            new.records = self.records[:]
            new._emit = new.records.append
        return new

    # --- incremental API -------------------------------------------------------------------------------------

    def enqueue(self, requests: Iterable[SimRequest], now: float | None = None) -> None:
        """Append requests to the queue. With ``now``: first advance to ``now``, admit nothing before it, and
        let an idle worker's clock jump to ``now`` (it cannot have started the new work earlier).
        The next event depends on the queue's head only, so it changes only when the queue was empty."""
        requests = list(requests)
        if now is not None:
            if not (self._next_known and self._next > now):  # else no event ends by ``now``
                self.advance_to(now)
            if self.is_idle and self.clock < now:
                self.clock = float(now)
        if self._prefill_s is not None:  # kept up to date once dry_bound has asked for it
            self._prefill_s += self._prefill_of(requests)
        self._next_known = self._next_known and bool(self._queue)
        if now is None:
            self._queue.extend(requests)
            return
        now = float(now)
        new = tuple.__new__  # SimRequest._replace(arrival=now), without its per-call overhead (the env's hot path)
        self._queue.extend(r if r[5] >= now else new(SimRequest, (*r[:5], now, r[6])) for r in requests)

    def remove_pending(self, request_ids: Collection[int]) -> list[SimRequest]:
        """Take the queued (not yet admitted) requests whose ids are in ``request_ids`` out of the queue. A preempted
        one keeps its generated tokens here (enqueued here again, it resumes); another worker starts it afresh."""
        ids = set(request_ids)
        taken = [r for r in self._queue if r.request_id in ids]
        if taken:
            head = self._queue[0]
            self._queue = deque(r for r in self._queue if r.request_id not in ids)
            if self._prefill_s is not None:
                self._prefill_s = self._prefill_of(self._queue)  # recomputed: no residue from subtracting
            self._next_known = self._next_known and bool(self._queue) and self._queue[0] is head
        return taken

    def next_event_time(self) -> float:
        """End time of the next event (admission + prefill, load, wait, decode to a completion); inf if idle."""
        if not self._next_known:
            self._run(-_INF, 1)
        return self._next

    def dry_bound(self) -> float:
        """A lower bound on when the queue runs dry (the end of the admission of its last request; the next event's
        end when nothing is queued): every admission after the next event adds its prefill, and a head that needs
        another expert first waits for the running batch's remaining decode steps (``step_base_s`` each at least)
        and the unload + load."""
        nxt = self.next_event_time()
        queue = self._queue
        if self._prefill_s is None:  # tracked from now on (enqueue, admissions, remove_pending)
            self._prefill_s = self._prefill_of(queue)
        if not queue:
            return nxt
        shrink = 1.0 - 1e-9  # the sums here add in another order than the clock does
        head = queue[0][2]
        if head == self.resident:
            return nxt + shrink * (self._prefill_s - queue[0][3] / self.cost(head)[1])
        steps = max(item[0] for item in self._heap) - self._step if self._heap else 0
        if self.resident is not None:
            load = self.cost(self.resident)[7] + self.cost(head)[0]
            drain = self.clock + steps * self.cost(self.resident)[2]
        else:
            load, drain = self.cost(head)[0], self.clock
        return max(nxt, drain + shrink * (load + self._prefill_s))

    def _prefill_of(self, requests: Iterable[SimRequest]) -> float:
        """Prefill seconds of ``requests``, each at its expert's prefill rate."""
        cache, total = self._cache, 0.0
        for r in requests:
            total += r[3] / (cache.get(r[2]) or self.cost(r[2]))[1]
        return total

    def step(self) -> float:
        """Apply exactly one event (nothing when idle); returns the clock."""
        self._run(_INF, 1)
        return self.clock

    def advance_to(self, t: float) -> int:
        """Apply every event that ends at or before ``t``; returns how many."""
        return self._run(t, _NEVER)

    def advance(self, limit: float, max_events: int) -> int:
        """Apply events that end at or before ``limit``, at most ``max_events``; returns how many."""
        return self._run(limit, max_events)

    def advance_until_dry(self, limit: float) -> int:
        """Apply events that end at or before ``limit`` until the queue is empty (the event admitting the last
        queued request is the last one applied); returns how many."""
        return self._run(limit, _NEVER, True)

    def run_until_idle(self) -> float:
        """Run everything queued; returns when the last request finished."""
        self._run(_INF, _NEVER)
        return self.last_end

    # --- the event loop --------------------------------------------------------------------------------------

    def _run(self, limit: float, max_events: int, until_dry: bool = False) -> int:
        """Apply events while the next one ends at or before ``limit``, at most ``max_events`` (``until_dry``: and
        none after the one that admits the last queued request). The next event's end is always left in _next.

        One flat loop with the state in locals: it is the simulator's hot path (profiled), hence its length.
        """
        queue, heap, emit, stage, wid = self._queue, self._heap, self._emit, self.stage, self.worker_id
        keep = emit is not discard  # build records at all
        push, pop = heapq.heappush, heapq.heappop
        t, s, kv, reserved, seq = self.clock, self._step, self._kv, self._reserved, self._seq
        busy, loading, last_end, done = self.busy_s, self.loading_s, self.last_end, 0
        resident, prefill_s = self.resident, self._prefill_s
        used, cls, pre = self._used, self._cls, self._preempted  # paged KV: blocks held, phase counts, resumes
        order, gone = self._order, set()  # paged KV: entries by admission; seqs of preempted entries still in heap
        tps = base = per_seq = per_kv = unload = cbase = cseq = ckv = 0.0  # unload: seconds to free the resident
        mb = kvcap = 0
        two = paged = False  # the resident's step has a second line (max of two); its KV is paged
        blk = nblk = 1  # paged KV: tokens per block, blocks in the cache
        if resident is not None:
            p = self._cache.get(resident) or self.cost(resident)
            _, tps, base, per_seq, per_kv, mb, kvcap, unload, cbase, cseq, ckv, two, blk, paged, nblk = p
            if paged and len(cls) != blk:
                cls = self._cls = [0] * blk
        events = 0
        nxt = _INF
        while True:
            if events >= max_events:
                limit = -_INF  # apply nothing more, but still find when the next event ends
            b = len(heap) - len(gone)
            wait_arrival = _INF  # a same-expert head that fits but has not arrived: decode only until it does
            if queue:
                head = queue[0]
                if head[2] != resident:
                    if not b:  # drained: free the resident expert, load the next one
                        nl = self.cost(head[2])
                        end = t + unload + nl[0]
                        if end > limit:
                            nxt = end
                            break
                        if keep:
                            emit(LoadRecord(stage, wid, head[2], t, end))
                        loading += end - t
                        t = end
                        resident = head[2]
                        _, tps, base, per_seq, per_kv, mb, kvcap, unload, cbase, cseq, ckv, two, blk, paged, nblk = nl
                        if paged and len(cls) != blk:  # the batch is empty: no phase to keep
                            cls = self._cls = [0] * blk
                        events += 1
                        continue
                elif b < mb:
                    if paged:  # its prefill's blocks and the next step's new blocks must fit
                        res = pre.get(head[0]) if pre else None
                        tk = head[3] + res[0] if res else head[3]  # prefill tokens: prompt (+ generated, resumed)
                        ok = not b or used + (tk + blk - 1) // blk + cls[-s % blk] + (tk % blk == 0) <= nblk
                    else:
                        ok = not b or reserved + head[3] + head[4] <= kvcap
                    if ok:
                        if head[5] <= t + ARRIVAL_EPS:  # admit + prefill
                            end = t + (tk if paged else head[3]) / tps
                            if end > limit:
                                nxt = end
                                break
                            queue.popleft()
                            if prefill_s is not None:  # the env's running sum (dry_bound)
                                prefill_s = prefill_s - head[3] / tps if queue else 0.0
                            if until_dry and not queue:
                                limit = -_INF  # the queue ran dry: apply nothing more
                            if not paged:
                                push(heap, (s + head[4], seq, t, head))
                                kv += head[3]
                                reserved += head[3] + head[4]
                            else:
                                e = (s + head[4] - res[0], seq, res[1], head) if res else (s + head[4], seq, t, head)
                                if res:
                                    del pre[head[0]]
                                push(heap, e)
                                order.append(e)
                                if len(order) > 2 * b + 64:  # drop the finished (they pile up between preemptions)
                                    order[:] = [x for x in order if x[0] >= s]
                                kv += tk
                                used += (tk + blk - 1) // blk
                                cls[(tk - s) % blk] += 1
                            seq += 1
                            busy += end - t
                            t = end
                            events += 1
                            continue
                        if not b:  # idle until the head arrives (no skipping ahead)
                            if head[5] > limit:
                                nxt = head[5]
                                break
                            t = head[5]
                            events += 1
                            continue
                        wait_arrival = head[5]
            if not b:
                break  # nothing queued, nothing running
            if gone:  # the earliest finish must be a running entry's
                while heap[0][1] in gone:
                    gone.discard(pop(heap)[1])
            c0 = base + per_seq * b + per_kv * kv
            h = per_kv * b
            n = heap[0][0] - s
            if paged and b > 1 and n > 1 and nblk - used < b * (n // blk + 1):  # blocks may run out before s + n
                fit = steps_that_fit(cls, s, blk, b, nblk - used, n)
                if fit < n:
                    n = max(fit, 1)  # >= 1 always holds: admissions and preemptions leave the next step room
            if two:  # max of two lines: one crossover splits the steps into two sums
                ca, ha, cb, hb, k = split_lines(c0, h, cbase + cseq * b + ckv * kv, ckv * b)
                if wait_arrival < _INF:
                    n = min(n, split_steps_to_reach(wait_arrival - ARRIVAL_EPS - t, ca, ha, cb, hb, k))
                end = t + split_seconds(n, ca, ha, cb, hb, k)
            else:
                if wait_arrival < _INF:
                    n = min(n, steps_to_reach(wait_arrival - ARRIVAL_EPS - t, c0, h))
                end = t + n * c0 + h * (n * (n - 1) * 0.5)
            if end > limit:
                nxt = end
                break
            busy += end - t
            t = end
            if paged:
                used += cls[-s % blk] if n == 1 else blocks_allocated(cls, s, blk, b, n)  # one step: its phase
            s += n
            kv += b * n
            events += 1
            while heap and heap[0][0] <= s:
                _, q, st, it = pop(heap)
                if gone and q in gone:  # preempted: its entry was left in the heap
                    gone.discard(q)
                    continue
                tokens = it[3] + it[4]
                kv -= tokens
                if paged:
                    used -= (tokens + blk - 1) // blk
                    cls[(tokens - s) % blk] -= 1
                else:
                    reserved -= tokens
                r = it[6]
                if keep and r is None:
                    emit(request_record(stage, it[0], it[1], it[2], wid, st, t, it[3], it[4]))
                elif keep:
                    emit(request_record(stage, it[0], it[1], it[2], wid, st, t, it[3], it[4], r.answer, r.correct,
                                       r.text))  # fmt: skip
                done += 1
                last_end = t
            if paged and len(heap) - len(gone) > 1 and used + cls[-s % blk] > nblk:  # the next step's blocks don't fit
                used, kv, prefill_s = self._preempt(s, used, kv, prefill_s, blk, nblk, tps, gone)
        if gone:  # outside the loop the heap holds the running entries only
            heap[:] = [x for x in heap if x[1] not in gone]
            heapq.heapify(heap)
        self.clock, self._step, self._kv, self._reserved, self._seq = t, s, kv, reserved, seq
        self.busy_s, self.loading_s, self.last_end, self.resident = busy, loading, last_end, resident
        self._prefill_s, self._used = prefill_s, used
        self.completed += done
        self._next, self._next_known = nxt, True
        return events

    def _preempt(
        self, s: int, used: int, kv: int, prefill_s: float | None, blk: int, nblk: int, tps: float, gone: set[int]
    ) -> tuple[int, int, float | None]:
        """Preempt the most recently admitted running requests (vLLM v1, by recompute) until step ``s``'s new blocks
        fit, never the earliest admitted; they return to the queue's front, earliest admitted first, keeping their
        generated tokens and first start. Returns the updated (blocks held, KV tokens, queued prefill seconds).

        The victim is the last entry of the admission order that has not finished (O(1) amortised); its heap entry
        stays, its sequence number joins ``gone`` (the event loop skips it)."""
        order, cls = self._order, self._cls
        live = len(self._heap) - len(gone)
        need = cls[-s % blk]
        victims: list[SimRequest] = []
        while live > 1 and used + need > nblk:
            f, q, st, it = order.pop()
            if f <= s:  # finished already
                continue
            gone.add(q)
            live -= 1
            tokens = it[3] + it[4] - (f - s)  # KV tokens it holds now
            used -= (tokens + blk - 1) // blk
            kv -= tokens
            cls[(tokens - s) % blk] -= 1
            need -= tokens % blk == 0
            self._preempted[it[0]] = (it[4] - (f - s), st)
            victims.append(it)
        self._queue.extendleft(victims)  # reversed: the earliest admitted ends up first
        self.preemptions += len(victims)
        if prefill_s is not None:
            prefill_s += sum(it[3] for it in victims) / tps
        return used, kv, prefill_s
