"""``mosaic reproduce <study>`` for the studies in ``experiments/``: run the script into the report folder, then
write that folder's page from what the script left there (its table.txt and PNG charts)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mosaic.core.errors import ConfigError, MosaicError
from mosaic.reproduce.page import Page, write_page

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def studies() -> dict[str, str]:
    """Study name -> the first paragraph of its script's docstring (scripts in ``experiments/`` of this checkout)."""
    out = {}
    for path in sorted(EXPERIMENTS.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        doc = text.split('"""', 2)[1].strip() if text.startswith('"""') else ""
        out[path.stem] = " ".join(doc.split("\n\n")[0].split())
    return out


def script_of(study: str) -> Path:
    path = EXPERIMENTS / f"{study}.py"
    if not path.is_file():
        valid = ", ".join(["paper", *studies()]) or "paper"
        raise ConfigError(f"reproduce: unknown study {study!r}; valid: {valid}")
    return path


def run_script(study: str, out: Path, argv: Sequence[str], command: str) -> Page:
    """Run ``experiments/<study>.py --out OUT ARGV`` (its own progress and tables on the terminal), then write
    ``OUT/index.md`` and ``report.html`` with its table.txt and every PNG it wrote."""
    script = script_of(study)
    proc = subprocess.run([sys.executable, str(script), "--out", str(out), *argv], check=False)
    if proc.returncode != 0:
        raise MosaicError(f"reproduce {study}: {script.name} exited with status {proc.returncode}")
    blocks = tuple(("Table", p.read_text(encoding="utf-8")) for p in sorted(out.glob("table.txt")))
    images = tuple((p.stem.replace("_", " "), p.name) for p in sorted(out.glob("*.png")))
    doc = studies().get(study, "")
    page = Page(f"Study: {study}", command, doc, (), images, blocks)
    write_page(page, out)
    return page
