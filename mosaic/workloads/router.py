"""Skill-based routing: each query recruits k experts, sampled without replacement by skill (as Symbolic-MoE's
skill-based recruiting), so demand is skewed toward the experts strong in the query's domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mosaic.core.errors import ConfigError
from mosaic.core.types import Query

DOMAIN_SPREAD = 0.5  # std of the per-(domain, expert) skill deviations around an expert's base skill


@dataclass(frozen=True, slots=True)
class SkillRouter:
    """Routes with log-weights ``skew * (base skill + domain deviation)``; skew 0 is uniform demand."""

    experts: tuple[str, ...]
    base_skill: np.ndarray  # (n_experts,)
    domain_skill: Mapping[str, np.ndarray]  # domain -> (n_experts,) deviations
    k: int
    skew: float

    @classmethod
    def build(
        cls,
        experts: Sequence[str],
        skills: Mapping[str, float],
        domains: Sequence[str],
        k: int,
        skew: float,
        rng: np.random.Generator,
    ) -> SkillRouter:
        """A router over ``experts``; unknown experts get skill 1.0; per-domain deviations drawn from ``rng``."""
        if k > len(experts):
            raise ConfigError(f"workload.k = {k} but only {len(experts)} experts are configured")
        base = np.array([float(skills.get(e, 1.0)) for e in experts])
        dev = {d: rng.normal(0.0, DOMAIN_SPREAD, len(experts)) for d in sorted(set(domains))}
        return cls(tuple(experts), base, dev, k, skew)

    def logits(self, domain: str) -> np.ndarray:
        dev = self.domain_skill.get(domain)
        return self.skew * (self.base_skill + (0.0 if dev is None else dev))

    def route(self, queries: Sequence[Query], rng: np.random.Generator) -> tuple[tuple[str, ...], ...]:
        """k distinct experts per query (Gumbel top-k = sampling without replacement by weight), best first."""
        n, m = len(queries), len(self.experts)
        logits = np.stack([self.logits(q.domain) for q in queries]) if n else np.zeros((0, m))
        keys = logits + rng.gumbel(size=(n, m))
        top = np.argsort(-keys, axis=1, kind="stable")[:, : self.k]
        return tuple(tuple(self.experts[j] for j in row) for row in top)


def demand_ratio(routes: Sequence[Sequence[str]], experts: Sequence[str]) -> float:
    """Most-demanded over least-demanded expert (inf when one expert gets nothing)."""
    counts = {e: 0 for e in experts}
    for r in routes:
        for e in r:
            counts[e] += 1
    lo, hi = min(counts.values()), max(counts.values())
    return float("inf") if lo == 0 else hi / lo
