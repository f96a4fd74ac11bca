"""WorkerSim timing: closed form vs a brute-force per-step loop, limits, arrivals, loads, the incremental API."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.core.errors import ProfileError
from mosaic.core.trace import LoadRecord, RequestRecord
from mosaic.runtime.sim_worker import (
    _WORKER_STATE,
    SimRequest,
    WorkerSim,
    discard,
    split_lines,
    split_seconds,
    split_steps_to_reach,
    steps_to_reach,
)


def _worker(table, resident=None, start=0.0):
    return WorkerSim(0, table.__getitem__, "expert", start, resident)


def _whole_run(items, table, resident):
    """A worker that ran ``items`` in one call."""
    sim = _worker(table, resident)
    sim.enqueue(items)
    sim.run_until_idle()
    return sim


def _timings(sim):
    reqs = {r.request_id: (r.start, r.end) for r in sim.records if isinstance(r, RequestRecord)}
    loads = [(r.expert, r.start, r.end) for r in sim.records if isinstance(r, LoadRecord)]
    return reqs, loads


def test_single_request_is_prefill_plus_closed_form_decode(rt):
    mc = rt.mcost(load_s=7.0, prefill_tps=400.0, base=0.03, per_seq=0.002, per_kv=2e-5)
    prompt, out = 120, 57
    sim = _worker({"a": mc})
    sim.enqueue([SimRequest(0, 0, "a", prompt, out, 0.0)])
    sim.run_until_idle()
    loop = sum(mc.step_time(1, prompt + i) for i in range(out))  # brute force, one step at a time
    closed = out * mc.step_time(1, prompt) + mc.step_per_kv_token_s * out * (out - 1) / 2
    (rec,) = [r for r in sim.records if isinstance(r, RequestRecord)]
    (load,) = [r for r in sim.records if isinstance(r, LoadRecord)]
    assert (load.start, load.end) == (0.0, 7.0)
    assert rec.start == 7.0
    assert rec.end - rec.start == pytest.approx(prompt / 400.0 + loop, rel=1e-12)
    assert closed == pytest.approx(loop, rel=1e-12)
    assert sim.busy_s == pytest.approx(rec.end - rec.start) and sim.loading_s == 7.0


def test_step_is_the_max_of_two_lines_with_a_crossover(rt):
    """One request, memory line 10 ms + 1 us/KV token, compute line 2 ms + 5 us/KV token: the compute line takes
    over once the KV holds more than 2000 tokens (step j holds 1990 + j), so steps 0-10 cost the first line and
    steps 11-19 the second, summed by hand."""
    mc = rt.mcost(prefill_tps=1e12, base=0.010, per_seq=0.0, per_kv=1e-6, cbase=0.002, cseq=0.0, ckv=5e-6)
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 1990, 20, 0.0)])
    sim.run_until_idle()
    memory = sum(0.010 + 1e-6 * (1990 + j) for j in range(11))  # j <= 10: 1990 + j <= 2000 (a tie at 2000)
    compute = sum(0.002 + 5e-6 * (1990 + j) for j in range(11, 20))
    assert sim.records[0].end == pytest.approx(1990 / 1e12 + memory + compute, rel=1e-12)
    assert mc.step_time(1, 2001) == pytest.approx(0.002 + 5e-6 * 2001) and mc.step_time(1, 1999) == 0.010 + 1e-6 * 1999


@settings(max_examples=300, deadline=None)
@given(c1=st.floats(0.0, 1.0), h1=st.sampled_from([0.0, 1e-6, 1e-3, 0.5]), c2=st.floats(0.0, 1.0),
       h2=st.sampled_from([0.0, 2e-6, 3e-3, 0.7]), n=st.integers(1, 400), gap=st.floats(1e-6, 50.0))  # fmt: skip
def test_split_lines_equal_a_per_step_max(c1, h1, c2, h2, n, gap):
    ca, ha, cb, hb, k = split_lines(c1, h1, c2, h2)
    steps = [max(c1 + h1 * j, c2 + h2 * j) for j in range(n)]
    assert split_seconds(n, ca, ha, cb, hb, k) == pytest.approx(sum(steps), rel=1e-9, abs=1e-12)
    m = split_steps_to_reach(gap, ca, ha, cb, hb, k)
    if m <= n:  # the smallest step count whose seconds reach the gap
        assert sum(steps[:m]) >= gap * (1 - 1e-9) and (m == 1 or sum(steps[: m - 1]) < gap * (1 + 1e-9))
    else:
        assert sum(steps) < gap * (1 + 1e-9)


PAGED = dict(prefill_tps=10.0, base=0.1, per_seq=0.0, per_kv=0.0, block=4, memory="paged")


def test_paged_preempts_the_latest_request_and_resumes_it_by_recompute(rt):
    """Blocks of 4 tokens, 4 blocks (16 tokens); A and B: prompt 4, 8 output tokens; prefill 10 tokens/s, 0.1 s a
    step. A: admitted at 0 (1 block + its first step's), prefill to 0.4; B: 1 + 1 + 1 + 1 = 4 blocks fit, prefill to
    0.8. Step 0 takes a block each (both hold 4 tokens): 4 used. Steps 1-3 take none: 1.2 s, 8 tokens each. Step 4
    needs a block each, none is free: B (admitted last) is preempted with 4 tokens generated, freeing 2; A runs
    steps 4-7 alone (a 3rd block) and ends at 1.6. B is prefilled again over 4 + 4 tokens (0.8 s, to 2.4), decodes
    its 4 remaining tokens and ends at 2.8, with 8 output tokens and its first start, 0.4."""
    sim = _worker({"a": rt.mcost(kv_cap=16, **PAGED)}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 4, 8, 0.0), SimRequest(1, 1, "a", 4, 8, 0.0)])
    sim.run_until_idle()
    reqs = {r.request_id: r for r in sim.records}
    assert [reqs[0].start, reqs[0].end, reqs[1].start, reqs[1].end] == pytest.approx([0.0, 1.6, 0.4, 2.8])
    assert reqs[1].output_tokens == 8 and sim.preemptions == 1 and sim.decode_steps == 12
    assert sim.busy_s == pytest.approx(2.8)  # the recomputed prefill is busy time too
    reserve = _worker({"a": rt.mcost(kv_cap=16, **{**PAGED, "memory": "reserve"})}, resident="a")
    reserve.enqueue([SimRequest(0, 0, "a", 4, 8, 0.0), SimRequest(1, 1, "a", 4, 8, 0.0)])
    assert reserve.run_until_idle() == pytest.approx(2.4)  # 12 + 12 reserved > 16: one after the other


def test_paged_admits_what_a_reservation_would_not(rt):
    """A: prompt 4, 8 outputs (12 tokens at the end); B: prompt 4, 2 outputs (6). Reserving 12 + 6 > 16 tokens runs
    B after A (A to 1.2, B's prefill to 1.6, 2 steps: 1.8). Paged, both fit: prefills to 0.8, B leaves after step 1
    (1.0) freeing its 2 blocks, A takes its 3rd block at step 4 and ends at 0.8 + 0.8 = 1.6."""
    items = [SimRequest(0, 0, "a", 4, 8, 0.0), SimRequest(1, 1, "a", 4, 2, 0.0)]
    ends = {}
    for memory in ("reserve", "paged"):
        sim = _worker({"a": rt.mcost(kv_cap=16, **{**PAGED, "memory": memory})}, resident="a")
        sim.enqueue(items)
        sim.run_until_idle()
        ends[memory] = [r.end for r in sorted(sim.records, key=lambda r: r.request_id)]
        assert sim.preemptions == 0
    assert ends["reserve"] == pytest.approx([1.2, 1.8]) and ends["paged"] == pytest.approx([1.6, 1.0])


def test_bad_memory_mode_is_a_profile_error(rt):
    sim = _worker({"a": rt.mcost(memory="swap")})
    sim.enqueue([SimRequest(0, 0, "a", 1, 1, 0.0)])
    with pytest.raises(ProfileError, match="memory_mode in"):
        sim.run_until_idle()


def test_batch_shares_steps(rt):
    mc = rt.mcost(prefill_tps=1e12, base=0.01, per_seq=0.0, per_kv=0.0)
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(i, i, "a", 0, 10 * (i + 1), 0.0) for i in range(3)])
    sim.run_until_idle()
    ends = sorted(r.end for r in sim.records)
    assert ends == pytest.approx([0.1, 0.2, 0.3])  # batching: 30 steps in all, not 60
    assert not [r for r in sim.records if isinstance(r, LoadRecord)]  # already resident


def test_max_batch_and_kv_capacity_limit_admission(rt):
    mc = rt.mcost(prefill_tps=1e12, base=0.01, per_seq=0.0, per_kv=0.0, max_batch=2, kv_cap=100)
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(i, i, "a", 0, 10, 0.0) for i in range(3)])
    sim.run_until_idle()
    starts = {r.request_id: r.start for r in sim.records}
    assert starts[2] == pytest.approx(0.1)  # max_batch 2: the third waits for a slot
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 30, 30, 0.0), SimRequest(1, 1, "a", 30, 30, 0.0)])
    sim.run_until_idle()
    starts = {r.request_id: r.start for r in sim.records}
    assert starts[1] == pytest.approx(0.3)  # 60 + 60 reserved > 100 KV tokens: runs after the first


def test_oversized_request_runs_alone(rt):
    mc = rt.mcost(kv_cap=10)
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 50, 50, 0.0)])
    assert sim.run_until_idle() > 0 and sim.completed == 1


def test_arrivals_are_respected_in_order(rt):
    mc = rt.mcost(prefill_tps=1e12, base=0.01, per_seq=0.0, per_kv=0.0)
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 0, 100, 0.0), SimRequest(1, 1, "a", 0, 5, 0.255),
                 SimRequest(2, 2, "a", 0, 5, 0.1)])  # fmt: skip
    sim.run_until_idle()
    starts = {r.request_id: r.start for r in sim.records}
    assert starts[1] == pytest.approx(0.26)  # joins at the first step boundary after its arrival
    assert starts[2] == pytest.approx(0.26)  # arrived earlier but queued behind 1: no skipping ahead
    idle = _worker({"a": mc}, resident="a")
    idle.enqueue([SimRequest(0, 0, "a", 0, 1, 3.0)])
    idle.run_until_idle()
    assert idle.records[0].start == 3.0 and idle.idle_s == pytest.approx(3.0)


def test_load_waits_for_drain_and_starts_before_arrival(rt):
    table = {"a": rt.mcost(load_s=1.0, prefill_tps=1e12, base=0.1, per_seq=0.0, per_kv=0.0), "b": rt.mcost(load_s=2.0)}
    sim = _worker(table, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 0, 10, 0.0), SimRequest(1, 1, "b", 0, 1, 5.0)])
    sim.run_until_idle()
    (load,) = [r for r in sim.records if isinstance(r, LoadRecord)]
    assert load.expert == "b" and (load.start, load.end) == pytest.approx((1.0, 3.0))
    assert next(r for r in sim.records if isinstance(r, RequestRecord) and r.request_id == 1).start == 5.0


def test_swap_costs_unload_plus_load_but_first_load_only_load(rt):
    """Loads of b (nothing resident), a (frees b), b (frees a): free + load in one record, as the real worker."""
    fast = dict(prefill_tps=1e12, base=0.1, per_seq=0.0, per_kv=0.0)
    table = {"a": rt.mcost(load_s=1.0, unload_s=0.25, **fast), "b": rt.mcost(load_s=2.0, unload_s=0.5, **fast)}
    sim = _worker(table)
    sim.enqueue([SimRequest(0, 0, "b", 0, 10, 0.0), SimRequest(1, 1, "a", 0, 10, 0.0),
                 SimRequest(2, 2, "b", 0, 10, 0.0)])  # fmt: skip
    sim.run_until_idle()
    reqs, loads = _timings(sim)
    # b: load 0-2, serve 2-3; a: free b (0.5) + load (1.0) 3-4.5, serve 4.5-5.5; b: free a (0.25) + load (2.0)
    assert [e for e, _, _ in loads] == ["b", "a", "b"]  # approx compares flat sequences of numbers only
    assert [t for _, *ts in loads for t in ts] == pytest.approx([0.0, 2.0, 3.0, 4.5, 5.5, 7.75])
    assert [t for i in range(3) for t in reqs[i]] == pytest.approx([2.0, 3.0, 4.5, 5.5, 7.75, 8.75])
    assert sim.loading_s == pytest.approx(2.0 + 1.5 + 2.25) and sim.busy_s == pytest.approx(3.0)
    resident = _worker(table, resident="a")  # a resident at start: swapping to b frees it first
    resident.enqueue([SimRequest(0, 0, "b", 0, 10, 0.0)])
    resident.run_until_idle()
    ((expert, start, end),) = _timings(resident)[1]
    assert expert == "b" and (start, end) == pytest.approx((0.0, 2.25))


def test_negative_unload_is_a_profile_error(rt):
    sim = _worker({"a": rt.mcost(unload_s=-1.0)})
    sim.enqueue([SimRequest(0, 0, "a", 1, 1, 0.0)])
    with pytest.raises(ProfileError, match="unload_s >= 0"):
        sim.run_until_idle()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("tight", [False, True])
@given(data=st.data())
def test_event_driven_matches_brute_force(rt, data, tight):
    items, table, resident = data.draw(rt.worker_cases(tight=tight))
    sim = _worker(table, resident, start=1.5)
    sim.enqueue(items)
    end = sim.run_until_idle()
    reqs, loads = _timings(sim)
    ref_reqs, ref_loads = rt.brute_force(items, table.__getitem__, 1.5, resident)
    assert set(reqs) == set(ref_reqs) == {r.request_id for r in items}
    for rid, (s, e) in ref_reqs.items():
        assert reqs[rid] == pytest.approx((s, e), rel=1e-9, abs=1e-9), rid
    assert [x[0] for x in loads] == [x[0] for x in ref_loads]
    flat = [v for x in loads for v in x[1:]]
    assert flat == pytest.approx([v for x in ref_loads for v in x[1:]], rel=1e-9, abs=1e-9)
    assert end == pytest.approx(max(e for _, e in ref_reqs.values()), rel=1e-9)
    assert sim.busy_s + sim.loading_s <= sim.clock - sim.start + 1e-9
    outputs = {r.request_id: r.output_tokens for r in sim.records if isinstance(r, RequestRecord)}
    assert outputs == {r.request_id: r.output_tokens for r in items}  # preempted or not, the same output tokens


@settings(max_examples=100, deadline=None)
@pytest.mark.parametrize("tight", [False, True])
@given(data=st.data())
def test_stepping_and_advance_to_equal_one_run(rt, data, tight):
    items, table, resident = data.draw(rt.worker_cases(tight=tight))
    whole, stepped = _whole_run(items, table, resident), _worker(table, resident)
    stepped.enqueue(items)
    while not stepped.is_idle:
        t = stepped.next_event_time()
        assert t == stepped.next_event_time()  # a query, not a step
        stepped.advance_to(t)
        assert stepped.clock == t
    assert stepped.next_event_time() == math.inf
    assert stepped.records == whole.records


@settings(max_examples=100, deadline=None)
@pytest.mark.parametrize("tight", [False, True])
@given(data=st.data())
def test_bulk_advance_equals_one_run_and_next_event_time_is_fresh(rt, data, tight):
    """advance / advance_until_dry in random chunks give the records of one run; the remembered next-event time
    always equals a recomputation; advance_until_dry stops right after the admission that empties the queue."""
    items, table, resident = data.draw(rt.worker_cases(tight=tight))
    whole, sim = _whole_run(items, table, resident), _worker(table, resident)
    sim.enqueue(items)
    while not sim.is_idle:
        t = sim.next_event_time()
        assert t == _recomputed_next(sim, table)
        if sim.queued and data.draw(st.booleans()):  # take the tail out and put it back: the same queue
            last = sim.pending()[-1]
            assert sim.remove_pending({last.request_id}) == [last]
            assert sim.next_event_time() == _recomputed_next(sim, table)
            sim.enqueue([last])
            assert sim.next_event_time() == _recomputed_next(sim, table) == t
        if sim.queued and data.draw(st.booleans()):
            sim.advance_until_dry(t + data.draw(st.floats(0.0, 50.0)))
            assert sim.queued == 0 or sim.next_event_time() > sim.clock
        else:
            sim.advance(t + data.draw(st.floats(0.0, 50.0)), data.draw(st.integers(1, 4)))
    assert sim.records == whole.records


def _recomputed_next(sim, table):
    """The next event time of a copy of ``sim``'s state that has to compute it afresh."""
    fresh = _worker(table)
    fresh.__dict__.update({k: v for k, v in sim.__dict__.items() if k != "_next_known"})
    return fresh.next_event_time()


@settings(max_examples=150, deadline=None)
@pytest.mark.parametrize("tight", [False, True])
@given(data=st.data())
def test_dry_bound_is_a_lower_bound(rt, data, tight):
    items, table, resident = data.draw(rt.worker_cases(tight=tight))
    sim = _worker(table, resident)
    half = len(items) // 2
    sim.enqueue(items[:half])
    sim.dry_bound()  # from here on the queued prefill seconds are a running sum (enqueue, admissions)
    sim.advance(math.inf, data.draw(st.integers(0, half)))
    later = sim.clock + data.draw(st.floats(0.0, 20.0))  # enqueue(now) first runs the worker up to now
    sim.enqueue(items[half:], later if data.draw(st.booleans()) else None)
    sim.advance(math.inf, data.draw(st.integers(0, len(items))))  # somewhere along the run
    bound = sim.dry_bound()
    fresh = sum(r.prompt_tokens / table[r.expert].prefill_tps for r in sim.pending())
    assert sim._prefill_s == pytest.approx(fresh, rel=1e-12, abs=1e-12)
    if sim.queued:
        sim.advance_until_dry(math.inf)
        assert sim.queued == 0 and bound <= sim.clock
    else:
        assert bound == sim.next_event_time()


def test_advance_until_dry_stops_at_the_last_admission(rt):
    mc = rt.mcost(prefill_tps=10.0, base=0.1, per_seq=0.0, per_kv=0.0)
    sim = _worker({"a": mc}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 1, 3, 0.0), SimRequest(1, 1, "a", 1, 3, 0.0)])
    assert sim.advance_until_dry(100.0) == 2  # two admissions (0.1 s prefill each), no decode step
    assert sim.queued == 0 and sim.batch_size == 2 and sim.clock == pytest.approx(0.2)
    assert sim.next_event_time() == pytest.approx(0.2 + 3 * 0.1)


