"""The docs site's generated pages, built from the code at ``mkdocs build`` time (this module is the site's hook):
the config reference from the pydantic models, the CLI reference from the argument parsers, and the run-folder
reference from the trace records and the metrics. Never hand-copied, so they cannot go stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mosaic.cli import build_parser
from mosaic.core import trace
from mosaic.core.config import RunConfig
from mosaic.report.metrics import RunMetrics
from mosaic.report.table import COLUMNS, LATENCY_COLUMNS

GENERATED = {
    "reference/config.md": lambda: config_reference(),
    "reference/cli.md": lambda: cli_reference(),
    "reference/run_folder.md": lambda: run_folder_reference(),
}


def _esc(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "mosaic.core.config.", "<class '", "'>"):
        text = text.replace(noise, "")
    return text


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    return f"`{value.model_dump() if isinstance(value, BaseModel) else value!r}`"


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    yield prefix, model
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _sections(ann, f"{prefix}{name}.")


def _nested_models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    for field in model.model_fields.values():
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            for inner in (arg, *typing.get_args(arg)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield inner


def _field_table(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            continue  # a section of its own
        cells = (f"`{prefix}{name}`", f"`{_type_name(ann)}`", _default(field), field.description or "")
        lines.append("| " + " | ".join(_esc(c) for c in cells) + " |")
    return lines


def config_reference() -> str:
    """Every config field: its dotted name (as ``--set`` takes it), type, default and meaning."""
    out = ["# Config reference", "", "Generated from `mosaic.core.config.RunConfig` at build time. Any field can be "
           "set in the YAML file or on the command line with `--set dotted.name=value`.", ""]  # fmt: skip
    for prefix, model in _sections(RunConfig):
        title = prefix.rstrip(".") or "top level"
        out += [f"## `{title}`", "", (model.__doc__ or "").strip(), "", *_field_table(model, prefix), ""]
    seen = {m for _, m in _sections(RunConfig)}
    for nested in dict.fromkeys(m for _, model in _sections(RunConfig) for m in _nested_models(model)):
        if nested not in seen:
            out += [f"## `{nested.__name__}` (list items)", "", (nested.__doc__ or "").strip(), "",
                    *_field_table(nested, ""), ""]  # fmt: skip
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, f"{path} {name}")


def cli_reference() -> str:
    """Every ``mosaic`` command's help, as argparse prints it."""
    out = ["# CLI reference", "", "Generated from `mosaic.cli.build_parser()` at build time (`mosaic COMMAND "
           "--help` prints the same).", ""]  # fmt: skip
    for path, parser in _subcommands(build_parser(), "mosaic"):
        parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=110)
        out += [f"## `{path}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _dataclass_table(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    lines = ["| key | type |", "|---|---|"]
    lines += [f"| `{f.name}` | `{_esc(_type_name(hints[f.name]))}` |" for f in dataclasses.fields(cls)]
    return lines


def run_folder_reference() -> str:
    """What a run folder holds: files, trace record schemas, metrics keys, the table's columns."""
    out = [
        "# Run folder",
        "",
        "Generated from `mosaic.core.trace`, `mosaic.report.metrics` and `mosaic.report.table` at build time.",
        "",
        "## Files",
        "",
        *FILES,
        "",
        "## Trace records",
        "",
        "`<scheduler>.trace.jsonl`: one JSON object per line, the first a header; each record has a `type`.",
    ]
    for cls in trace.RECORD_TYPES:
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        out += ["", f"### `{cls.__name__}`", "", doc, "", *_dataclass_table(cls)]
    out += [
        "",
        "## `metrics.json`",
        "",
        "A list, one object per scheduler: the fields of `RunMetrics`.",
        "",
        *_dataclass_table(RunMetrics),
        "",
        "## The comparison table",
        "",
        "| column | meaning |",
        "|---|---|",
    ]
    missing = [c for c in (*COLUMNS, *LATENCY_COLUMNS) if c not in COLUMN_HELP]
    if missing:  # a new column must be explained here before the site builds
        raise KeyError(f"docsgen.COLUMN_HELP has no meaning for table column(s) {missing}")
    out += [f"| {c} | {COLUMN_HELP[c]} |" for c in COLUMNS]
    out += ["", "## The latency table (online runs)", "", "| column | meaning |", "|---|---|"]
    out += [f"| {c} | {COLUMN_HELP[c]} |" for c in LATENCY_COLUMNS]
    return "\n".join(out)


COLUMN_HELP = {
    "scheduler": "the scheduler (speedups are against the config's `baseline`, the first of `--schedulers`)",
    "expert s": "simulated (or measured) seconds of the expert stage, first request start to last finish",
    "expert x": "baseline's expert stage / this one",
    "aggregation s": "seconds of the aggregation stage",
    "aggregation x": "baseline's aggregation stage / this one",
    "end-to-end s": "first expert request start to last aggregation finish",
    "end-to-end x": "baseline's end to end / this one",
    "true LB s": "lower bound on any plan's expert stage from the true lengths the simulator replays (work, the "
    "longest request's chain with its decode latency, per-expert replication, placement relaxation): valid for "
    "the simulated makespan ([plan quality](../plan_quality.md))",
    "gap %": "expert stage above the true lower bound: an upper bound on the distance to the true optimum",
    "vs oracle %": "expert stage against mosaic-ilp given the true lengths (the oracle plan), simulated",
    "pred LB s": "the plan's lower bound from the *predicted* costs: a statement about the model, not the run",
    "pred gap %": "the plan's predicted makespan above its predicted bound (the model's own gap)",
    "loads": "model loads in the expert stage",
    "idle %": "share of worker-seconds of the expert stage with no request running",
    "skip %": "queries whose aggregator call was skipped (their experts agreed)",
    "accuracy %": "share of queries answered correctly (ground truth of the replayed responses)",
    "Δacc pp": "accuracy minus the always-aggregate accuracy, percentage points",
    "mean s": "mean per-query latency, arrival to answer",
    "p50 s": "median per-query latency",
    "p90 s": "90th percentile latency",
    "p99 s": "99th percentile latency",
    "SLO 5x %": "queries answered within 5x their latency on an idle cluster",
    "SLO 10x %": "queries answered within 10x their idle-cluster latency",
    "queries/s": "answered queries per second over the run",
    "util %": "mean share of time the workers had a request running",
}


FILES = [
    "| file | what |",
    "|---|---|",
    "| `config.yaml` | the config as run, every default filled in |",
    "| `status.json` | `running`, `finished` or `failed` (with the error); a killed run stays `running` |",
    "| `<scheduler>.trace.jsonl` | every request, load and aggregation decision (schemas below) |",
    "| `table.txt` | the comparison table as printed (and the latency table for online runs) |",
    "| `metrics.json` | each scheduler's metrics (keys below) |",
    "| `gantt.png` | one panel per scheduler: loads, expert and aggregation requests per worker |",
    "| `wandb/` | the offline W&B run (`wandb sync` uploads it) |",
]


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated pages to the site."""
    from mkdocs.structure.files import File

    for uri, make in GENERATED.items():
        files.append(File.generated(config, uri, content=make()))
    return files
