"""R_max: how many workers an expert may be placed on, from the ratio of its work to its load cost.

A replica pays its expert's load again, so replicating only pays when the expert's work is large next to its
load: heavy reasoning experts (minutes of decode per worker, a ~35 s load) may go on every worker, while
light instruct experts whose whole work is about one load are pinned to a single worker. The rule:

    R_max(e) = clamp(floor(work_e / (ratio * load_e)), 1, min(workers, requests_e))

with ``work_e`` the expert's predicted seconds at full batch (sum over its requests), ``load_e`` its cheapest
load (0 when it is already resident somewhere: no cap but the cluster size), ``ratio`` the work a replica must
be able to carry in units of its load (default 1: each replica at least one load's worth of work on average).
A per-expert override replaces the rule (still clamped to the cluster size and the expert's requests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mosaic.core.errors import ConfigError


def replication_cap(work_s: float, load_s: float, requests: int, workers: int, ratio: float) -> int:
    """R_max of one expert by the rule above (at least 1)."""
    upper = max(1, min(workers, requests))
    if load_s <= 0.0:
        return upper
    return max(1, min(upper, math.floor(work_s / (ratio * load_s) + 1e-9)))


def replication_caps(
    experts: Sequence[str],
    work_s: Sequence[float],
    load_s: Sequence[float],
    requests: Sequence[int],
    workers: int,
    ratio: float,
    overrides: Mapping[str, int] | None = None,
) -> tuple[int, ...]:
    """R_max of every expert; ``overrides`` (expert -> int >= 1) win over the rule, names not in ``experts`` are
    ignored (the same scheduler also plans the aggregation stage, whose only expert is the aggregator)."""
    caps = []
    for name, work, load, n in zip(experts, work_s, load_s, requests, strict=True):
        value = (overrides or {}).get(name)
        if value is None:
            caps.append(replication_cap(work, load, n, workers, ratio))
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"ilp: r_max override for expert {name!r} must be an integer >= 1, got {value!r}")
        caps.append(max(1, min(value, workers, n)))
    return tuple(caps)