def test_discard_builds_no_records_and_keeps_the_timing(rt):
    items, table, resident = [SimRequest(i, i, "a", 2, 5 + i, 0.0) for i in range(4)], {"a": rt.mcost()}, None
    kept, dropped = _worker(table, resident), WorkerSim(0, table.__getitem__, "expert", 0.0, resident, discard)
    for sim in (kept, dropped):
        sim.enqueue(items)
        sim.run_until_idle()
    assert dropped.records == [] and len(kept.records) == 5  # a load and four requests
    assert (dropped.last_end, dropped.busy_s, dropped.loading_s) == (kept.last_end, kept.busy_s, kept.loading_s)


def test_enqueue_later_and_remove_pending(rt):
    mc = rt.mcost(prefill_tps=1e12, base=0.1, per_seq=0.0, per_kv=0.0)
    sim = _worker({"a": mc, "b": mc}, resident="a")
    sim.enqueue([SimRequest(0, 0, "a", 0, 10, 0.0), SimRequest(1, 1, "a", 0, 10, 0.0)])
    sim.advance_to(0.5)
    assert sim.batch_size == 2 and sim.clock == 0.0
    sim.advance_to(2.0)
    assert sim.is_idle and sim.last_end == pytest.approx(1.0)
    table = {"a": mc, "b": mc}
    sim.next_event_time()  # remembered: enqueue and remove_pending must forget it
    sim.enqueue([SimRequest(2, 2, "a", 0, 1, 0.0), SimRequest(3, 3, "b", 0, 1, 0.0)], now=4.0)
    assert sim.next_event_time() == _recomputed_next(sim, table) == pytest.approx(4.0)  # admission
    assert [r.request_id for r in sim.remove_pending({3, 99})] == [3]
    assert sim.next_event_time() == _recomputed_next(sim, table)
    assert [r.arrival for r in sim.pending()] == [4.0]
    sim.run_until_idle()
    assert sim.records[-1].start == 4.0 and sim.resident == "a"
    assert sim.idle_s == pytest.approx(4.1 - 1.1)  # clock - busy (1.0 then 0.1), nothing loaded


