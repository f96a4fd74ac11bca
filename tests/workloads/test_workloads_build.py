"""Workloads: question loading, skill routing, the calibrated synthetic responses and the paper presets."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mosaic.core.config import parse_config
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.trace import RequestRecord, TraceWriter
from mosaic.core.types import Expert, ExpertKind
from mosaic.pipeline import prepare, workload_rng
from mosaic.workloads import (
    PRESETS,
    build_workload,
    demand_ratio,
    expert_means,
    load_questions,
    split_options,
)
from mosaic.workloads.build import response_model, synthetic_difficulty
from mosaic.workloads.synthetic import MAX_TOKENS, MIN_TOKENS, _length, draw_hidden, draw_lengths, expected_length


def _build(preset: str, seed: int = 0, **wl):
    cfg = parse_config({"seed": seed, "workload": {"preset": preset, "questions": "synthetic", **wl}})
    return cfg, *build_workload(cfg, np.random.default_rng(seed))


def _vote_stats(wl, resp):
    """(share unanimous, share 1:1:1, mean tokens unanimous, mean tokens split)."""
    una, split = [], []
    for q, route in zip(wl.queries, wl.routes, strict=True):
        rs = [resp.get(q.id, e) for e in route]
        top = Counter(r.answer for r in rs).most_common(1)[0][1]
        toks = np.mean([r.output_tokens for r in rs])
        if top == len(route):
            una.append(toks)
        elif top == 1:
            split.append(toks)
    n = len(wl.queries)
    return len(una) / n, len(split) / n, float(np.mean(una)), float(np.mean(split))


@pytest.mark.parametrize("preset,size", [("mmlu_pro", 2100), ("medmcqa", 4183), ("gpqa", 198)])
def test_paper_sizes_and_routes(preset, size):
    cfg, wl, resp = _build(preset)
    assert len(wl.queries) == size == PRESETS[preset].num_queries
    assert len(wl.requests) == 3 * size
    assert all(len(r) == 3 and len(set(r)) == 3 for r in wl.routes)
    # every routed (query, expert) and every aggregator call has a ground-truth response
    assert len(resp) == len(wl.requests) + size
    assert wl.aggregator.name.startswith(PRESETS[preset].aggregator)
    assert set(expert_means(cfg, wl)) == {e.name for e in wl.experts} | {wl.aggregator.name}


def test_calibrated_to_the_paper():
    """Skip rates near the paper's (T=1: ~47.5%, T=2/3: ~90% on MedMCQA) and unanimous queries much shorter than
    full splits (paper: 1064 vs 2696 tokens); reasoning ~3000 tokens and instruct ~200 on average."""
    _, wl, resp = _build("medmcqa")
    unanimous, split, tok_una, tok_split = _vote_stats(wl, resp)
    assert 0.40 < unanimous < 0.56
    assert 0.04 < split < 0.15
    assert 800 < tok_una < 1600 and 2000 < tok_split < 3500
    assert tok_split / tok_una > 1.7
    by_kind: dict[str, list[int]] = {"reasoning": [], "instruct": []}
    for r in wl.requests:
        by_kind[wl.expert(r.expert).kind.value].append(resp.get(r.query_id, r.expert).output_tokens)
    assert 2600 < np.mean(by_kind["reasoning"]) < 3400
    assert 170 < np.mean(by_kind["instruct"]) < 280
    assert np.percentile(by_kind["reasoning"], 99) > 2.5 * np.median(by_kind["reasoning"])  # heavy tail


def test_routing_skew_controls_demand():
    _, flat, _ = _build("medmcqa", skew=0.0)
    _, skewed, _ = _build("medmcqa", skew=1.0)
    names = [e.name for e in flat.experts]
    assert demand_ratio(flat.routes, names) < 1.3
    assert demand_ratio(skewed.routes, names) > 8  # the paper saw demand differ up to 92x


def test_same_seed_same_workload_other_seed_differs():
    _, a, ra = _build("gpqa", seed=3)
    _, b, rb = _build("gpqa", seed=3)
    _, c, _ = _build("gpqa", seed=4)
    assert a == b and ra.table == rb.table
    assert a.routes != c.routes


def test_arrivals_are_a_poisson_process():
    _, wl, _ = _build("gpqa", arrival_rate=2.0)
    t = np.array([q.arrival for q in wl.queries])
    assert np.all(np.diff(t) > 0)
    assert 0.3 < np.mean(np.diff(t)) < 0.7


def test_loader_reads_jsonl_json_csv(tmp_path):
    rows = [{"question": "What is 2+2? The options are: (A) 3 (B) 4 (C) 5", "answer": "B", "category": "math"},
            {"text": "Capital of France?", "choices": ["Paris", "Rome"], "gold": "A"}]  # fmt: skip
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "q.json").write_text(json.dumps(rows))
    (tmp_path / "q.csv").write_text('question,gold_answer,domain\n"Is it (A) yes (B) no?",A,logic\n')
    for name in ("q.jsonl", "q.json"):
        qs = load_questions(tmp_path / name)
        assert [q.gold for q in qs] == ["B", "A"]
        assert qs[0].choices == ("3", "4", "5") and qs[0].domain == "math"
        assert qs[1].choices == ("Paris", "Rome") and qs[1].prompt_tokens > 0
    (q,) = load_questions(tmp_path / "q.csv")
    assert q.choices == ("yes", "no?") and q.domain == "logic"


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        load_questions(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"nope": 1}\n')
    with pytest.raises(WorkloadError, match="record 1 has no question text"):
        load_questions(bad)
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"question": "ok"}\n{"question": \n')
    with pytest.raises(WorkloadError, match="line 2 is not valid JSON"):
        load_questions(torn)
    txt = tmp_path / "q.txt"
    txt.write_text("x")
    with pytest.raises(WorkloadError, match="unsupported format"):
        load_questions(txt)


def test_split_options():
    assert split_options("Q? The options are: (A) one (B) two words (C) three") == ("one", "two words", "three")
    assert split_options("no options here") == ()


def test_custom_questions_and_config_errors(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i} (A) x (B) y", "gold": "A"}) for i in range(5)))
    cfg = parse_config({"workload": {"preset": "custom", "questions": str(path), "k": 2}})
    wl, _ = build_workload(cfg, np.random.default_rng(0))
    assert len(wl.queries) == 5 and all(len(r) == 2 for r in wl.routes)
    too_many = parse_config({"workload": {"preset": "custom", "questions": str(path), "num_queries": 9}})
    with pytest.raises(ConfigError, match="holds only 5 questions"):
        build_workload(too_many, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"workload\.k = 7"):
        build_workload(parse_config({"workload": {"k": 7, "questions": "synthetic"}}), np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"workload\.aggregator 'nobody'"):
        build_workload(parse_config({"workload": {"aggregator": "nobody"}}), np.random.default_rng(0))


def test_recorded_responses_replay_a_trace(tmp_path):
    cfg, wl, resp = _build("gpqa")
    path = tmp_path / "run.trace.jsonl"
    with TraceWriter(path) as tw:
        for (q, e), r in resp.table.items():
            tw.write(RequestRecord("expert", 0, q, e, 0, 0.0, 1.0, 10, r.output_tokens + 1, r.answer, r.correct))
    rec_cfg = cfg.model_copy(update={"responses": cfg.responses.model_copy(update={"model": "recorded",
                                                                                      "path": str(path)})})  # fmt: skip
    wl2, rec = build_workload(rec_cfg, np.random.default_rng(0))
    assert wl2 == wl
    key = (wl.requests[0].query_id, wl.requests[0].expert)
    assert rec.table[key].output_tokens == resp.table[key].output_tokens + 1
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    with pytest.raises(WorkloadError, match="lack"):
        build_workload(rec_cfg, np.random.default_rng(0))


def test_real_questions_when_present(shared_data):
    cfg = parse_config({"workload": {"preset": "mmlu_pro", "questions": "auto"}})
    wl, _ = build_workload(cfg, np.random.default_rng(0))
    assert "alcohol dehydrogenase" in wl.queries[0].text
    assert len({q.domain for q in wl.queries}) == 14  # MMLU-Pro categories drive skill routing
    assert all(len(q.choices) >= 4 for q in wl.queries[:50])


def _log_ratio(cfg, wl, resp):
    """(query of each request, log of its true length over its expert's mean)."""
    means = expert_means(cfg, wl)
    q = np.array([r.query_id for r in wl.requests])
    y = np.log([resp.get(r.query_id, r.expert).output_tokens / means[r.expert] for r in wl.requests])
    return q, y


def test_synthetic_difficulty_is_what_the_lengths_were_drawn_with():
    cfg, wl, resp = _build("gpqa", seed=3, num_queries=400)
    visible, hidden = synthetic_difficulty(cfg, wl, np.random.default_rng(3))
    q, y = _log_ratio(cfg, wl, resp)
    slope, _ = np.polyfit((visible + hidden)[q], y, 1)
    assert 0.65 < slope < 0.85  # the model's gamma = 0.75 (caps and rounding bend it a little)
    assert np.corrcoef(visible[q], y)[0, 1] > 0.4 and np.corrcoef(hidden[q], y)[0, 1] > 0.3
    assert np.var(visible) == pytest.approx(0.6) and np.var(hidden) == pytest.approx(0.4)
    _, wrong_h = synthetic_difficulty(cfg, wl, np.random.default_rng(4))  # another stream: hidden part unrelated
    assert abs(np.corrcoef(wrong_h[q], y)[0, 1]) < 0.15
    recorded = parse_config({"seed": 3, "responses": {"model": "recorded", "path": "x.jsonl"}})
    with pytest.raises(ConfigError, match="recorded"):
        synthetic_difficulty(recorded, wl, np.random.default_rng(3))


def test_workload_rng_is_child_0_of_the_seed():
    """The stream workloads were built from before workload_rng existed: a seed keeps its workload, and the
    schedulers' stream (child 1, Experiment.scheduler_rng) stays apart from it."""
    cfg = parse_config({"seed": 5, "workload": {"preset": "gpqa", "questions": "synthetic", "num_queries": 30}})
    child0, child1 = np.random.SeedSequence(5).spawn(2)
    assert np.array_equal(workload_rng(cfg).random(8), np.random.default_rng(child0).random(8))
    assert not np.array_equal(prepare(cfg).scheduler_rng().random(8), np.random.default_rng(child0).random(8))
    assert np.array_equal(prepare(cfg).scheduler_rng().random(8), np.random.default_rng(child1).random(8))


@pytest.mark.parametrize("known_var", [1.0, 0.6])
def test_expected_length_is_the_mean_of_the_draws(known_var):
    rng = np.random.default_rng(0)
    expert, gamma, known = Expert("e", "m", 7.0, ExpertKind.INSTRUCT, 15.0), 0.75, 0.8
    unknown = rng.normal(0.0, np.sqrt(1.0 - known_var), 40_000)  # the rest of the difficulty
    draws = [_length(expert, 200.0, known + u, gamma, rng) for u in unknown]
    assert np.mean(draws) == pytest.approx(float(expected_length(200.0, np.array(known), known_var, gamma)), rel=0.02)


@pytest.mark.parametrize("kind", [ExpertKind.REASONING, ExpertKind.INSTRUCT])
def test_draw_lengths_follows_the_responses_distribution(kind):
    rng = np.random.default_rng(1)
    expert, gamma = Expert("e", "m", 7.0, kind, 15.0), 0.75
    z = rng.normal(0.0, 1.0, 20_000)
    one_by_one = np.array([_length(expert, 3000.0, zi, gamma, rng) for zi in z])
    vectorised = draw_lengths(np.full(z.size, 3000.0), z, [kind] * z.size, gamma, rng)
    assert vectorised.dtype.kind == "i" and vectorised.min() >= MIN_TOKENS and vectorised.max() <= MAX_TOKENS[kind]
    qs = [0.1, 0.5, 0.9, 0.99]
    assert np.quantile(vectorised, qs) == pytest.approx(np.quantile(one_by_one, qs), rel=0.06)
    assert np.mean(vectorised == MAX_TOKENS[kind]) == pytest.approx(np.mean(one_by_one == MAX_TOKENS[kind]), abs=3e-3)


def test_draw_hidden_follows_the_workloads_hidden_difficulty():
    cfg, wl, _ = _build("gpqa", seed=3, num_queries=4000)
    _, hidden = synthetic_difficulty(cfg, wl, np.random.default_rng(3))
    drawn = draw_hidden(hidden.size, response_model(cfg, wl), np.random.default_rng(9))
    assert np.mean(drawn) == pytest.approx(0.0, abs=0.03) and np.var(drawn) == pytest.approx(0.4, rel=0.05)
    qs = [0.01, 0.25, 0.5, 0.75, 0.99]
    assert np.quantile(drawn, qs) == pytest.approx(np.quantile(hidden, qs), abs=0.04)
