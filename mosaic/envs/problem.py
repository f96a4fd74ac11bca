"""What an env episode runs: an :class:`Instance` (workload, true responses, predictions, cluster), and the
tuples that carry instances and start plans through ``gymnasium.make`` unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from mosaic.core.errors import ConfigError
from mosaic.core.types import Cluster, Plan, Responses, Workload
from mosaic.predictors.interface import CostModel


@dataclass(frozen=True, slots=True)
class Instance:
    """One scheduling problem: what runs (workload), its truth (responses) and what the agent is told (costs)."""

    workload: Workload
    responses: Responses  # true output lengths the simulator replays; never shown to the agent
    costs: CostModel  # bound to ``workload``: the predictions the agent and the schedulers see
    cluster: Cluster
    max_batch: int | None = None  # runtime cap on every engine's batch (None: the profile's)
    resident: Mapping[int, str | None] = field(default_factory=dict)  # worker id -> expert loaded at the start
    name: str = ""

    def __repr__(self) -> str:
        wl = self.workload
        return (f"Instance({self.name or wl.name!r}: {len(wl.queries)} queries, {len(wl.requests)} requests, "
                f"{len(self.cluster)} workers)")  # fmt: skip


class SharedTuple(tuple):
    """An immutable tuple of :attr:`item_type` objects that copies as itself, so it can travel in ``gymnasium.make``
    kwargs (the registry deep-copies them; workloads and plans hold mapping proxies, which do not copy) and be
    shared by env copies."""

    item_type: ClassVar[type] = object

    def __new__(cls, items: Iterable[Any] = ()) -> Self:
        items = tuple(items)
        bad = [type(i).__name__ for i in items if not isinstance(i, cls.item_type)]
        if bad:
            raise ConfigError(f"{cls.__name__} holds {cls.item_type.__name__} objects only, got {bad[:3]}")
        return super().__new__(cls, items)

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict) -> Self:
        return self


class InstanceSet(SharedTuple):
    """A :class:`SharedTuple` of :class:`Instance` s."""

    item_type = Instance


class PlanSet(SharedTuple):
    """A :class:`SharedTuple` of start plans, one per instance of an env (computed once, shared by env copies)."""

    item_type = Plan
