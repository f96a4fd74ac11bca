"""A backend in 30 lines: the simulator, with every stage's engines coming up ``startup_s`` late (the engine and
Ray start-up the simulator leaves out), so a study can ask how much of a plan's gain survives a fixed cold start."""

from __future__ import annotations

from dataclasses import replace

from mosaic.runtime.interface import Backend, StageResult
from mosaic.runtime.registry import BACKENDS
from mosaic.runtime.sim import make_sim_backend


class DelayedStart(Backend):
    name = "sim-delayed"

    def __init__(self, cfg, responses, costs, startup_s: float = 30.0) -> None:
        self.sim, self.startup_s = make_sim_backend(cfg, responses, costs), startup_s

    def run_stage(self, stage, plan, workload, cluster, trace, start=0.0, resident=None) -> StageResult:
        result = self.sim.run_stage(stage, plan, workload, cluster, trace, start + self.startup_s, resident)
        return replace(result, start=start)  # the stage began when it was asked to; its engines came up late


BACKENDS.register("sim-delayed", help="simulator with a fixed engine start-up per stage")(DelayedStart)
