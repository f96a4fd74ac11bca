"""A tiny RouterBench-format CSV written by hand, so loader and experiment tests run without the shared data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mosaic.workloads.routerbench import MODELS, TASKS


def _arc_prompt(question: str, options: list[str]) -> str:
    instruction = 'Print only a single choice  from "A" or "B" or "C" or "D" without explanation.\nAnswer:'
    shot = f"Which is a planet?\nA) Mars\nB) Moon\nC) Sun\nD) Io\n{instruction}\nA"
    lines = [question] + [f"{chr(65 + i)}) {o}" for i, o in enumerate(options)]
    block = "\n".join(lines) + "\n" + instruction
    return repr([f"{shot}\n\n{block}"])


def _row(i: int, prompt: str, answers: list[str], gold: str, eval_name: str) -> dict[str, str]:
    row = {"": str(i), "sample_id": f"{eval_name}.{i}", "prompt": prompt, "eval_name": eval_name}
    for m, a in zip(MODELS, answers, strict=True):
        row[m] = "1.0" if a.strip().rstrip(")").strip() == gold else "0.0"
        row[f"{m}|model_response"] = repr([a])
        row[f"{m}|total_cost"] = "0.001"
    row["oracle_model_to_route_to"] = MODELS[0]
    return row


def write_tiny_routerbench(folder: Path) -> Path:
    """ARC-like (8 questions), Winogrande-like (4) and MBPP-like (4) files with 11 models each."""
    folder.mkdir(parents=True, exist_ok=True)
    options = ["dry palms", "wet palms", "oily palms", "lotion"]
    arc = []
    for i in range(8):
        gold = "ABCD"[i % 4]
        wrong = "ABCD"[(i + 1) % 4]
        answers = [gold] * 6 + [f"{wrong}\n", "I do not know", f"{gold})", wrong, gold]
        arc.append(_row(i, _arc_prompt(f"Question {i}?", options), answers, gold, "arc-challenge"))
    wino = []
    for i in range(4):
        prompt = repr(["Please answer.\n\nIan helped Dennis because _ was kind.\nA) Ian\nB) Dennis\nAnswer:"])
        answers = ["A"] * 5 + ["B"] * 4 + ["Ian", "There is"]
        wino.append(_row(i, prompt, answers, "A", "winogrande"))
    code_a = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    code_b = "```python\nimport math\nclass Thing:\n    pass\n```"
    mbpp = [_row(i, repr([f"Write a function {i}."]), [code_a] * 6 + [code_b] * 5, code_a, "mbpp") for i in range(4)]
    for name, rows in (("arc-challenge", arc), ("winogrande", wino), ("mbpp", mbpp)):
        with (folder / TASKS[name].file).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.fixture
def tiny_routerbench(tmp_path: Path) -> Path:
    return write_tiny_routerbench(tmp_path / "routerbench")


@pytest.fixture
def tiny_routerbench_eval(tmp_path: Path) -> Path:
    """A second copy, for --eval-dir."""
    return write_tiny_routerbench(tmp_path / "routerbench_eval")
