"""Expert -> model folder and sampling settings for real engines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mosaic.core.errors import ConfigError
from mosaic.runtime.engine_spec import MODELS_ENV, ModelSpec, check_local_paths, resolve_models
from mosaic.runtime.vllm_backend import cpu_defaults


def cfg_with(**expert_fields):
    e = SimpleNamespace(name="a", mean_output_tokens=50.0, **expert_fields)
    return SimpleNamespace(workload=SimpleNamespace(experts=[e]), runtime=SimpleNamespace(max_batch=8))


def test_model_id_is_the_path_and_config_sets_defaults(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path)
    specs = resolve_models(wl, cfg_with())
    assert specs["a"].path == str(tmp_path / "tiny-llama-a") and specs["a@agg"].path == specs["a"].path
    assert specs["a"].max_tokens == 200  # 4 x mean_output_tokens
    assert specs["a"].max_num_seqs == 8  # runtime.max_batch
    assert specs["b"].max_tokens == 256 and specs["b"].temperature is None


def test_future_config_fields_and_extra_mapping_win(vt, tmp_path):
    wl = vt.tiny_workload(tmp_path)
    cfg = cfg_with(temperature=0.7, system_prompt="Be brief.", path="/models/other")
    extra = {"a": {"max_tokens": 9}, "_engine": {"dtype": "float32"}}
    a = resolve_models(wl, cfg, extra)["a"]
    assert (a.temperature, a.system_prompt, a.path, a.max_tokens, a.dtype) == (
        0.7, "Be brief.", "/models/other", 9, "float32")  # fmt: skip


def test_mapping_file_from_environment(vt, tmp_path, monkeypatch):
    f = tmp_path / "models.yaml"
    f.write_text("b:\n  temperature: 0.0\n  top_p: 0.9\n")
    monkeypatch.setenv(MODELS_ENV, str(f))
    b = resolve_models(vt.tiny_workload(tmp_path))["b"]
    assert (b.temperature, b.top_p) == (0.0, 0.9)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_models(vt.tiny_workload(tmp_path))


def test_unknown_setting_is_named(vt, tmp_path):
    with pytest.raises(ConfigError, match="expert 'a': unknown model setting 'temprature'"):
        resolve_models(vt.tiny_workload(tmp_path), None, {"a": {"temprature": 1.0}})


def test_missing_local_folder_suggests_make_tiny(tmp_path):
    with pytest.raises(ConfigError, match="mosaic models make-tiny"):
        check_local_paths({"a": ModelSpec(str(tmp_path / "nope"))})
    check_local_paths({"a": ModelSpec("Qwen/Qwen2.5-7B-Instruct")})  # a hub id is not checked


def test_cpu_defaults_float32():
    assert cpu_defaults(ModelSpec("m")).dtype == "float32"
    assert cpu_defaults(ModelSpec("m", dtype="bfloat16")).dtype == "bfloat16"
    assert ModelSpec("m", max_num_seqs=4).engine_dict(7)["seed"] == 7
