"""Profile fitting (pure functions) and option checks, without an engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mosaic.core.errors import ConfigError, ProfileError
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.profiler import (
    ProfileOptions,
    fit_step,
    mix_levels,
    pool_measurements,
    split_unload,
    summarise,
)


def test_fit_recovers_a_linear_step_model():
    rng = np.random.default_rng(0)
    samples = [(b, kv, 0.002 + 1e-4 * b + 2e-7 * kv + rng.normal(0, 1e-6))
               for b in (1, 2, 4, 8, 16) for kv in (100.0 * b, 300.0 * b, 600.0 * b)]  # fmt: skip
    base, per_seq, per_kv = fit_step(samples)
    assert base == pytest.approx(0.002, rel=0.02)
    assert per_seq == pytest.approx(1e-4, rel=0.05)
    assert per_kv == pytest.approx(2e-7, rel=0.1)


def test_fit_never_returns_negative_terms():
    # time falls with batch size: the unconstrained fit would give per_seq < 0
    samples = [(b, 10.0 * b, 0.01 - 1e-4 * b) for b in (1, 2, 4, 8)]
    base, per_seq, per_kv = fit_step(samples)
    assert min(base, per_seq, per_kv) >= 0 and base + per_seq > 0


def test_fit_needs_samples():
    with pytest.raises(ProfileError, match="no decode samples"):
        fit_step([])


def test_summarise_takes_medians_per_batch():
    steps = [(2, float(kv), 0.001) for kv in range(8)] + [(2, 100.0, 5.0)]  # one outlier
    pts = summarise(steps, chunks=2)
    assert all(p[0] == 2 for p in pts)
    assert max(p[2] for p in pts[:2]) == pytest.approx(0.001)


def test_options_are_checked():
    assert ProfileOptions.from_mapping({"batch_sizes": [1, 4]}).batch_sizes == (1, 4)
    with pytest.raises(ProfileError, match="unknown profile option 'bacth'"):
        ProfileOptions.from_mapping({"bacth": 1})
    with pytest.raises(ProfileError, match="out of range"):
        ProfileOptions.from_mapping({"loads": 0})


def test_split_unload_reads_unload_s_or_the_old_meta():
    new = ModelCost(1.2, 1000.0, 0.01, 1e-5, 0.0, 1.0, unload_s=1.1)
    old = ModelCost(1.8, 1000.0, 0.01, 1e-5, 0.0, 1.0)  # older profile: half a teardown folded into load_s
    plain = ModelCost(3.0, 1000.0, 0.01, 1e-5, 0.0, 1.0)
    meta = {"old@cpu": {"engine_start_s": 1.25, "unload_s": 1.1}}
    pure, unload = split_unload(CostProfile({"cpu": {"new": new, "old": old, "plain": plain}}, meta), "cpu")
    assert unload == pytest.approx({"new": 1.1, "old": 1.1, "plain": 0.0})
    assert [pure.get(e, "cpu").load_s for e in ("new", "old", "plain")] == [1.2, 1.25, 3.0]
    assert all(pure.get(e, "cpu").unload_s == 0.0 for e in ("new", "old", "plain"))


def test_shipped_cpu_profile_has_teardown_apart_from_load():
    path = Path(__file__).resolve().parents[2] / "experiments" / "profiles" / "cpu_tiny.yaml"
    profile = CostProfile.from_file(path)
    for e in profile.experts:
        mc, m = profile.get(e, "cpu"), profile.meta[f"{e}@cpu"]
        assert (mc.load_s, mc.unload_s) == (m["engine_start_s"], m["unload_s"])


def _measured(load: list[float], free: list[float], prefill: float, step: tuple[float, float, float]) -> dict:
    """A profile_engine result whose decode points follow ``step`` exactly."""
    base, per_seq, per_kv = step
    points = [[b, kv, base + per_seq * b + per_kv * kv] for b in (1, 4, 16) for kv in (50.0 * b, 400.0 * b)]
    cost = {"load_s": load[0], "prefill_tps": prefill, "step_base_s": base, "step_per_seq_s": per_seq,
            "step_per_kv_token_s": per_kv, "memory_gb": 1.0, "max_batch": 16, "kv_capacity_tokens": 4096,
            "unload_s": free[0]}  # fmt: skip
    return {"cost": cost, "meta": {"path": "m", "load_s": load, "free_s": free, "decode_points": points}}


def test_pooling_concurrent_engines_takes_medians_and_refits_the_step():
    alone = _measured([1.0, 1.2, 1.1], [0.9, 1.0, 1.1], 5000.0, (0.002, 1e-4, 1e-7))
    busy = _measured([1.6, 1.7, 1.5], [1.0, 1.2, 1.1], 4000.0, (0.003, 1e-4, 1e-7))
    pooled = pool_measurements([alone, busy])
    cost = ModelCost(**pooled["cost"])
    assert cost.load_s == pytest.approx(1.35) and cost.unload_s == pytest.approx(1.05)
    assert cost.prefill_tps == pytest.approx(4500.0)
    assert 0.002 < cost.step_base_s < 0.003 and cost.max_batch == 16
    assert pooled["meta"]["engines_pooled"] == 2 and len(pooled["meta"]["decode_points"]) == 12
    assert pool_measurements([alone]) == alone
    with pytest.raises(ProfileError, match="no profile measurements"):
        pool_measurements([])


def test_concurrency_levels_are_averaged_and_kept_in_the_meta():
    alone = _measured([1.0], [1.0], 5000.0, (0.002, 1e-4, 1e-7))
    two = pool_measurements([_measured([1.6], [1.2], 4000.0, (0.003, 2e-4, 1e-7))] * 2)
    mixed = mix_levels([alone, two], [1, 2])
    cost = ModelCost(**mixed["cost"])
    assert cost.load_s == pytest.approx(1.3) and cost.unload_s == pytest.approx(1.1)
    assert cost.step_base_s == pytest.approx(0.0025, rel=1e-3) and cost.prefill_tps == pytest.approx(4500.0)
    meta = mixed["meta"]
    assert meta["concurrency"] == [1, 2] and meta["levels"]["2"]["engines"] == 2
    assert (meta["engine_start_s"], meta["unload_s"]) == (cost.load_s, cost.unload_s)
    assert mix_levels([alone], [1]) == alone
    with pytest.raises(ProfileError, match="concurrency levels"):
        mix_levels([alone], [1, 2])


def test_profile_engine_records_the_engines_kv_geometry(monkeypatch, tmp_path):
    """max_batch, kv_capacity_tokens (blocks x block size) and kv_block_tokens come from the engine's vLLM config."""
    from types import SimpleNamespace

    import mosaic.runtime.profiler as profiler

    cfg = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=8),
                          cache_config=SimpleNamespace(num_gpu_blocks=40, block_size=128, kv_cache_memory_bytes=0),
                          device_config=SimpleNamespace(device_type="cuda"))  # fmt: skip

    class Engine:
        def __init__(self, expert, spec):
            self.engine = SimpleNamespace(vllm_config=cfg)

        def close(self):
            pass

    points = [(b, kv, 0.01 + 0.001 * b + 1e-6 * kv) for b in (1, 2, 4, 8) for kv in (16.0, 512.0)]
    monkeypatch.setattr(profiler, "measure_prefill", lambda engine, opts, rng: 5000.0)
    monkeypatch.setattr(profiler, "measure_decode", lambda engine, opts, rng, max_batch: points)
    monkeypatch.setattr(profiler, "summarise", lambda samples: samples)
    result = profiler.profile_engine("m", {"path": str(tmp_path)}, {"loads": 1}, Engine)
    cost = ModelCost(**result["cost"])
    assert (cost.max_batch, cost.kv_capacity_tokens, cost.kv_block_tokens) == (8, 40 * 128, 128)
    assert cost.step_per_seq_s == pytest.approx(0.001, rel=1e-3)


