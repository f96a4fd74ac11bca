"""W&B tracking: offline by default, online with --track, off with tracking.mode=disabled."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mosaic.core.config import TrackingCfg


class Tracker:
    """A thin wrapper around one W&B run; every method is a no-op when tracking is disabled."""

    def __init__(self, cfg: TrackingCfg, run_name: str, config: Mapping[str, Any], out_dir: str | Path) -> None:
        self.mode = cfg.mode
        self.run: Any = None
        if self.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        import wandb  # heavy import, only when tracking

        self._wandb = wandb
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=run_name,
            config=dict(config),
            mode=self.mode,
            dir=str(out),
            reinit="finish_previous",
        )

    @property
    def directory(self) -> Path | None:
        """The local W&B run directory (``wandb/offline-run-*`` in offline mode)."""
        return Path(self.run.dir).parent if self.run is not None else None

    def log_metrics(self, metrics: Mapping[str, float | int | None], prefix: str = "") -> None:
        if self.run is None:
            return
        clean = {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
        self.run.summary.update(clean)
        self.run.log(clean)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.run is not None:
            self.run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_image(self, key: str, path: str | Path) -> None:
        if self.run is not None:
            self.run.log({key: self._wandb.Image(str(path))})

    def log_file(self, name: str, path: str | Path, kind: str = "trace") -> None:
        """Store a file (a trace, a plan) as a W&B artifact (characters W&B refuses in a name, such as the ``+`` of
        ``mosaic-ilp+steal``, become ``-``)."""
        if self.run is None:
            return
        art = self._wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", name), type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def log_run(
    cfg: TrackingCfg,
    run_name: str,
    config: Mapping[str, Any],
    out_dir: str | Path,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None,
    images: Mapping[str, str | Path] | None = None,
    metrics: Mapping[str, float | int | None] | None = None,
) -> Path | None:
    """A finished experiment as one W&B run: ``tables`` (key -> columns, rows), ``images`` (key -> PNG path) and
    summary ``metrics``. Returns the local run directory (None when tracking is disabled)."""
    tracker = Tracker(cfg, run_name, config, out_dir)
    try:
        for key, (columns, rows) in (tables or {}).items():
            tracker.log_table(key, columns, rows)
        for key, path in (images or {}).items():
            tracker.log_image(key, path)
        tracker.log_metrics(metrics or {})
        return tracker.directory
    finally:
        tracker.finish()
