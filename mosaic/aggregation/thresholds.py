"""Skip policies for the aggregation stage: a fixed confidence threshold, and a hook for learned policies.

Registered in :data:`mosaic.aggregation.registry.AGGREGATION_POLICIES` on import:
``always`` (never skip), ``threshold`` (:class:`FixedThreshold`), ``learned`` (:class:`LearnedThresholdPolicy`),
``calibrated`` (:class:`CalibratedSkip`, a fitted reliability model), ``load-aware`` (:class:`LoadAwareThreshold`,
the aggregator's queue and the query's wait at run time) and ``load-ladder`` (:class:`BacklogLadder`, from always
to T = 1 to 2/3 as that queue grows).
:func:`features` is the observation shared with learned (RL) skip policies: one fixed-length float32 vector.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mosaic.aggregation.interface import (
    SKIP_TOLERANCE,
    AggregationPolicy,
    AlwaysAggregate,
    Load,
    LoadProbe,
    ThresholdPolicy,
)
from mosaic.aggregation.registry import AGGREGATION_POLICIES
from mosaic.aggregation.reliability import SkipModel as ReliabilitySkipModel
from mosaic.core.errors import ConfigError, WorkloadError
from mosaic.core.types import ExpertKind, Query

FEATURE_NAMES: tuple[str, ...] = (
    "confidence",  # share of the k experts giving the most common answer
    "k",  # number of experts that answered the query
    "margin",  # share of the most common answer minus share of the second
    "distinct_share",  # distinct extracted answers / k
    "no_answer_share",  # share of experts with no extracted answer
    "reasoning_share",  # share of reasoning experts among the k (0 when kinds unknown)
    "log_aggregator_cost",  # log1p(predicted aggregator seconds for this query)
    "log_prompt_tokens",  # log1p(query prompt tokens)
    "n_choices",  # number of answer options (0: open answer)
)
# Upper limits of a learned policy's observation box, in FEATURE_NAMES order (values are clipped into [0, limit]).
FEATURE_HIGH = {
    "confidence": 1.0, "k": 32.0, "margin": 1.0, "distinct_share": 1.0, "no_answer_share": 1.0,
    "reasoning_share": 1.0, "log_aggregator_cost": 16.0, "log_prompt_tokens": 16.0, "n_choices": 32.0,
}  # fmt: skip

DEFAULT_TOLERANCE = 0.005  # a threshold given to two decimals (0.67) means the fraction it rounds (2/3)


def features(
    query: Query,
    answers: Sequence[str | None],
    confidence: float,
    expert_kinds: Sequence[ExpertKind | str] = (),
    predicted_aggregator_cost: float = 0.0,
) -> np.ndarray:
    """Observation for a skip decision, ordered as :data:`FEATURE_NAMES` (float32, finite).

    ``expert_kinds``: kind of each of the k experts (empty when unknown); ``predicted_aggregator_cost``: seconds the
    aggregator call would take (from the cost model), >= 0.
    """
    k = len(answers)
    if k == 0:
        raise WorkloadError(f"query {query.id}: skip features need at least one expert answer")
    if not 0.0 <= confidence <= 1.0:
        raise WorkloadError(f"query {query.id}: confidence must be in [0, 1], got {confidence}")
    if expert_kinds and len(expert_kinds) != k:
        raise WorkloadError(f"query {query.id}: {len(expert_kinds)} expert kinds for {k} answers")
    if not (predicted_aggregator_cost >= 0.0 and math.isfinite(predicted_aggregator_cost)):
        raise WorkloadError(f"query {query.id}: predicted aggregator cost must be finite and >= 0")
    counts = [*sorted(Counter(a for a in answers if a is not None).values(), reverse=True), 0, 0]
    reasoning = sum(ExpertKind(kind) is ExpertKind.REASONING for kind in expert_kinds)
    return np.array(
        [
            confidence,
            k,
            (counts[0] - counts[1]) / k,
            len([c for c in counts if c > 0]) / k,
            sum(a is None for a in answers) / k,
            reasoning / k,
            math.log1p(predicted_aggregator_cost),
            math.log1p(max(query.prompt_tokens, 0)),
            len(query.choices),
        ],
        dtype=np.float32,
    )


class FixedThreshold(ThresholdPolicy):
    """Skip the aggregator when confidence >= T (T = 1: unanimous; T = 2/3: also 2:1 votes of k = 3).

    Unlike the bare :class:`ThresholdPolicy` (tolerance 1e-9), ``tolerance`` absorbs thresholds written with two
    decimals: T = 0.67 skips at confidence 2/3, as the paper's T = 2/3.
    """

    name = "threshold"

    def __init__(self, threshold: float = 1.0, tolerance: float = DEFAULT_TOLERANCE) -> None:
        super().__init__(threshold)
        if not (isinstance(tolerance, int | float) and 0.0 <= tolerance < 0.05):
            raise ConfigError(f"aggregation threshold tolerance must be in [0, 0.05), got {tolerance!r}")
        self.tolerance = max(float(tolerance), SKIP_TOLERANCE)

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        return confidence >= self.threshold - self.tolerance

    def __repr__(self) -> str:
        return f"FixedThreshold({self.threshold:g})"


class LoadAwareThreshold(FixedThreshold):
    """Skip at confidence >= ``threshold`` while the aggregator keeps up, and at >= ``busy_threshold`` when it is
    the bottleneck: its queue holds >= ``backlog_s`` predicted seconds per worker, or the query has already waited
    ``slo_s`` seconds since it arrived (its latency budget is spent). The load comes from the no-barrier loop
    (:meth:`watch`); without it (a stage barrier) the rule is the fixed ``threshold``."""

    name = "load-aware"

    def __init__(self, threshold: float = 1.0, busy_threshold: float = 0.67, backlog_s: float = 30.0,
                 slo_s: float = math.inf, tolerance: float = DEFAULT_TOLERANCE) -> None:  # fmt: skip
        super().__init__(threshold, tolerance)
        self.busy_threshold = FixedThreshold(busy_threshold, tolerance).threshold
        if not (backlog_s >= 0 and slo_s > 0):
            raise ConfigError(f"load-aware policy: backlog_s must be >= 0 and slo_s > 0, got {backlog_s}, {slo_s}")
        self.backlog_s, self.slo_s = float(backlog_s), float(slo_s)
        self.probe: LoadProbe | None = None
        self.busy_decisions = 0  # decisions made under the busy threshold in the current run

    def watch(self, probe: LoadProbe | None) -> None:
        self.probe, self.busy_decisions = probe, 0

    def busy(self, query: Query) -> bool:
        """Whether the aggregator is the bottleneck for ``query`` now."""
        if self.probe is None:
            return False
        load = self.probe()
        return load.backlog_s >= self.backlog_s or load.now - query.arrival >= self.slo_s

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        if confidence >= self.threshold - self.tolerance:
            return True
        if confidence >= self.busy_threshold - self.tolerance and self.busy(query):
            self.busy_decisions += 1
            return True
        return False

    def __repr__(self) -> str:
        return (f"LoadAwareThreshold({self.threshold:g}, busy {self.busy_threshold:g} at backlog "
                f"{self.backlog_s:g} s/worker or waited {self.slo_s:g} s)")  # fmt: skip


class BacklogLadder(AggregationPolicy):
    """Skip the aggregator less the emptier its queue: never while its backlog per worker is below
    ``unanimous_s`` predicted seconds, at T = 1 (unanimous votes) from there, and at T = ``busy_threshold`` (2/3:
    also 2:1 votes) from ``busy_s``; a query that has already waited ``slo_s`` seconds since it arrived is decided
    at ``busy_threshold`` whatever the backlog. Without a load probe (a stage barrier) the backlog reads 0, so the
    rule never skips, i.e. it is "always" there. ``unanimous_s <= busy_s``; ``math.inf`` switches a rung off."""

    name = "load-ladder"

    def __init__(self, unanimous_s: float = 0.0, busy_s: float = math.inf, busy_threshold: float = 0.67,
                 slo_s: float = math.inf, tolerance: float = DEFAULT_TOLERANCE) -> None:  # fmt: skip
        if not (0 <= unanimous_s <= busy_s and slo_s > 0):
            raise ConfigError(f"load ladder: need 0 <= unanimous_s <= busy_s and slo_s > 0, got {unanimous_s}, "
                              f"{busy_s}, {slo_s}")  # fmt: skip
        self.unanimous = FixedThreshold(1.0, tolerance)
        self.busy = FixedThreshold(busy_threshold, tolerance)
        self.unanimous_s, self.busy_s, self.slo_s = float(unanimous_s), float(busy_s), float(slo_s)
        self.probe: LoadProbe | None = None

    def watch(self, probe: LoadProbe | None) -> None:
        self.probe = probe

    def rung(self, query: Query) -> FixedThreshold | None:
        """The threshold in force for ``query`` now (None: aggregate whatever the vote)."""
        load = self.probe() if self.probe is not None else None
        backlog = load.backlog_s if load is not None else 0.0
        if backlog >= self.busy_s or (load is not None and load.now - query.arrival >= self.slo_s):
            return self.busy
        return self.unanimous if backlog >= self.unanimous_s else None

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        rung = self.rung(query)
        return rung is not None and rung.decide(query, answers, confidence)

    def __repr__(self) -> str:
        return (f"BacklogLadder(T=1 from {self.unanimous_s:g} s/worker, T={self.busy.threshold:g} from "
                f"{self.busy_s:g} s/worker or waited {self.slo_s:g} s)")  # fmt: skip


class CalibratedSkip(AggregationPolicy):
    """Skip when the expected accuracy a skip loses, P(aggregator correct) - P(majority correct) of a
    :class:`~mosaic.aggregation.reliability.SkipModel` fitted on calibration questions, is at most ``max_loss``."""

    name = "calibrated"

    def __init__(self, model: str | ReliabilitySkipModel, max_loss: float = 0.05) -> None:
        self.model = model if isinstance(model, ReliabilitySkipModel) else ReliabilitySkipModel.load(model)
        if not (isinstance(max_loss, int | float) and -1.0 <= max_loss <= 1.0):
            raise ConfigError(f"calibrated skip policy: max_loss must be in [-1, 1], got {max_loss!r}")
        self.max_loss = float(max_loss)

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        x = self.model.features(query, answers)
        return bool(self.model.expected_loss(x)[0] <= self.max_loss)

    def __repr__(self) -> str:
        return f"CalibratedSkip(max_loss={self.max_loss:g})"


SkipModel = Any  # a callable features -> skip, or an object with .predict(features)
Context = Callable[[Query], tuple[Sequence[ExpertKind | str], float]]  # query -> (expert kinds, aggregator seconds)


class LearnedThresholdPolicy(AggregationPolicy):
    """Skip when a learned model says so: ``model.predict(features)`` (or ``model(features)``) -> skip.

    The output may be a bool, a 0/1 action, a probability (skip when >= 0.5), a size-1 array, or an SB3-style
    ``(action, state)`` tuple. ``context`` supplies what :meth:`decide` is not given: the experts' kinds and the
    predicted aggregator seconds of a query (default: unknown kinds, cost 0).
    """

    name = "learned"

    def __init__(self, model: SkipModel, context: Context | None = None) -> None:
        if not (callable(model) or callable(getattr(model, "predict", None))):
            raise ConfigError("learned aggregation policy needs a callable or an object with .predict(features)")
        self.model = model
        self.context = context

    def features(self, query: Query, answers: Sequence[str | None], confidence: float) -> np.ndarray:
        kinds, cost = self.context(query) if self.context is not None else ((), 0.0)
        return features(query, answers, confidence, kinds, cost)

    def decide(self, query: Query, answers: Sequence[str | None], confidence: float) -> bool:
        obs = self.features(query, answers, confidence)
        predict = getattr(self.model, "predict", None)
        out = predict(obs) if callable(predict) else self.model(obs)
        if isinstance(out, tuple):  # stable-baselines3: (action, state)
            out = out[0]
        values = np.asarray(out, dtype=float).ravel()
        if values.size != 1 or not np.isfinite(values[0]):
            raise WorkloadError(f"learned skip model returned {out!r}; expected one finite skip value")
        return bool(values[0] >= 0.5)


LOAD_FEATURE_NAMES: tuple[str, ...] = (
    "log_backlog_s",  # log1p(predicted aggregator seconds queued per worker)
    "log_queued_per_worker",  # log1p(aggregator requests released and not finished / workers)
    "log_waited_s",  # log1p(seconds since the query arrived)
)
ONLINE_FEATURE_NAMES = FEATURE_NAMES + LOAD_FEATURE_NAMES  # the observation of a load-aware learned policy
ONLINE_FEATURE_HIGH = FEATURE_HIGH | dict.fromkeys(LOAD_FEATURE_NAMES, 16.0)


def load_features(query: Query, load: Load | None) -> np.ndarray:
    """The run-time part of a load-aware observation, ordered as :data:`LOAD_FEATURE_NAMES` (zeros without a
    load: a stage barrier)."""
    if load is None:
        return np.zeros(len(LOAD_FEATURE_NAMES), dtype=np.float32)
    per_worker = load.queued / load.workers if load.workers else 0.0
    waited = max(load.now - query.arrival, 0.0)
    return np.array([math.log1p(load.backlog_s), math.log1p(per_worker), math.log1p(waited)], dtype=np.float32)


class LearnedLoadPolicy(LearnedThresholdPolicy):
    """A learned skip policy that also sees the load when the query's experts finish: ``model`` gets
    :func:`features` followed by :func:`load_features` (:data:`ONLINE_FEATURE_NAMES`); the policy trained in
    ``mosaic/AggOnline-v0`` is one of these there and here."""

    name = "learned-load"

    def __init__(self, model: SkipModel, context: Context | None = None) -> None:
        super().__init__(model, context)
        self.probe: LoadProbe | None = None

    def watch(self, probe: LoadProbe | None) -> None:
        self.probe = probe

    def features(self, query: Query, answers: Sequence[str | None], confidence: float) -> np.ndarray:
        load = self.probe() if self.probe is not None else None
        return np.concatenate([super().features(query, answers, confidence), load_features(query, load)])


AGGREGATION_POLICIES.register("always", "never skip the aggregator (the MoA baseline)")(AlwaysAggregate)
AGGREGATION_POLICIES.register("threshold", "skip when expert agreement >= T (paper: T = 1, 2/3)")(FixedThreshold)
AGGREGATION_POLICIES.register("learned", "skip when a learned model predicts so (RL hook)")(LearnedThresholdPolicy)
AGGREGATION_POLICIES.register("calibrated", "skip when a calibrated model's expected accuracy loss <= max_loss")(
    CalibratedSkip
)
AGGREGATION_POLICIES.register("load-aware", "skip at a lower T while the aggregator queue is long or the query "
                              "has waited its SLO (runtime.barrier: false)")(LoadAwareThreshold)  # fmt: skip
AGGREGATION_POLICIES.register("load-ladder", "never skip while the aggregator queue is short, T = 1 once it builds, "
                              "2/3 under a long backlog (runtime.barrier: false)")(BacklogLadder)  # fmt: skip


def make_aggregation_policy(name: str, **kwargs: Any) -> AggregationPolicy:
    """Instantiate the aggregation policy registered as ``name`` (e.g. ``threshold``, threshold=0.67)."""
    return AGGREGATION_POLICIES.get(name)(**kwargs)
