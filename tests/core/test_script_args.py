"""parse_dataclass_args: the experiment scripts' command lines."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mosaic.core.config import TRACKING_MODES
from mosaic.core.script_args import choice_field, parse_dataclass_args


@dataclass(frozen=True)
class Args:
    out: str = "runs/x"
    rounds: int = 3
    share: float = 0.5
    tasks: tuple[str, ...] = ("a", "b")
    grid: tuple[float, ...] = (1.0, 0.67)
    reprofile: bool = False
    profile: str | None = None


def test_defaults_and_every_kind_of_flag():
    assert parse_dataclass_args(Args, "doc", []) == Args()
    argv = ["--rounds", "7", "--share", "0.25", "--tasks", "x", "y", "z", "--grid", "0.5", "--reprofile",
            "--profile", "p.yaml", "--out", "o"]  # fmt: skip
    got = parse_dataclass_args(Args, "doc", argv)
    assert got == Args("o", 7, 0.25, ("x", "y", "z"), (0.5,), True, "p.yaml")
    assert parse_dataclass_args(Args, "doc", ["--no-reprofile"]).reprofile is False


def test_bad_values_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        parse_dataclass_args(Args, "doc", ["--rounds", "many"])
    assert "--rounds" in capsys.readouterr().err


def test_choice_fields_refuse_other_values(capsys):
    @dataclass(frozen=True)
    class Tracked:
        wandb: str = choice_field("offline", TRACKING_MODES)

    assert parse_dataclass_args(Tracked, "doc", []).wandb == "offline"
    assert parse_dataclass_args(Tracked, "doc", ["--wandb", "disabled"]).wandb == "disabled"
    with pytest.raises(SystemExit):
        parse_dataclass_args(Tracked, "doc", ["--wandb", "sometimes"])
    assert "invalid choice: 'sometimes' (choose from 'offline', 'online', 'disabled')" in capsys.readouterr().err
