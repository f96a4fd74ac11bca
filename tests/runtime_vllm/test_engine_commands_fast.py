"""``mosaic profile|models|resume`` parsing and the parts that need no engine."""

from __future__ import annotations

import json

import pytest

from mosaic import cli
from mosaic.runtime.registry import BACKENDS


def test_commands_are_registered_and_backends_too():
    parser = cli.build_parser()
    args = parser.parse_args(["profile", "--model", "m", "--gpu-type", "cpu", "--out", "p.yaml",
                              "--batch-sizes", "1,2,8", "--workers", "2"])  # fmt: skip
    assert args.batch_sizes == (1, 2, 8) and args.workers == 2 and args.func.__name__ == "cmd_profile"
    assert parser.parse_args(["models", "smollm2", "--out", "x"]).func.__name__ == "cmd_smollm2"
    assert parser.parse_args(["resume", "c.yaml", "--trace", "t.jsonl"]).func.__name__ == "cmd_resume"
    assert "vllm" in BACKENDS and "ray" in BACKENDS


def test_profile_takes_a_model_or_a_config(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["profile", "--config", "c.yaml", "--out", "p.yaml", "--set", "cluster.workers=4"])
    assert args.config == "c.yaml" and args.model is None and args.overrides == ["cluster.workers=4"]
    with pytest.raises(SystemExit):
        parser.parse_args(["profile", "--config", "c.yaml", "--model", "m", "--out", "p.yaml"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert cli.main(["profile", "--model", "m", "--out", "p.yaml"]) == 2
    assert "needs --gpu-type" in capsys.readouterr().out
    assert cli.main(["profile", "--config", "c.yaml", "--out", "p.yaml", "--dtype", "float32"]) == 2
    assert "not --dtype" in capsys.readouterr().out


def test_bad_batch_sizes_are_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["profile", "--model", "m", "--gpu-type", "g", "--out", "o",
                                       "--batch-sizes", "1,x"])  # fmt: skip
    assert "comma-separated integers" in capsys.readouterr().err


def test_make_tiny_command_builds_the_set(tmp_path):
    pytest.importorskip("tokenizers")
    assert cli.main(["models", "make-tiny", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama-a", "tiny-qwen2-b"]
    assert cli.main(["models", "make-tiny", "--out", str(tmp_path / "one"), "--single", "--arch", "qwen2"]) == 0
    assert json.loads((tmp_path / "one" / "config.json").read_text())["model_type"] == "qwen2"


def test_resume_errors_are_clear(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    assert cli.main(["resume", str(cfg), "--trace", str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().out.split())
    trace = tmp_path / "t.jsonl"
    trace.write_text("")
    assert cli.main(["resume", str(cfg), "--trace", str(trace)]) == 2
    assert "needs a real backend" in " ".join(capsys.readouterr().out.split())
