"""Which machine a cost profile describes: the fingerprint ``mosaic profile`` records, and the note when it differs."""

from __future__ import annotations

from pathlib import Path

from mosaic.predictors.interface import ModelCost
from mosaic.predictors.profile import CostProfile
from mosaic.runtime.machine import machine_fingerprint, profile_machine_note

HERE = {"cpu": "AMD EPYC 9654", "cores": 2, "gpu": None, "host": "a"}
MC = ModelCost(1.0, 1e4, 1e-3, 0.0, 0.0, 0.1, 16, 10_000)


def profile(**machines) -> CostProfile:
    meta = {f"{e}@cpu": ({"machine": m} if m is not None else {}) for e, m in machines.items()}
    return CostProfile({"cpu": dict.fromkeys(machines, MC)}, meta)


def test_fingerprint_names_this_machine():
    m = machine_fingerprint()
    assert m["cpu"] and m["cores"] >= 1 and set(m) >= {"cpu", "cores", "gpu"}


def test_same_machine_gives_no_note_whatever_the_host():
    assert profile_machine_note(profile(a=HERE, b={**HERE, "host": "b"}), "cpu", HERE) is None


def test_another_machine_is_named():
    other = {**HERE, "cpu": "Intel Xeon 8375C", "cores": 4}
    note = profile_machine_note(profile(a=HERE, b=other), "cpu", HERE)
    assert note is not None and "Intel Xeon 8375C (4 cores)" in note and "AMD EPYC 9654 (2 cores)" in note


def test_a_profile_that_does_not_say_gets_a_note():
    note = profile_machine_note(profile(a=HERE, b=None), "cpu", HERE)
    assert note is not None and "does not say" in note and "(b)" in note
    shipped = Path(__file__).resolve().parents[2] / "experiments" / "profiles" / "cpu_tiny.yaml"
    assert "does not say" in profile_machine_note(CostProfile.from_file(shipped), "cpu", HERE)
