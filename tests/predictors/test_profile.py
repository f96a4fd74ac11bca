"""CostProfile: file round trips, atomic writes, precise errors for bad files, lookups and helpers."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from mosaic.core.errors import ProfileError
from mosaic.predictors.interface import ModelCost
from mosaic.predictors.profile import CostProfile

MC = ModelCost(36.0, 12000.0, 0.017, 8e-05, 9e-08, 19.0, max_batch=256, kv_capacity_tokens=350_000)
MC2 = ModelCost(30.0, 15000.5, 0.012, 6e-05, 7e-08, 17.0, max_batch=128, kv_capacity_tokens=400_000)


def profile() -> CostProfile:
    return CostProfile(
        {"A100-80GB": {"QwenR1": MC, "gemma": MC2}, "H100-80GB": {"QwenR1": MC2}},
        {"source": "test", "note": "hand-written"},
    )


def raw() -> dict:
    return profile().to_dict()


def write(tmp_path: Path, data: object, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["p.yaml", "p.yml", "p.json", "sub/dir/p.yaml"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    p = profile()
    path = p.to_file(tmp_path / name)
    back = CostProfile.from_file(path)
    assert back == p
    assert back.get("QwenR1", "H100-80GB") == MC2
    assert isinstance(back.get("gemma", "A100-80GB").max_batch, int)
    if name.endswith(".json"):
        assert json.loads(path.read_text())["version"] == 1


def test_to_file_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.yaml"
    profile().to_file(path)
    before = path.read_text()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        CostProfile({"A100-80GB": {"x": MC}}).to_file(path)
    assert path.read_text() == before  # the old file is intact
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.yaml"]  # the temp file was removed


def test_optional_fields_take_model_cost_defaults(tmp_path: Path) -> None:
    data = raw()
    entry = data["gpu_types"]["A100-80GB"]["experts"]["QwenR1"]
    del entry["max_batch"], entry["kv_capacity_tokens"]
    mc = CostProfile.from_file(write(tmp_path, data)).get("QwenR1", "A100-80GB")
    defaults = {f.name: f.default for f in fields(ModelCost)}
    assert (mc.max_batch, mc.kv_capacity_tokens) == (defaults["max_batch"], defaults["kv_capacity_tokens"])


def test_unload_round_trips_and_defaults_to_zero(tmp_path: Path) -> None:
    mc = ModelCost(2.0, 1000.0, 0.01, 1e-5, 0.0, 1.0, unload_s=1.25)
    assert mc.unload_s == 1.25 and ModelCost(2.0, 1000.0, 0.01, 1e-5, 0.0, 1.0).unload_s == 0.0
    for name in ("p.yaml", "p.json"):
        path = CostProfile({"cpu": {"a": mc, "b": MC}}).to_file(tmp_path / name)
        back = CostProfile.from_file(path)
        assert back.get("a", "cpu") == mc and back.get("a", "cpu").unload_s == 1.25
        assert back.get("b", "cpu").unload_s == 0.0
    data = _drop("unload_s")
    assert "unload_s" not in data["gpu_types"]["A100-80GB"]["experts"]["QwenR1"]
    assert CostProfile.from_dict(data).get("QwenR1", "A100-80GB").unload_s == 0.0


BASE = "gpu_types.A100-80GB.experts.QwenR1"


def _set(field: str, value: object) -> dict:
    data = raw()
    data["gpu_types"]["A100-80GB"]["experts"]["QwenR1"][field] = value
    return data


def _drop(field: str) -> dict:
    data = raw()
    del data["gpu_types"]["A100-80GB"]["experts"]["QwenR1"][field]
    return data


BAD_FILES = [
    (_set("prefill_tps", 0), f"{BASE}.prefill_tps must be > 0 (got 0)"),
    (_set("load_s", -1.0), f"{BASE}.load_s must be >= 0 (got -1.0)"),
    (_set("unload_s", -0.5), f"{BASE}.unload_s must be >= 0 (got -0.5)"),
    (_set("unload_s", "1s"), f"{BASE}.unload_s must be a number (got '1s')"),
    (_set("memory_gb", "16GB"), f"{BASE}.memory_gb must be a number (got '16GB')"),
    (_set("step_base_s", True), f"{BASE}.step_base_s must be a number (got True)"),
    (_set("max_batch", 2.5), f"{BASE}.max_batch must be an integer (got 2.5)"),
    (_set("max_batch", 0), f"{BASE}.max_batch must be >= 1 (got 0)"),
    (_set("step_per_kv_token_s", float("inf")), f"{BASE}.step_per_kv_token_s must be finite (got inf)"),
    (_set("prefil_tps", 1.0), f"unknown field {BASE}.prefil_tps; allowed:"),
    (_drop("step_per_seq_s"), f"{BASE} lacks step_per_seq_s"),
    ({**raw(), "version": 2}, "version must be 1 (got 2)"),
    ({"version": 1}, "gpu_types must be a mapping (got nothing)"),
    ({"version": 1, "gpu_types": {}}, "gpu_types must list at least one GPU type"),
    ({"version": 1, "gpu_types": {"A100-80GB": {"experts": []}}}, "gpu_types.A100-80GB.experts must be a mapping"),
    ({"version": 1, "gpu_types": {"A100-80GB": {"models": {}}}}, "unknown field gpu_types.A100-80GB.models"),
    ([1, 2], "(top level) must be a mapping (got list)"),
    ({**raw(), "extra": 1}, "unknown field extra; allowed: gpu_types, meta, version"),
]


@pytest.mark.parametrize("name", ["p.yaml", "p.json"])
@pytest.mark.parametrize(("data", "message"), BAD_FILES)
def test_bad_files_name_the_file_and_the_field(tmp_path: Path, data: object, message: str, name: str) -> None:
    path = write(tmp_path, data, name)
    with pytest.raises(ProfileError) as err:
        CostProfile.from_file(path)
    assert str(err.value).startswith(f"profile {path}: ")
    assert message in str(err.value)


def test_zero_cost_decode_step_is_rejected(tmp_path: Path) -> None:
    data = _set("step_base_s", 0.0)
    data["gpu_types"]["A100-80GB"]["experts"]["QwenR1"]["step_per_seq_s"] = 0.0
    with pytest.raises(ProfileError, match=r"QwenR1: step_base_s \+ step_per_seq_s must be > 0"):
        CostProfile.from_file(write(tmp_path, data))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        CostProfile.from_file(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("version: [1\n")
    with pytest.raises(ProfileError, match=r"bad.yaml is not valid YAML"):
        CostProfile.from_file(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{version: 1}")
    with pytest.raises(ProfileError, match=r"bad.json is not valid JSON"):
        CostProfile.from_file(bad_json)


def test_get_names_what_is_missing_and_what_exists() -> None:
    p = profile()
    assert p.get("gemma", "A100-80GB") == MC2
    with pytest.raises(ProfileError, match=r"no expert 'llama' on GPU type 'A100-80GB'; it has: QwenR1, gemma"):
        p.get("llama", "A100-80GB")
    with pytest.raises(ProfileError, match=r"no GPU type 'V100'; it has: A100-80GB, H100-80GB"):
        p.get("QwenR1", "V100")
    assert p.experts == ("QwenR1", "gemma")
    assert p.gpu_types == ("A100-80GB", "H100-80GB")


def test_require_lists_every_missing_pair() -> None:
    p = profile()
    p.require(["QwenR1"], ["A100-80GB", "H100-80GB"])
    with pytest.raises(ProfileError, match=r"lacks gemma@H100-80GB, llama@H100-80GB"):
        p.require(["QwenR1", "gemma", "llama"], ["H100-80GB"])


def test_merge_prefers_the_other_profile() -> None:
    p = profile()
    other = CostProfile({"A100-80GB": {"QwenR1": MC2}, "L40S-48GB": {"gemma": MC}}, {"source": "measured"})
    merged = p.merge(other)
    assert merged.get("QwenR1", "A100-80GB") == MC2
    assert merged.get("gemma", "A100-80GB") == MC2  # kept from p
    assert merged.get("gemma", "L40S-48GB") == MC
    assert merged.meta["source"] == "measured" and merged.meta["note"] == "hand-written"
    assert p.get("QwenR1", "A100-80GB") == MC  # p itself unchanged


def test_with_max_batch_sets_or_caps() -> None:
    p = profile()
    assert {mc.max_batch for es in p.with_max_batch(64).table.values() for mc in es.values()} == {64}
    capped = p.with_max_batch(200, cap=True)
    assert capped.get("QwenR1", "A100-80GB").max_batch == 200
    assert capped.get("gemma", "A100-80GB").max_batch == 128
    assert p.with_max_batch(512).get("gemma", "A100-80GB").max_batch == 512
    for bad in (0, 2.0, True):
        with pytest.raises(ProfileError, match="max_batch must be an integer >= 1"):
            p.with_max_batch(bad)  # type: ignore[arg-type]


def test_profile_is_immutable() -> None:
    p = profile()
    with pytest.raises(TypeError):
        p.table["A100-80GB"]["x"] = MC  # type: ignore[index]
    with pytest.raises(AttributeError):
        p.meta = {}  # type: ignore[misc]


def test_step_line_and_paged_fields_round_trip_and_are_left_out_at_defaults(tmp_path: Path) -> None:
    paged = ModelCost(36.0, 12000.0, 0.01, 4e-05, 9e-08, 19.0, step_compute_per_seq_s=8e-05,
                      step_compute_per_kv_token_s=9e-08, kv_block_tokens=32, memory_mode="paged")  # fmt: skip
    p = CostProfile({"A100-80GB": {"a": paged, "b": MC}})
    entries = p.to_dict()["gpu_types"]["A100-80GB"]["experts"]
    assert "memory_mode" not in entries["b"] and "step_compute_base_s" not in entries["b"]  # written as before
    assert entries["a"]["memory_mode"] == "paged" and entries["a"]["kv_block_tokens"] == 32
    assert CostProfile.from_file(p.to_file(tmp_path / "p.yaml")) == p
    assert {mc.memory_mode for mc in profile().with_memory_mode("paged").table["A100-80GB"].values()} == {"paged"}
    with pytest.raises(ProfileError, match="memory_mode must be one of reserve, paged"):
        profile().with_memory_mode("swap")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("memory_mode", "swap", r"experts\.QwenR1\.memory_mode must be one of reserve, paged \(got 'swap'\)"),
    ("kv_block_tokens", 0, r"experts\.QwenR1\.kv_block_tokens must be >= 1"),
    ("step_compute_per_seq_s", -1.0, r"experts\.QwenR1\.step_compute_per_seq_s must be >= 0"),
])  # fmt: skip
def test_bad_paged_and_step_line_fields_are_named(tmp_path: Path, field: str, value: object, message: str) -> None:
    data = raw()
    data["gpu_types"]["A100-80GB"]["experts"]["QwenR1"][field] = value
    with pytest.raises(ProfileError, match=message):
        CostProfile.from_file(write(tmp_path, data))
