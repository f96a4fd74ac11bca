"""mosaic.ilp: the MOSAIC ILP (joint expert placement and per-worker assignment) built with PuLP.

Flow: :func:`build_instance` (workload + costs + cluster -> :class:`IlpInstance`, requests bucketed per expert)
-> ``model.build`` (PuLP problem) -> ``solve.solve`` (HiGHS or CBC) -> ``extract`` (-> :class:`Plan`).
:func:`schedule` runs the whole flow; only plain Python/numpy values and :class:`Plan` leave the package.
"""

from mosaic.ilp.instance import IlpError, IlpInstance, InstanceOptions, build_instance
from mosaic.ilp.replication import replication_cap, replication_caps
from mosaic.ilp.schedule import IlpOptions, IlpOutcome, schedule
from mosaic.ilp.solve import SOLVERS, SolveOptions, SolveResult

__all__ = [
    "SOLVERS",
    "IlpError",
    "IlpInstance",
    "IlpOptions",
    "IlpOutcome",
    "InstanceOptions",
    "SolveOptions",
    "SolveResult",
    "build_instance",
    "replication_cap",
    "replication_caps",
    "schedule",
]
