"""Roofline profile: sanity numbers for an 8B model, the formulas, GPU ordering, errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mosaic.core.errors import ProfileError
from mosaic.core.types import Expert, ExpertKind
from mosaic.predictors.profile import CostProfile
from mosaic.predictors.roofline import (
    GPU_SPECS,
    RooflineAssumptions,
    kv_bytes_per_token,
    roofline_cost,
    roofline_profile,
)

A = RooflineAssumptions()


def expert(name: str = "llama8b", params_b: float = 8.0, memory_gb: float | None = None) -> Expert:
    return Expert(name, f"org/{name}", params_b, ExpertKind.INSTRUCT, params_b * 2 if memory_gb is None else memory_gb)


def test_8b_on_a100_decodes_at_plausible_rates() -> None:
    mc = roofline_cost(expert(), "A100-80GB", 256, A)
    single = 1.0 / mc.step_time(1, 500)  # one stream, 500 KV tokens
    batched = 256 / mc.step_time(256, 256 * 256)  # 256 streams of 256 KV tokens each
    print(f"\n8B on A100-80GB: single {single:.1f} tok/s, batch 256 {batched:.0f} tok/s, "
          f"prefill {mc.prefill_tps:.0f} tok/s, load {mc.load_s:.1f} s, KV cap {mc.kv_capacity_tokens}")  # fmt: skip
    assert 40 <= single <= 60
    assert 5_000 <= batched <= 15_000
    assert 5_000 <= mc.prefill_tps <= 20_000  # compute-bound prefill of an 8B model on 312 TFLOP/s
    assert 20 <= mc.load_s <= 60  # 16 GB at ~2.5 GB/s plus engine start
    assert 200_000 <= mc.kv_capacity_tokens <= 600_000  # vLLM reports ~450k for Llama-3-8B on 80 GB
    assert mc.max_batch == 256


def test_kv_estimate_is_close_to_llama3_8b() -> None:
    kv = kv_bytes_per_token(8.03e9, A)
    assert 0.8 * 131_072 <= kv <= 1.3 * 131_072  # Llama-3-8B: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes
    assert kv_bytes_per_token(70e9, A) > kv  # grows with size


def test_formulas_match_the_documented_ones() -> None:
    e = expert(params_b=7.0)
    spec = GPU_SPECS["H100-80GB"]
    mc = roofline_cost(e, "H100-80GB", 64, A)
    bw, flops, w = spec.hbm_tbps * 1e12, spec.bf16_tflops * 1e12, 14.0
    assert mc.step_base_s == pytest.approx(w * 1e9 / (bw * A.hbm_efficiency) + A.step_overhead_s)
    assert mc.step_per_seq_s == pytest.approx(2 * 7e9 / (flops * A.decode_mfu))
    assert mc.step_per_kv_token_s == pytest.approx(kv_bytes_per_token(7e9, A) / (bw * A.kv_efficiency))
    assert mc.prefill_tps == pytest.approx(flops * A.prefill_mfu / (2 * 7e9))
    assert mc.load_s == pytest.approx(w / A.load_gbps + A.engine_start_s)
    assert mc.memory_gb == pytest.approx(w + A.runtime_overhead_gb)
    free = spec.memory_gb * A.gpu_memory_utilization - mc.memory_gb
    assert mc.kv_capacity_tokens == int(free * 1e9 / kv_bytes_per_token(7e9, A))


def test_h100_is_faster_than_a100_and_bigger_models_are_slower() -> None:
    a100 = roofline_cost(expert(), "A100-80GB", 256, A)
    h100 = roofline_cost(expert(), "H100-80GB", 256, A)
    assert h100.step_base_s < a100.step_base_s
    assert h100.step_per_seq_s < a100.step_per_seq_s
    assert h100.step_per_kv_token_s < a100.step_per_kv_token_s
    assert h100.prefill_tps > a100.prefill_tps
    big = roofline_cost(expert("big", 9.0), "A100-80GB", 256, A)
    assert big.step_base_s > a100.step_base_s and big.prefill_tps < a100.prefill_tps
    assert big.kv_capacity_tokens < a100.kv_capacity_tokens


def test_stated_weight_memory_is_used() -> None:
    quantised = roofline_cost(expert(memory_gb=8.0), "A100-80GB", 256, A)
    full = roofline_cost(expert(), "A100-80GB", 256, A)
    assert quantised.step_base_s < full.step_base_s and quantised.load_s < full.load_s
    assert quantised.step_per_seq_s == full.step_per_seq_s  # compute depends on parameters only


def test_profile_covers_every_expert_once_and_round_trips(tmp_path: Path) -> None:
    experts = [expert("a", 7.0), expert("b", 9.0), expert("a", 7.0)]  # the aggregator may repeat an expert
    p = roofline_profile(experts, ["A100-80GB", "H100-80GB"], 128)
    assert p.experts == ("a", "b") and p.gpu_types == ("A100-80GB", "H100-80GB")
    assert p.meta["source"] == "roofline" and p.meta["assumptions"]["hbm_efficiency"] == A.hbm_efficiency
    assert CostProfile.from_file(p.to_file(tmp_path / "roofline.yaml")) == p


def test_unknown_gpu_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown GPU type 'V100'; known: A100-40GB, A100-80GB, H100-80GB"):
        roofline_profile([expert()], ["V100"], 256)


def test_errors_for_bad_inputs() -> None:
    with pytest.raises(ProfileError, match="does not fit A100-40GB"):
        roofline_profile([expert("llama70b", 70.0)], ["A100-40GB"], 256)
    with pytest.raises(ProfileError, match="max_batch must be an integer >= 1"):
        roofline_profile([expert()], ["A100-80GB"], 0)
    with pytest.raises(ProfileError, match="no GPU types"):
        roofline_profile([expert()], [], 256)
    with pytest.raises(ProfileError, match="needs params_b > 0"):
        roofline_profile([expert(params_b=0.0, memory_gb=1.0)], ["A100-80GB"], 256)
    with pytest.raises(ProfileError, match="must be > 0: hbm_efficiency"):
        RooflineAssumptions(hbm_efficiency=0.0)
    with pytest.raises(ProfileError, match="decode_mfu must be <= 1"):
        replace(A, decode_mfu=1.5)


def llama3() -> Expert:
    return Expert("llama3", "meta-llama/Meta-Llama-3-8B", 8.03, ExpertKind.INSTRUCT, 16.06)


def test_max_model_is_the_larger_of_memory_and_compute_lines() -> None:
    mc = roofline_cost(llama3(), "A100-80GB", 256, A, "max")
    spec = GPU_SPECS["A100-80GB"]
    bw, flops = spec.hbm_tbps * 1e12, spec.bf16_tflops * 1e12
    weights, seq = 16.06e9 / (bw * A.hbm_efficiency), 2 * 8.03e9 / (flops * A.decode_mfu)
    kv = 32 * 8 * 128 * 2 * 2 / (bw * A.kv_efficiency)  # Llama-3-8B's 128 KiB per token, from its architecture
    assert (mc.step_base_s, mc.step_per_seq_s, mc.step_per_kv_token_s) == pytest.approx(
        (weights + A.max_overhead_s, A.max_seq_share * seq, kv)
    )
    assert (mc.step_compute_base_s, mc.step_compute_per_seq_s, mc.step_compute_per_kv_token_s) == pytest.approx(
        (A.max_overhead_s, seq, kv)
    )
    assert mc.step_time(1, 1000) == pytest.approx(weights + A.max_seq_share * seq + 1000 * kv)  # memory-bound
    assert mc.step_time(256, 1000) == pytest.approx(256 * seq + 1000 * kv)  # compute-bound
    assert mc.kv_capacity_tokens == int((80 * 0.9 - mc.memory_gb) * 1e9 / 131_072)
    summed = roofline_cost(llama3(), "A100-80GB", 256, A)  # the sum model: today's figures, estimated KV
    assert summed == roofline_cost(expert("llama3", 8.03, 16.06), "A100-80GB", 256, A)
    assert not summed.has_compute_line and mc.has_compute_line


def test_max_model_takes_kv_bytes_from_the_architecture_when_known() -> None:
    p = roofline_profile([llama3(), expert("unknown", 8.03, 16.06)], ["A100-80GB"], 256, step_model="max")
    assert p.meta["step_model"] == "max"
    assert p.meta["kv_bytes_source"] == {"llama3": "architecture", "unknown": "estimate"}
    known, guessed = p.get("llama3", "A100-80GB"), p.get("unknown", "A100-80GB")
    assert guessed.step_per_kv_token_s / known.step_per_kv_token_s == pytest.approx(kv_bytes_per_token(8.03e9, A)
                                                                                    / 131_072)  # fmt: skip
    assert "step_model" not in roofline_profile([llama3()], ["A100-80GB"], 256).meta  # sum: the meta as before
    assert CostProfile.from_dict(p.to_dict()) == p  # the second line round-trips through the file schema


def test_bad_step_model_and_max_assumptions_are_errors() -> None:
    with pytest.raises(ProfileError, match="step model must be one of sum, max, got 'min'"):
        roofline_profile([llama3()], ["A100-80GB"], 256, step_model="min")
    with pytest.raises(ProfileError, match="max_seq_share must be <= 1"):
        RooflineAssumptions(max_seq_share=1.5)
    assert RooflineAssumptions(max_seq_share=0.0, max_overhead_s=0.0).max_overhead_s == 0.0