def test_bad_model_cost_is_a_profile_error(rt):
    sim = _worker({"a": rt.mcost(prefill_tps=0.0)})
    sim.enqueue([SimRequest(0, 0, "a", 1, 1, 0.0)])
    with pytest.raises(ProfileError, match="prefill_tps"):
        sim.run_until_idle()


@given(gap=st.floats(1e-6, 1e3), c0=st.floats(0.0, 1.0), h=st.sampled_from([0.0, 1e-6, 1e-3, 0.5]))
def test_steps_to_reach_is_the_smallest_n(gap, c0, h):
    n = steps_to_reach(gap, c0, h)
    if h == 0.0 and (c0 == 0.0 or gap / c0 >= 2**62):
        assert n == 2**62  # never reached within any step count the simulator can run
        return
    assert n >= 1 and n * c0 + h * n * (n - 1) / 2 >= gap
    assert n == 1 or (n - 1) * c0 + h * (n - 1) * (n - 2) / 2 < gap


def test_steps_to_reach_with_denormal_step_cost_never_overflows():
    """A step so cheap that gap / c0 overflows a float means the gap is never reached (found by hypothesis)."""
    from mosaic.runtime.sim_worker import _NEVER

    assert steps_to_reach(1.0, 2.2e-313, 0.0) == _NEVER
    assert steps_to_reach(1.0, 0.3, 0.0) == 4


