"""Analytic (roofline) cost profile from parameter count, HBM bandwidth and peak FLOP/s.

The default profile when nothing was measured. Every figure below is an assumption, kept in one place:
:data:`GPU_SPECS` (vendor datasheet numbers, dense bf16, no sparsity) and :class:`RooflineAssumptions`
(efficiencies and overheads). Per expert with ``P`` parameters and ``W`` bytes of weights on a GPU with HBM
bandwidth ``BW`` and peak ``F`` FLOP/s:

- ``step_base_s = W / (BW * hbm_efficiency) + step_overhead_s``: every decode step reads all weights once,
  plus the engine's per-step CPU work (scheduling, sampling, kernel launches);
- ``step_per_seq_s = 2 P / (F * decode_mfu)``: a forward pass costs ``2 P`` FLOPs per token;
- ``step_per_kv_token_s = kv_bytes / (BW * kv_efficiency)``: attention reads each cached token once per step;
- ``prefill_tps = F * prefill_mfu / (2 P)``;
- ``load_s = W / load_gbps + engine_start_s``; ``memory_gb = W + runtime_overhead_gb``; ``unload_s = 0`` (freeing
  an engine is not modelled here: measure it with ``mosaic profile``);
- ``kv_capacity_tokens = (gpu_memory * gpu_memory_utilization - memory_gb) / kv_bytes``.

KV bytes per token come from a GQA-style shape estimate: a dense transformer has ``P ~ 12 L d^2`` with
``d = aspect_ratio * L`` (Llama-3-8B: d = 4096, L = 32, ratio 128), so ``L = (P / (12 aspect^2))^(1/3)``;
K and V hold ``d / gqa_group`` values per layer, so ``kv_bytes = 2 * L * (d / gqa_group) * kv_bytes_per_value``
(8B: ~151 KB/token; Llama-3-8B's true value is 128 KiB). Sanity (8B, A100-80GB): one stream decodes ~59
tokens/s; a batch of 256 with 256 KV tokens each ~5.9k tokens/s (tests/predictors/test_roofline.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mosaic.core.errors import ProfileError
from mosaic.core.types import Expert
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.profile import CostProfile

GB = 1e9  # profiles use decimal gigabytes, like Worker.memory_gb


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """Datasheet figures of one GPU type (dense bf16)."""

    hbm_tbps: float  # HBM bandwidth, TB/s
    bf16_tflops: float  # peak dense bf16 tensor-core TFLOP/s
    memory_gb: float  # HBM capacity, GB


GPU_SPECS: dict[str, GpuSpec] = {  # GPU type -> datasheet figures
    "A100-40GB": GpuSpec(1.555, 312.0, 40.0),
    "A100-80GB": GpuSpec(2.039, 312.0, 80.0),
    "H100-80GB": GpuSpec(3.35, 989.0, 80.0),  # SXM5
    "H100-PCIe": GpuSpec(2.0, 756.0, 80.0),
    "H200-141GB": GpuSpec(4.8, 989.0, 141.0),
    "L40S-48GB": GpuSpec(0.864, 362.0, 48.0),
}


@dataclass(frozen=True, slots=True)
class RooflineAssumptions:
    """Efficiencies and overheads of the analytic profile (vLLM 0.7-era engine, bf16 weights)."""

    bytes_per_param: float = 2.0  # bf16 weights (used when an expert does not state its weight memory)
    hbm_efficiency: float = 0.8  # share of peak HBM bandwidth a decode step reaches reading weights
    kv_efficiency: float = 0.8  # share of peak HBM bandwidth paged attention reaches reading the KV cache
    decode_mfu: float = 0.65  # share of peak FLOP/s the decode GEMMs reach per extra sequence
    prefill_mfu: float = 0.6  # share of peak FLOP/s prefill reaches
    step_overhead_s: float = 0.007  # per-step CPU work: scheduler, sampler, detokeniser, CUDA-graph launch
    load_gbps: float = 2.5  # effective weight-load bandwidth from local NVMe / page cache, GB/s (2-3 typical)
    engine_start_s: float = 30.0  # vLLM 0.7 engine start: CUDA context, profiling run, CUDA-graph capture (20-40)
    runtime_overhead_gb: float = 3.0  # activations, CUDA graphs, CUDA context beside the weights
    gpu_memory_utilization: float = 0.9  # vLLM's default share of GPU memory it may use
    aspect_ratio: float = 128.0  # d_model / layers of the shape estimate
    gqa_group: float = 4.0  # query heads per KV head (Llama-3-8B: 32 / 8)
    kv_bytes_per_value: float = 2.0  # bf16 KV cache

    def __post_init__(self) -> None:
        bad = [k for k, v in asdict(self).items() if not v > 0]
        if bad:
            raise ProfileError(f"roofline assumptions must be > 0: {', '.join(bad)}")
        for k in ("hbm_efficiency", "kv_efficiency", "decode_mfu", "prefill_mfu", "gpu_memory_utilization"):
            if getattr(self, k) > 1:
                raise ProfileError(f"roofline assumption {k} must be <= 1, got {getattr(self, k)}")


def gpu_spec(gpu_type: str) -> GpuSpec:
    """Datasheet figures of ``gpu_type``; unknown types list the known ones."""
    try:
        return GPU_SPECS[gpu_type]
    except KeyError:
        raise ProfileError(
            f"roofline profile: unknown GPU type {gpu_type!r}; known: {', '.join(sorted(GPU_SPECS))} "
            "(or give costs.profile=PATH to a measured profile)"
        ) from None


def kv_bytes_per_token(params: float, a: RooflineAssumptions) -> float:
    """KV-cache bytes per token of a ``params``-parameter dense GQA transformer (shape estimate, see module doc)."""
    layers = (params / (12.0 * a.aspect_ratio**2)) ** (1.0 / 3.0)
    d_model = a.aspect_ratio * layers
    return 2.0 * layers * (d_model / a.gqa_group) * a.kv_bytes_per_value


def weights_gb(expert: Expert, a: RooflineAssumptions) -> float:
    """GPU memory of the weights: the expert's ``memory_gb`` when set, else ``params * bytes_per_param``."""
    return expert.memory_gb if expert.memory_gb > 0 else expert.params_b * a.bytes_per_param


