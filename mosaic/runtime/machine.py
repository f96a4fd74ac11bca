"""Which machine a cost profile was measured on, and whether it is this one.

A profile's times describe one machine: a simulation with another machine's profile, compared with real engines
here, measures the hardware difference, not the simulator (the shipped ``experiments/profiles/cpu_tiny.yaml``'s
decode step is ~5x a newer CPU's). ``mosaic profile`` records :func:`machine_fingerprint` in each entry's ``meta``;
:func:`profile_machine_note` says when a profile was measured elsewhere, or does not say where.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mosaic.predictors.profile import CostProfile

FINGERPRINT_KEYS = ("cpu", "cores", "gpu")  # compared; anything else in ``meta["machine"]`` is informational


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_names() -> str | None:
    """The visible NVIDIA GPUs' names, comma-joined (``nvidia-smi``), or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.splitlines() if n.strip()]
    return ", ".join(names) or None


def machine_fingerprint() -> dict[str, Any]:
    """This machine's CPU model, core count and GPUs, as ``mosaic profile`` records them."""
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 0, "gpu": gpu_names(), "host": platform.node()}


def profile_machine_note(profile: CostProfile, gpu_type: str, here: dict[str, Any] | None = None) -> str | None:
    """None when every ``gpu_type`` entry of ``profile`` was measured on a machine like this one (``here``:
    :func:`machine_fingerprint` unless given); else one line saying where it was measured, or that it does not say."""
    here = machine_fingerprint() if here is None else here
    mine = {k: here.get(k) for k in FINGERPRINT_KEYS}
    entries = [(e, profile.meta.get(f"{e}@{gpu_type}")) for e in profile.experts]
    unknown = sorted(e for e, m in entries if not isinstance(m, dict) or not isinstance(m.get("machine"), dict))
    other = sorted({_describe(m["machine"]) for e, m in entries if e not in unknown
                    and {k: m["machine"].get(k) for k in FINGERPRINT_KEYS} != mine})  # fmt: skip
    if other:
        return (f"the cost profile was measured on {'; '.join(other)}, this machine is {_describe(here)}: "
                f"simulated times describe that machine (re-profile here: "
                f"mosaic profile --config CFG --out FILE)")  # fmt: skip
    if unknown:
        return (f"the cost profile does not say which machine it was measured on ({', '.join(unknown)}): its "
                f"simulated times may describe another machine than this one ({_describe(here)})")  # fmt: skip
    return None


def _describe(m: dict[str, Any]) -> str:
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m.get('cpu')} ({m.get('cores')} cores{gpu})"


__all__ = ["cpu_model", "gpu_names", "machine_fingerprint", "profile_machine_note"]
