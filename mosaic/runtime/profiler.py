"""``mosaic profile``: measure a model on the real engine and write the :class:`CostProfile` the simulator reads.

Measured in an engine worker process (same environment, cores and engine settings as the ``vllm`` backend's):

- **load_s**: engine start (median of ``loads`` starts); **unload_s**: engine teardown (median of the frees between
  and after them), which the simulator charges before a load that replaces this engine (a worker's first load
  replaces nothing). The single measurements are kept in the profile's ``meta``.
- **prefill_tps**: prompt tokens per second of batches of random prompts (random ids: no prefix-cache hits) of
  each length in ``prefill_tokens``, generating one token each (total tokens / total time, after a warm-up).
- **decode step**: wall time of every ``engine.step()`` (output processing included, as the backend sees it)
  of ``b`` sequences decoding together, for each batch size ``b``; ``step = base + per_seq * b + per_kv * kv`` is
  fitted by non-negative least squares on per-(batch, KV) medians.
- **max_batch** (the engine's ``max_num_seqs``), **kv_capacity_tokens** (KV blocks x block size),
  **kv_block_tokens** (the engine's block size, for the simulator's paged KV), **memory_gb** (weight files + KV cache
  space).

Each entry's ``meta`` also records the machine (:func:`~mosaic.runtime.machine.machine_fingerprint`): a profile
describes the machine it was measured on.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.core.errors import ProfileError
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.machine import machine_fingerprint


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    """What to measure (defaults take ~20 s for a tiny model, ~2 min for SmolLM2-135M on one CPU core)."""

    loads: int = 3  # engine starts timed (the median counts)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    decode_tokens: int = 48  # tokens per sequence in each decode measurement
    decode_prompt_tokens: tuple[int, ...] = (16, 512)  # prompt lengths per batch size: KV varies apart from b
    prefill_tokens: tuple[int, ...] = (256, 1024)  # prompt lengths of the prefill measurement
    prefill_batch_tokens: int = 2048  # prompt tokens per prefill run (a step's default token budget)
    repeats: int = 3
    seed: int = 0  # random prompt ids

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ProfileOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(m) - names)
        if unknown:
            raise ProfileError(f"unknown profile option {unknown[0]!r}; valid: {sorted(names)}")
        kw = dict(m)
        for key in ("batch_sizes", "decode_prompt_tokens", "prefill_tokens"):
            if key in kw:
                value = kw[key]
                kw[key] = tuple(int(b) for b in (value if isinstance(value, list | tuple) else [value]))
        opts = cls(**kw)
        if opts.loads < 1 or opts.repeats < 1 or opts.decode_tokens < 4 or min(opts.batch_sizes, default=0) < 1:
            raise ProfileError(f"profile options out of range: {opts}")
        return opts


# --- fitting (pure, tested without an engine) ----------------------------------------------------------------------


def fit_step(samples: Sequence[tuple[int, float, float]]) -> tuple[float, float, float]:
    """Non-negative least squares of ``t = base + per_seq * b + per_kv * kv`` over ``(b, kv, t)`` samples.

    Tries every subset of the three terms and keeps the best fit whose coefficients are all >= 0 (exact NNLS
    for three unknowns). A constant fit is always feasible for non-negative times.
    """
    if not samples:
        raise ProfileError("no decode samples to fit")
    arr = np.asarray(samples, dtype=float)
    cols = np.column_stack([np.ones(len(arr)), arr[:, 0], arr[:, 1]])
    t = arr[:, 2]
    best: tuple[float, np.ndarray] | None = None
    for k in (1, 2, 3):
        for subset in itertools.combinations(range(3), k):
            coef, *_ = np.linalg.lstsq(cols[:, subset], t, rcond=None)
            if np.any(coef < 0):
                continue
            full = np.zeros(3)
            full[list(subset)] = coef
            err = float(np.sum((cols @ full - t) ** 2))
            if best is None or err < best[0] - 1e-18:
                best = (err, full)
    assert best is not None  # the constant term alone is >= 0 when times are
    base, per_seq, per_kv = (float(x) for x in best[1])
    if base + per_seq <= 0:
        base = max(float(np.median(t)), 1e-9)
    return base, per_seq, per_kv


def summarise(steps: Sequence[tuple[int, float, float]], chunks: int = 4) -> list[tuple[int, float, float]]:
    """Per batch size (and run), ``chunks`` consecutive groups of steps -> (b, mean kv, median time): robust to
    outliers. Runs of one batch size are told apart by their KV tokens (kept in step order)."""
    out = []
    for b in sorted({s[0] for s in steps}):
        rows = sorted((s for s in steps if s[0] == b), key=lambda s: s[1])
        size = max(1, len(rows) // chunks)
        for i in range(0, len(rows), size):
            part = rows[i : i + size]
            out.append((b, statistics.fmean(r[1] for r in part), statistics.median(r[2] for r in part)))
    return out


# --- measurements (inside an engine worker process) ----------------------------------------------------------------


def _random_prompts(engine: Any, n: int, length: int, rng: np.random.Generator) -> list[list[int]]:
    vocab = int(engine.engine.model_config.get_vocab_size())
    return [rng.integers(0, vocab, size=length).tolist() for _ in range(n)]


def _run(engine: Any, prompts: list[list[int]], max_tokens: int, tag: str) -> list[tuple[int, float, float, bool]]:
    """Run ``prompts`` to ``max_tokens`` each (EOS ignored); per step: (running sequences, KV tokens, seconds,
    whether every running sequence had finished its prefill before the step: a pure decode step)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    core = engine.engine
    kv, started = {}, set()
    for i, p in enumerate(prompts):
        # seeded temperature-1 sampling, as the backend's requests (a seeded generator per request costs per step)
        params = SamplingParams(temperature=1.0, seed=i, max_tokens=max_tokens, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)  # fmt: skip
        core.add_request(f"{tag}-{i}", {"prompt_token_ids": p}, params)
        kv[f"{tag}-{i}"] = len(p)
    steps = []
    while core.has_unfinished_requests():
        running, tokens, decode = len(kv), sum(kv.values()), started >= set(kv)
        t = time.perf_counter()
        outs = core.step()
        steps.append((running, float(tokens), time.perf_counter() - t, decode))
        for o in outs:
            started.add(o.request_id)
            kv[o.request_id] += len(o.outputs[0].token_ids)
            if o.finished:
                del kv[o.request_id]
    return steps