def test_profile_workload_profiles_each_model_once_on_this_machine(monkeypatch, tmp_path):
    """The cpu_tiny config's three engines (tiny-a, its aggregator, tiny-b) are two model folders: two profiles, at
    concurrency 1 and 2 (two workers), shared by every expert on the same folder and written to one file."""
    import mosaic.runtime.profiler as profiler
    from mosaic.core.config import load_config

    calls: list[tuple[str, str, tuple[int, ...]]] = []

    def fake(path, gpu, name, out, options, engine, workers, python, levels):
        calls.append((Path(path).name, name, tuple(levels)))
        mc = ModelCost(len(calls), 1e4, 1e-3, 0.0, 0.0, 0.1, 16, 10_000)
        return CostProfile({gpu: {name: mc}}, {f"{name}@{gpu}": {"levels": list(levels)}})

    monkeypatch.setattr(profiler, "profile_model", fake)
    monkeypatch.setenv("MOSAIC_VLLM_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)  # the config's model folders: models/tiny-llama-a, models/tiny-qwen2-b
    cfg = load_config(Path(__file__).resolve().parents[2] / "experiments" / "configs" / "cpu_tiny.yaml")
    out = tmp_path / "p.yaml"
    with pytest.raises(ConfigError, match="model folder models/tiny-llama-a does not exist"):
        profiler.profile_workload(cfg, out)
    assert not calls and not out.exists()
    for name in ("tiny-llama-a", "tiny-qwen2-b"):
        (tmp_path / "models" / name).mkdir(parents=True)
    profiler.profile_workload(cfg, out, source="test")
    assert sorted(calls) == [("tiny-llama-a", "tiny-a", (1, 2)), ("tiny-qwen2-b", "tiny-b", (1, 2))]
    prof = CostProfile.from_file(out)
    assert prof.get("tiny-a", "cpu") == prof.get("tiny-a@agg", "cpu") != prof.get("tiny-b", "cpu")
    assert prof.meta["source"] == "test" and prof.meta["tiny-a@agg@cpu"] == {"levels": [1, 2]}
