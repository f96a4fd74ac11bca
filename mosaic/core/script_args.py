"""Command lines of the experiment scripts: one ``--flag`` per field of an arguments dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def choice_field(default: str, choices: Sequence[str]) -> Any:
    """A dataclass field whose flag takes one of ``choices`` (argparse refuses anything else, naming them)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def _add(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    flag = "--" + field.name.replace("_", "-")
    default = field.default
    if "choices" in field.metadata:
        parser.add_argument(flag, choices=field.metadata["choices"], default=default)
    elif isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
    elif isinstance(default, tuple):
        parser.add_argument(flag, nargs="+", type=type(default[0]) if default else str, default=default)
    else:
        parser.add_argument(flag, type=str if default is None else type(default), default=default)


def parse_dataclass_args(cls: type[T], doc: str | None, argv: Sequence[str] | None = None) -> T:
    """``cls`` (a dataclass whose fields all have defaults) from the command line: ``--field-name VALUE`` of the
    default's type, ``--flag/--no-flag`` for booleans, ``--field a b c`` for tuples, a string where the default is
    None, one of the choices for a :func:`choice_field`. ``doc``: the script's docstring (the help text)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        _add(parser, field)
    values: dict[str, Any] = vars(parser.parse_args(argv))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