def test_copy_is_complete_and_independent(rt):
    """A copy mid-run holds every attribute, runs to the same records as the original, and moving either one
    leaves the other where it was."""
    table = {"a": rt.mcost(load_s=2.0), "b": rt.mcost(load_s=3.0)}
    items = [SimRequest(i, i, "ab"[i % 2], 20 + i, 30 + 7 * i, 0.0) for i in range(6)]
    sim = _worker(table)
    sim.enqueue(items)
    sim.advance(math.inf, 3)
    sim.dry_bound()  # starts the queued-prefill tally, which the copy must carry
    twin = sim.copy()
    assert set(vars(twin)) == set(vars(sim)) == set(_WORKER_STATE)
    assert twin._queue is not sim._queue and twin._heap is not sim._heap and twin.records is not sim.records
    state = {k: (list(v) if hasattr(v, "__iter__") else v) for k, v in vars(sim).items() if k != "_emit"}
    twin.enqueue([SimRequest(9, 9, "a", 5, 5, 0.0)], now=twin.clock)
    twin.run_until_idle()
    assert {k: (list(v) if hasattr(v, "__iter__") else v) for k, v in vars(sim).items() if k != "_emit"} == state
    sim.enqueue([SimRequest(9, 9, "a", 5, 5, 0.0)], now=state["clock"])
    sim.run_until_idle()
    assert twin.records == sim.records and sum(isinstance(r, RequestRecord) for r in sim.records) == 7
