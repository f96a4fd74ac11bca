"""Analytic (roofline) cost profile from parameter count, HBM bandwidth and peak FLOP/s.

The default profile when nothing was measured. Every figure below is an assumption, kept in one place:
:data:`GPU_SPECS` (vendor datasheet numbers, dense bf16, no sparsity) and :class:`RooflineAssumptions`
(efficiencies and overheads). Per expert with ``P`` parameters and ``W`` bytes of weights on a GPU with HBM
bandwidth ``BW`` and peak ``F`` FLOP/s, with step model ``sum`` (the default):

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

**Step model ``max``** (a roofline is a max, not a sum: weight reads and GEMM compute overlap on a GPU; attention
over the KV cache is a kernel of its own, so its reads add to either). A step is the larger of two lines
(:class:`~mosaic.predictors.interface.ModelCost`), ``max_overhead_s`` added to both:

- memory: ``W / (BW * hbm_efficiency) + max_seq_share * 2 P / (F * decode_mfu) * b + kv_s * kv``;
- compute: ``2 P / (F * decode_mfu) * b + kv_s * kv``, with ``kv_s = kv_bytes / (BW * kv_efficiency)``;

and ``kv_bytes`` from the model's architecture where :mod:`mosaic.predictors.architectures` knows it (layers x KV
heads x head dim x 2 x ``kv_bytes_per_value``), else the estimate above. ``max_seq_share`` is the share of a
sequence's compute-bound seconds that small-batch GEMMs still cost while weight reads bound the step: fitted with
``decode_mfu`` to Vidur's measured A100 linear-layer times of Llama-3-8B at batch 1-256 (``python
experiments/calibration.py --fit`` prints the fit). ``max_overhead_s`` is 0: Vidur, the reference, models no CPU
overhead by default (``skip_cpu_overhead_modeling = True`` in its ``vidur/config/config.py``) and vLLM V1 overlaps
scheduling with the GPU (its design goal "near-zero CPU overhead", blog.vllm.ai/2025/01/27/v1-alpha-release.html);
the sum model's 7 ms was never measured. Set it from a measured engine (``mosaic profile``) where it matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mosaic.core.errors import ProfileError
from mosaic.core.types import Expert
from mosaic.predictors.architectures import kv_shape
from mosaic.predictors.interface import STEP_MODELS, ModelCost
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
    max_seq_share: float = 0.49  # step model max: memory line's seconds per sequence / the compute line's (fit)
    max_overhead_s: float = 0.0  # step model max: per-step CPU overhead (none measured: see the module doc)

    def __post_init__(self) -> None:
        may_be_zero = {"max_seq_share", "max_overhead_s"}
        bad = [k for k, v in asdict(self).items() if not (v >= 0 if k in may_be_zero else v > 0)]
        if bad:
            raise ProfileError(f"roofline assumptions must be > 0: {', '.join(bad)} "
                               f"({' and '.join(sorted(may_be_zero))} may be 0)")  # fmt: skip
        for k in ("hbm_efficiency", "kv_efficiency", "decode_mfu", "prefill_mfu", "gpu_memory_utilization",
                  "max_seq_share"):  # fmt: skip
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


def expert_kv_bytes(expert: Expert, a: RooflineAssumptions, step_model: str = "sum") -> tuple[float, str]:
    """KV bytes per token of ``expert`` and where they come from: the architecture (step model ``max``, when the
    model is known) or the shape estimate (``"estimate"``; always under ``sum``, as before)."""
    shape = kv_shape(expert) if step_model == "max" else None
    if shape is None:
        return kv_bytes_per_token(expert.params_b * 1e9, a), "estimate"
    return shape.bytes_per_token(a.kv_bytes_per_value), "architecture"


def weights_gb(expert: Expert, a: RooflineAssumptions) -> float:
    """GPU memory of the weights: the expert's ``memory_gb`` when set, else ``params * bytes_per_param``."""
    return expert.memory_gb if expert.memory_gb > 0 else expert.params_b * a.bytes_per_param


def roofline_cost(
    expert: Expert, gpu_type: str, max_batch: int, a: RooflineAssumptions, step_model: str = "sum"
) -> ModelCost:
    """The analytic :class:`ModelCost` of ``expert`` on ``gpu_type`` (``step_model``: ``sum`` or ``max``)."""
    if step_model not in STEP_MODELS:
        raise ProfileError(f"roofline profile: step model must be one of {', '.join(STEP_MODELS)}, got {step_model!r}")
    if not expert.params_b > 0:
        raise ProfileError(f"roofline profile: expert {expert.name!r} needs params_b > 0, got {expert.params_b}")
    spec = gpu_spec(gpu_type)
    params = expert.params_b * 1e9
    w_gb = weights_gb(expert, a)
    bw = spec.hbm_tbps * 1e12
    flops = spec.bf16_tflops * 1e12
    kv_bytes, _ = expert_kv_bytes(expert, a, step_model)
    memory_gb = w_gb + a.runtime_overhead_gb
    free_gb = spec.memory_gb * a.gpu_memory_utilization - memory_gb
    if free_gb <= 0:
        raise ProfileError(
            f"roofline profile: expert {expert.name!r} ({w_gb:.1f} GB weights + {a.runtime_overhead_gb} GB overhead) "
            f"does not fit {gpu_type} ({spec.memory_gb} GB x {a.gpu_memory_utilization})"
        )
    weights_s = w_gb * GB / (bw * a.hbm_efficiency)
    seq_s = 2.0 * params / (flops * a.decode_mfu)
    kv_s = kv_bytes / (bw * a.kv_efficiency)
    if step_model == "max":
        ov = a.max_overhead_s
        step = dict(step_base_s=weights_s + ov, step_per_seq_s=a.max_seq_share * seq_s, step_per_kv_token_s=kv_s,
                    step_compute_base_s=ov, step_compute_per_seq_s=seq_s, step_compute_per_kv_token_s=kv_s)  # fmt: skip
    else:
        step = dict(step_base_s=weights_s + a.step_overhead_s, step_per_seq_s=seq_s, step_per_kv_token_s=kv_s)
    return ModelCost(
        load_s=w_gb / a.load_gbps + a.engine_start_s,
        prefill_tps=flops * a.prefill_mfu / (2.0 * params),
        memory_gb=memory_gb,
        max_batch=max_batch,
        kv_capacity_tokens=max(1, int(free_gb * GB / kv_bytes)),
        **step,
    )


def roofline_profile(
    experts: Sequence[Expert],
    gpu_types: Sequence[str],
    max_batch: int,
    assumptions: RooflineAssumptions | None = None,
    step_model: str = "sum",
) -> CostProfile:
    """Analytic profile of every expert (duplicates by name once) on every GPU type."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ProfileError(f"roofline profile: max_batch must be an integer >= 1, got {max_batch!r}")
    if not gpu_types:
        raise ProfileError("roofline profile: no GPU types given")
    a = assumptions or RooflineAssumptions()
    unique = {e.name: e for e in experts}
    table = {g: {name: roofline_cost(e, g, max_batch, a, step_model) for name, e in unique.items()}
             for g in gpu_types}  # fmt: skip
    meta = {"source": "roofline", "assumptions": asdict(a),
            "gpu_specs": {g: asdict(gpu_spec(g)) for g in gpu_types}}  # fmt: skip
    if step_model != "sum":  # the sum model's meta stays as before
        meta["step_model"] = step_model
        meta["kv_bytes_source"] = {name: expert_kv_bytes(e, a, step_model)[1] for name, e in unique.items()}
    return CostProfile(table, meta)
