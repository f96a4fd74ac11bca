"""mosaic.agents: the Scheduler interface, its registry, the baseline schedulers and the lower bound.

Importing this package registers 'sequential', 'round-robin', 'data-parallel', 'greedy-lpt', 'mosaic-ilp' and
'mosaic-ilp-fixed', 'rl-reschedule' in
:data:`SCHEDULERS`; build one by name with :func:`make_scheduler`.
"""

from mosaic.agents.bounds import (
    BoundTerms,
    bound_terms,
    lower_bound,
    order_worker_times,
    plan_with_estimates,
    predicted_worker_times,
)
from mosaic.agents.data_parallel import DataParallelScheduler
from mosaic.agents.greedy_lpt import GreedyLPTScheduler, greedy_lpt_order
from mosaic.agents.ilp_scheduler import MosaicIlpFixedScheduler, MosaicIlpScheduler
from mosaic.agents.interface import Scheduler
from mosaic.agents.online import GreedyOnline, GreedyOnlineScheduler
from mosaic.agents.registry import SCHEDULERS, make_scheduler
from mosaic.agents.replanning import Replanning, ReplanningScheduler
from mosaic.agents.rl import RLRescheduleScheduler, load_agent, rl_threshold_policy  # torch/SB3 imported lazily
from mosaic.agents.robust_ilp import RobustIlpScheduler, RobustIlpStealingScheduler
from mosaic.agents.round_robin import RoundRobinScheduler
from mosaic.agents.sequential import SequentialScheduler
from mosaic.agents.stealing import StealingScheduler, WorkStealing

__all__ = [
    "SCHEDULERS",
    "BoundTerms",
    "DataParallelScheduler",
    "GreedyLPTScheduler",
    "GreedyOnline",
    "GreedyOnlineScheduler",
    "MosaicIlpFixedScheduler",
    "MosaicIlpScheduler",
    "RLRescheduleScheduler",
    "Replanning",
    "ReplanningScheduler",
    "RobustIlpScheduler",
    "RobustIlpStealingScheduler",
    "RoundRobinScheduler",
    "Scheduler",
    "SequentialScheduler",
    "StealingScheduler",
    "WorkStealing",
    "bound_terms",
    "greedy_lpt_order",
    "load_agent",
    "lower_bound",
    "make_scheduler",
    "order_worker_times",
    "plan_with_estimates",
    "predicted_worker_times",
    "rl_threshold_policy",
]