def roofline_cost(expert: Expert, gpu_type: str, max_batch: int, a: RooflineAssumptions) -> ModelCost:
    """The analytic :class:`ModelCost` of ``expert`` on ``gpu_type``."""
    if not expert.params_b > 0:
        raise ProfileError(f"roofline profile: expert {expert.name!r} needs params_b > 0, got {expert.params_b}")
    spec = gpu_spec(gpu_type)
    params = expert.params_b * 1e9
    w_gb = weights_gb(expert, a)
    bw = spec.hbm_tbps * 1e12
    flops = spec.bf16_tflops * 1e12
    kv_bytes = kv_bytes_per_token(params, a)
    memory_gb = w_gb + a.runtime_overhead_gb
    free_gb = spec.memory_gb * a.gpu_memory_utilization - memory_gb
    if free_gb <= 0:
        raise ProfileError(
            f"roofline profile: expert {expert.name!r} ({w_gb:.1f} GB weights + {a.runtime_overhead_gb} GB overhead) "
            f"does not fit {gpu_type} ({spec.memory_gb} GB x {a.gpu_memory_utilization})"
        )
    return ModelCost(
        load_s=w_gb / a.load_gbps + a.engine_start_s,
        prefill_tps=flops * a.prefill_mfu / (2.0 * params),
        step_base_s=w_gb * GB / (bw * a.hbm_efficiency) + a.step_overhead_s,
        step_per_seq_s=2.0 * params / (flops * a.decode_mfu),
        step_per_kv_token_s=kv_bytes / (bw * a.kv_efficiency),
        memory_gb=memory_gb,
        max_batch=max_batch,
        kv_capacity_tokens=max(1, int(free_gb * GB / kv_bytes)),
    )


def roofline_profile(
    experts: Sequence[Expert],
    gpu_types: Sequence[str],
    max_batch: int,
    assumptions: RooflineAssumptions | None = None,
) -> CostProfile:
    """Analytic profile of every expert (duplicates by name once) on every GPU type."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ProfileError(f"roofline profile: max_batch must be an integer >= 1, got {max_batch!r}")
    if not gpu_types:
        raise ProfileError("roofline profile: no GPU types given")
    a = assumptions or RooflineAssumptions()
    unique = {e.name: e for e in experts}
    table = {g: {name: roofline_cost(e, g, max_batch, a) for name, e in unique.items()} for g in gpu_types}
    meta = {"source": "roofline", "assumptions": asdict(a),
            "gpu_specs": {g: asdict(gpu_spec(g)) for g in gpu_types}}  # fmt: skip
    return CostProfile(table, meta)
