"""The paper's experts and its three benchmark workloads (PAPER_NOTES.md), as data.

Six experts (two reasoning, four instruct), k = 3 by skill routing, aggregator per benchmark as Symbolic-MoE chose
it. Skills are routing affinities per domain (larger = recruited more often); accuracies are per-expert logits of
answering correctly at mean difficulty. Both are best estimates calibrated to the paper's demand skew (up to 92x)
and skip rates, not published numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mosaic.core.config import ExpertCfg


def _expert(name: str, model_id: str, params_b: float, kind: str, mean: float, system: int = 40) -> ExpertCfg:
    return ExpertCfg(name=name, model_id=model_id, params_b=params_b, kind=kind, mean_output_tokens=mean,  # type: ignore[arg-type]
                     system_prompt_tokens=system)  # fmt: skip


PAPER_EXPERTS: tuple[ExpertCfg, ...] = (
    _expert("LlamaR1", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", 8.03, "reasoning", 3100.0),
    _expert("QwenR1", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7.62, "reasoning", 2900.0),
    _expert("Gemma2", "google/gemma-2-9b-it", 9.24, "instruct", 230.0),
    _expert("EXAONE", "LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct", 7.82, "instruct", 240.0),
    _expert("GLM4", "THUDM/glm-4-9b-chat", 9.40, "instruct", 210.0),
    _expert("Qwen2.5", "Qwen/Qwen2.5-7B-Instruct", 7.62, "instruct", 220.0),
)


@dataclass(frozen=True, slots=True)
class Preset:
    """One paper workload: size, question source, domains, routing skills, accuracies and difficulty."""

    name: str
    num_queries: int
    aggregator: str
    questions_file: str | None  # file name under ../shared/data/questions, when the real texts exist
    domains: tuple[str, ...]  # domains of the synthetic fallback questions (real ones carry their category)
    n_choices: int
    skills: Mapping[str, float]  # expert -> routing affinity (log-weight at skew 1)
    accuracy: Mapping[str, float]  # expert -> logit of a correct answer at mean difficulty
    difficulty: tuple[float, float]  # Beta(a, b) of per-query difficulty in [0, 1]


def _frozen(**kw: float) -> Mapping[str, float]:
    return MappingProxyType(dict(kw))


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "mmlu_pro": Preset(
            "mmlu_pro",
            2100,
            "LlamaR1",
            "mmlu_pro_test.json",
            (
                "biology",
                "business",
                "chemistry",
                "computer science",
                "economics",
                "engineering",
                "health",
                "history",
                "law",
                "math",
                "other",
                "philosophy",
                "physics",
                "psychology",
            ),
            10,
            _frozen(LlamaR1=3.4, QwenR1=1.6, Gemma2=1.1, EXAONE=0.4, GLM4=-1.6, **{"Qwen2.5": 1.0}),
            _frozen(LlamaR1=1.5, QwenR1=1.3, Gemma2=0.9, EXAONE=0.8, GLM4=0.7, **{"Qwen2.5": 1.0}),
            (2.0, 2.4),
        ),
        "medmcqa": Preset(
            "medmcqa",
            4183,
            "EXAONE",
            "medmcqa_test.json",
            ("anatomy", "physiology", "pharmacology", "pathology", "medicine", "surgery", "microbiology"),
            4,
            _frozen(LlamaR1=1.0, QwenR1=3.4, Gemma2=-0.6, EXAONE=1.6, GLM4=0.8, **{"Qwen2.5": 0.5}),
            _frozen(LlamaR1=1.2, QwenR1=1.0, Gemma2=1.3, EXAONE=1.1, GLM4=0.9, **{"Qwen2.5": 1.0}),
            (2.0, 2.6),
        ),
        "gpqa": Preset(
            "gpqa",
            198,
            "QwenR1",
            None,
            ("physics", "chemistry", "biology"),
            4,
            _frozen(LlamaR1=3.0, QwenR1=2.6, Gemma2=0.6, EXAONE=0.3, GLM4=-0.8, **{"Qwen2.5": 1.1}),
            _frozen(LlamaR1=0.6, QwenR1=0.7, Gemma2=0.0, EXAONE=-0.1, GLM4=-0.2, **{"Qwen2.5": 0.1}),
            (2.6, 2.0),
        ),
    }
)


def get_preset(name: str) -> Preset:
    """The paper preset ``name``; ``custom`` borrows MedMCQA's skills for experts it knows."""
    from mosaic.core.errors import ConfigError

    if name == "custom":
        return PRESETS["medmcqa"]
    if name not in PRESETS:
        raise ConfigError(f"workload.preset {name!r} is unknown; valid: {', '.join([*PRESETS, 'custom'])}")
    return PRESETS[name]
