"""Attention shapes of known models, for KV-cache bytes per token from the architecture instead of an estimate.

``kv_bytes = layers x kv_heads x head_dim x 2 (K and V) x bytes per value``; Llama-3-8B: 32 x 8 x 128 x 2 x 2 =
131,072 bytes (128 KiB). Shapes are the ``num_hidden_layers`` (``num_layers``), ``num_key_value_heads``
(``multi_query_group_num``) and ``head_dim`` (``kv_channels``, else hidden size / attention heads) of each model's
``config.json``, as read in public sources: Llama-3-8B from Vidur's ``vidur/config/model_config.py``
(``Llama3_8BModelConfig``), Qwen2-7B's module tree and config (k_proj 3584 -> 512 = 4 heads x 128), gemma-2-9b's
``Gemma2Config`` (42 layers, 8 KV heads, head_dim 256) and glm-4-9b's config (40 layers, 2 groups, kv_channels
128). Distilled models share their base's shape (DeepSeek-R1-Distill-Llama-8B: Llama-3.1-8B;
DeepSeek-R1-Distill-Qwen-7B: Qwen2.5-Math-7B). Models not listed fall back to the roofline's estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from mosaic.core.types import Expert


@dataclass(frozen=True, slots=True)
class KvShape:
    """What a model's KV cache holds per token: ``layers x kv_heads x head_dim`` values for K and as many for V."""

    layers: int
    kv_heads: int
    head_dim: int

    def bytes_per_token(self, bytes_per_value: float) -> float:
        return 2.0 * self.layers * self.kv_heads * self.head_dim * bytes_per_value


_LLAMA3_8B = KvShape(32, 8, 128)
_QWEN2_7B = KvShape(28, 4, 128)
_GEMMA2_9B = KvShape(42, 8, 256)
_GLM4_9B = KvShape(40, 2, 128)

KV_SHAPES: dict[str, KvShape] = {  # lower-case hub id -> shape
    "meta-llama/meta-llama-3-8b": _LLAMA3_8B,
    "meta-llama/meta-llama-3-8b-instruct": _LLAMA3_8B,
    "meta-llama/llama-3.1-8b": _LLAMA3_8B,
    "meta-llama/llama-3.1-8b-instruct": _LLAMA3_8B,
    "deepseek-ai/deepseek-r1-distill-llama-8b": _LLAMA3_8B,
    "qwen/qwen2-7b": _QWEN2_7B,
    "qwen/qwen2-7b-instruct": _QWEN2_7B,
    "qwen/qwen2.5-7b": _QWEN2_7B,
    "qwen/qwen2.5-7b-instruct": _QWEN2_7B,
    "deepseek-ai/deepseek-r1-distill-qwen-7b": _QWEN2_7B,
    "google/gemma-2-9b": _GEMMA2_9B,
    "google/gemma-2-9b-it": _GEMMA2_9B,
    "thudm/glm-4-9b": _GLM4_9B,
    "thudm/glm-4-9b-chat": _GLM4_9B,
}


def kv_shape(expert: Expert) -> KvShape | None:
    """The attention shape of ``expert``'s model (by its hub id, case-insensitive), None when not known."""
    return KV_SHAPES.get(expert.model_id.strip().lower())
