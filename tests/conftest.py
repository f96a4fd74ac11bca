"""Shared fixtures: a tiny workload, and the real data directory when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mosaic.core.types import Cluster, Expert, ExpertKind, Query, Workload

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MOSAIC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (set MOSAIC_SHARED_DATA or place ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def tiny_workload() -> Workload:
    experts = (
        Expert("inst", "org/inst-7b", 7.0, ExpertKind.INSTRUCT, 14.0),
        Expert("reas", "org/reas-8b", 8.0, ExpertKind.REASONING, 16.0),
        Expert("inst2", "org/inst2-9b", 9.0, ExpertKind.INSTRUCT, 18.0),
    )
    queries = tuple(Query(i, f"question {i}", prompt_tokens=50 + i) for i in range(4))
    routes = (("inst", "reas"), ("reas",), ("inst", "inst2"), ("inst2", "reas", "inst"))
    return Workload.build("tiny", queries, experts, routes, experts[1])


@pytest.fixture
def two_workers() -> Cluster:
    return Cluster.homogeneous(2, "A100-80GB", 80.0)