def measure_prefill(engine: Any, opts: ProfileOptions, rng: np.random.Generator) -> float:
    """Prompt tokens per second over prompts of every length in ``prefill_tokens`` (``repeats`` runs each, after
    one warm-up run): total tokens / total seconds, so long prompts (quadratic attention) weigh in."""
    tokens = seconds = 0.0
    for length in sorted({min(p, engine.max_model_len - 2) for p in opts.prefill_tokens}):
        n = max(1, opts.prefill_batch_tokens // length)
        for i in range(opts.repeats + 1):
            prompts = _random_prompts(engine, n, length, rng)
            t = time.perf_counter()
            _run(engine, prompts, 1, f"prefill{length}-{i}")
            if i:
                tokens += n * length
                seconds += time.perf_counter() - t
    return tokens / seconds


def measure_decode(engine: Any, opts: ProfileOptions, rng: np.random.Generator, max_batch: int) -> list:
    """(batch, KV tokens, seconds) of every decode step (prefill steps dropped) for each batch size."""
    samples = []
    _run(engine, _random_prompts(engine, 2, 16, rng), 8, "warm")
    longest = max(1, engine.max_model_len - opts.decode_tokens - 1)
    for b in sorted({min(b, max_batch) for b in opts.batch_sizes}):
        for p in sorted({min(p, longest) for p in opts.decode_prompt_tokens}):
            steps = _run(engine, _random_prompts(engine, b, p, rng), opts.decode_tokens, f"d{b}-{p}")
            samples.extend(s[:3] for s in steps if s[0] == b and s[3])  # decode steps of the full batch
    return samples


def weights_gb(path: str) -> float:
    p = Path(path)
    files = [f for f in p.glob("*") if f.suffix in (".safetensors", ".bin", ".pt", ".gguf")] if p.is_dir() else []
    return sum(f.stat().st_size for f in files) / 1e9


def profile_engine(expert: str, spec: Mapping[str, Any], options: Mapping[str, Any],
                   engine_cls: Callable[[str, Mapping[str, Any]], Any]) -> dict[str, Any]:  # fmt: skip
    """Measure ``expert`` (engine settings ``spec``) in this process, in engines ``engine_cls(expert, spec)`` (the
    worker's :class:`~mosaic.runtime.vllm_worker.Engine`); ``{"cost": ModelCost fields, "meta": ...}``."""
    opts = ProfileOptions.from_mapping(options)
    rng = np.random.default_rng(opts.seed)
    loads, frees = [], []
    engine = None
    for _ in range(opts.loads):
        if engine is not None:
            t = time.perf_counter()
            engine.close()
            frees.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine = engine_cls(expert, spec)
        loads.append(time.perf_counter() - t)
    assert engine is not None
    vc = engine.engine.vllm_config
    max_batch = int(vc.scheduler_config.max_num_seqs)
    block = int(vc.cache_config.block_size or 16)
    kv_tokens = int((vc.cache_config.num_gpu_blocks or 0) * block) or 1
    prefill = measure_prefill(engine, opts, rng)
    samples = measure_decode(engine, opts, rng, max_batch)
    base, per_seq, per_kv = fit_step(summarise(samples))
    t = time.perf_counter()
    engine.close()
    frees.append(time.perf_counter() - t)
    load, free = statistics.median(loads), statistics.median(frees)
    kv_gb = float(vc.cache_config.kv_cache_memory_bytes or 0) / 1e9 if vc.device_config.device_type == "cpu" else 0.0
    cost = ModelCost(load, prefill, base, per_seq, per_kv, round(weights_gb(spec["path"]) + kv_gb, 4) or 0.001,
                     max_batch, kv_tokens, free, kv_block_tokens=block)  # fmt: skip
    meta = {"path": str(spec["path"]), "engine_start_s": load, "unload_s": free, "load_s": loads, "free_s": frees,
            "options": asdict(opts), "decode_points": [list(p) for p in summarise(samples)]}  # fmt: skip
    return {"cost": asdict(cost), "meta": meta}


def pool_measurements(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One profile from the measurements of several engines run at once (:func:`profile_engine` results): load and
    teardown the medians of every start and free, prefill the median rate, the decode step refitted on every
    engine's points; the rest from the first. One result is returned as it is."""
    if len(results) == 1:
        return dict(results[0])
    if not results:
        raise ProfileError("no profile measurements to pool")
    metas = [r["meta"] for r in results]
    loads = [x for m in metas for x in m["load_s"]]
    frees = [x for m in metas for x in m["free_s"]]
    points = [tuple(p) for m in metas for p in m["decode_points"]]
    base, per_seq, per_kv = fit_step(points)
    load, free = statistics.median(loads), statistics.median(frees)
    prefill = statistics.median(float(r["cost"]["prefill_tps"]) for r in results)
    cost = {**results[0]["cost"], "load_s": load, "unload_s": free, "prefill_tps": prefill, "step_base_s": base,
            "step_per_seq_s": per_seq, "step_per_kv_token_s": per_kv}  # fmt: skip
    meta = {**metas[0], "engine_start_s": load, "unload_s": free, "load_s": loads, "free_s": frees,
            "decode_points": [list(p) for p in points], "engines_pooled": len(results)}  # fmt: skip
    return {"cost": cost, "meta": meta}


MIXED = ("load_s", "unload_s", "prefill_tps", "step_base_s", "step_per_seq_s", "step_per_kv_token_s")


def mix_levels(pooled: Sequence[Mapping[str, Any]], levels: Sequence[int]) -> dict[str, Any]:
    """One profile from the pooled measurements of each concurrency level (``levels[i]`` engines at once gave
    ``pooled[i]``): every time and rate the mean over levels, the rest from the first; each level's measurements
    stay in the meta (``levels``). One level is returned as it is."""
    if len(pooled) != len(levels) or not pooled:
        raise ProfileError(f"profile: {len(pooled)} pooled measurements for concurrency levels {list(levels)}")
    if len(pooled) == 1:
        return dict(pooled[0])
    cost = {**pooled[0]["cost"], **{k: float(np.mean([p["cost"][k] for p in pooled])) for k in MIXED}}
    per_level = {str(k): {"cost": {f: p["cost"][f] for f in MIXED}, "engines": p["meta"].get("engines_pooled", 1)}
                 for k, p in zip(levels, pooled, strict=True)}  # fmt: skip
    meta = {**pooled[0]["meta"], "engine_start_s": cost["load_s"], "unload_s": cost["unload_s"],
            "concurrency": list(levels), "levels": per_level}  # fmt: skip
    return {"cost": cost, "meta": meta}


def split_unload(profile: CostProfile, gpu_type: str) -> tuple[CostProfile, dict[str, float]]:
    """(the profile without teardown: ``load_s`` = engine start only and ``unload_s`` = 0, expert -> teardown
    seconds). Teardown is the entry's ``unload_s``; for an older profile (``unload_s`` 0, a share of the teardown
    folded into ``load_s``) both come from the measurements in its meta (``<expert>@<gpu type>`` entries).
    Experts with neither keep their ``load_s``, unload 0."""
    table, unload = {}, {}
    for e, mc in profile.table.get(gpu_type, {}).items():
        m = profile.meta.get(f"{e}@{gpu_type}")
        if mc.unload_s > 0:
            table[e], unload[e] = replace(mc, unload_s=0.0), mc.unload_s
        elif isinstance(m, Mapping) and "engine_start_s" in m and "unload_s" in m:
            table[e] = replace(mc, load_s=float(m["engine_start_s"]))
            unload[e] = float(m["unload_s"])
        else:
            table[e], unload[e] = mc, 0.0
    return CostProfile({gpu_type: table}, profile.meta), unload


# --- the command (parent process) ----------------------------------------------------------------------------------


def profile_model(
    path: str,
    gpu_type: str,
    name: str | None = None,
    out: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    engine: Mapping[str, Any] | None = None,
    workers: int = 1,
    python: str | None = None,
    concurrency: Sequence[int] = (1,),
) -> CostProfile:
    """Profile the model folder ``path`` as expert ``name`` (default: the folder name) on ``gpu_type`` in a fresh
    engine worker (bound like worker 0 of ``workers``); merged into ``out`` when that file exists, then written.

    ``concurrency``: for each level ``k``, ``k`` engines (bound like workers 0..k-1 of ``workers``) are measured at
    once and pooled (:func:`pool_measurements`); the levels are then averaged (:func:`mix_levels`). ``(1, 2)`` on
    a 2-worker machine weighs one engine alone and two sharing the machine (on a CPU: memory bandwidth, the driver
    process, engines starting together) equally, as in a run where one or both workers are busy."""
    from mosaic.runtime.engine_spec import ModelSpec
    from mosaic.runtime.vllm_backend import VllmBackend

    expert = name or Path(path).name
    ProfileOptions.from_mapping(options or {})  # fail before starting an engine
    levels = sorted(set(concurrency))
    if not levels or levels[0] < 1 or levels[-1] > max(workers, 1):
        raise ProfileError(f"profile: concurrency levels must be between 1 and workers ({workers}), got {concurrency}")
    spec = ModelSpec(path=path, **dict(engine or {}))
    backend = VllmBackend({expert: spec}, python=python)
    results: list[dict] = []
    try:
        backend.spawn(list(range(levels[-1])), total=workers)
        for k in levels:
            cmds = {i: {"cmd": "profile", "expert": expert, "spec": spec.engine_dict(i),
                        "options": dict(options or {})} for i in range(k)}  # fmt: skip
            events = backend.request_all(cmds, "profile")
            results.append(pool_measurements([events[i] for i in range(k)]))
    finally:
        backend.close()
    ev = mix_levels(results, levels)
    cost = ModelCost(**ev["cost"])
    meta = {"source": "mosaic profile", f"{expert}@{gpu_type}": {**ev["meta"], "machine": machine_fingerprint()}}
    profile = CostProfile({gpu_type: {expert: cost}}, meta)
    if out is not None:
        p = Path(out)
        if p.is_file():
            profile = CostProfile.from_file(p).merge(profile)
        profile.to_file(p)
    return profile


def profile_workload(cfg: Any, out: str | Path, workload: Any = None, concurrency: Sequence[int] | None = None,
                     python: str | None = None, report: Callable[[str], None] | None = None,
                     source: str = "mosaic profile",
                     options: Mapping[str, Any] | None = None) -> CostProfile:  # fmt: skip
    """Profile every distinct model of the run config ``cfg``'s experts and aggregator (``workload``: its workload,
    built from ``cfg`` when not given) once, on the machine this runs on, at each of ``concurrency`` engines at once,
    averaged (default: from one engine alone to one per worker). Every expert using a model shares its profile; the
    profile is written to ``out`` (``source``: its ``meta.source``; ``options``: :class:`ProfileOptions`).
    ``report`` gets a line per model profiled.

    A cost profile describes one machine: a simulator comparing itself with real engines must use one measured
    where those engines run."""
    from mosaic.runtime.engine_spec import check_local_paths, resolve_models
    from mosaic.runtime.vllm_backend import cpu_defaults, detect_device
    from mosaic.workloads import build_workload

    if workload is None:
        workload, _ = build_workload(cfg, np.random.default_rng(cfg.seed))  # the models and names only
    gpu, workers = cfg.cluster.gpu_type, cfg.cluster.workers
    levels = tuple(concurrency or range(1, workers + 1))
    specs = resolve_models(workload, cfg)
    check_local_paths(specs)  # a missing model folder, before an engine starts
    by_path: dict[str, list[str]] = {}
    for name, spec in specs.items():
        by_path.setdefault(spec.path, []).append(name)
    table, meta = {}, {"source": source}
    for path, names in by_path.items():
        spec = cpu_defaults(specs[names[0]]) if detect_device() == "cpu" else specs[names[0]]
        engine = {"dtype": spec.dtype, "max_num_seqs": spec.max_num_seqs, "max_model_len": spec.max_model_len}
        t = time.perf_counter()
        prof = profile_model(path, gpu, names[0], None, options, engine, workers, python, levels)
        if report is not None:
            report(f"profiled {path} ({', '.join(names)}) in {time.perf_counter() - t:.0f} s")
        for n in names:
            table[n] = prof.get(names[0], gpu)
            meta[f"{n}@{gpu}"] = copy.deepcopy(prof.meta[f"{names[0]}@{gpu}"])
    profile = CostProfile({gpu: table}, meta)
    profile.to_file(out)
    return profile


__all__ = [
    "ProfileOptions",
    "fit_step",
    "mix_levels",
    "pool_measurements",
    "profile_engine",
    "profile_model",
    "profile_workload",
    "split_unload",
    "summarise",
]
