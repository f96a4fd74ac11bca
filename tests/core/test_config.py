from pathlib import Path

import pytest

from mosaic.core.config import apply_overrides, load_config, parse_config
from mosaic.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.cluster.workers == 4 and cfg.runtime.backend == "sim" and cfg.tracking.mode == "offline"


@pytest.mark.parametrize("name", ["mmlu_pro", "medmcqa", "gpqa"])
def test_paper_configs_load(name):
    cfg = load_config(REPO / "experiments" / "configs" / f"{name}.yaml")
    assert cfg.workload.preset == name and cfg.name == name


def test_overrides_are_parsed_as_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cluster:\n  workers: 2\n")
    cfg = load_config(p, ["cluster.workers=8", "aggregation.threshold=0.67", "workload.experts=null"])
    assert cfg.cluster.workers == 8 and cfg.aggregation.threshold == pytest.approx(0.67)


@pytest.mark.parametrize(
    ("tree", "field"),
    [
        ({"cluster": {"workers": 0}}, "cluster.workers"),
        ({"workload": {"preset": ""}}, "workload.preset"),
        ({"aggregation": {"threshold": 1.5}}, "aggregation.threshold"),
        ({"runtime": {"max_batch": "many"}}, "runtime.max_batch"),
        ({"tracking": {"colour": "red"}}, "tracking.colour"),
        ({"workload": {"experts": [{"name": "a"}]}}, "workload.experts.0.model_id"),
    ],
)
def test_invalid_fields_are_named(tree, field):
    with pytest.raises(ConfigError, match=f"config field '{field}'"):
        parse_config(tree, "x.yaml")


def test_all_bad_fields_in_one_error():
    with pytest.raises(ConfigError) as err:
        parse_config({"cluster": {"workers": -1}, "seed": -2})
    assert "cluster.workers" in str(err.value) and "seed" in str(err.value)


@pytest.mark.parametrize("override", ["noequals", "=3"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        apply_overrides({}, [override])


def test_override_into_a_scalar_is_rejected():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


@pytest.mark.parametrize(
    ("override", "field", "valid"),
    [
        ("workload.preset=nope", "workload.preset", "gpqa"),
        ("runtime.backend=gpu", "runtime.backend", "sim"),
        ("scheduler=fastest", "scheduler", "mosaic-ilp"),
        ("baseline=best", "baseline", "round-robin"),
    ],
)
def test_registry_names_are_checked_against_the_registries(override, field, valid):
    from mosaic.pipeline import prepare

    with pytest.raises(ConfigError) as err:
        prepare(load_config(None, [override]))
    assert f"config field '{field}'" in str(err.value) and valid in str(err.value)


def test_aggregation_mode_selects_any_registered_policy_with_its_options():
    from mosaic.aggregation.thresholds import LoadAwareThreshold
    from mosaic.pipeline import aggregation_policy, prepare

    base = ["workload.preset=gpqa", "workload.num_queries=20", "tracking.mode=disabled"]
    cfg = load_config(
        None, [*base, "aggregation.mode=load-aware", "aggregation.options={busy_threshold: 0.67, backlog_s: 5}"]
    )
    policy = aggregation_policy(prepare(cfg))
    assert isinstance(policy, LoadAwareThreshold) and policy.backlog_s == 5.0
    with pytest.raises(ConfigError, match=r"aggregation\.mode.*unknown aggregation policy 'sometimes'"):
        prepare(load_config(None, [*base, "aggregation.mode=sometimes"]))
    bad = load_config(None, [*base, "aggregation.mode=load-aware", "aggregation.options={backlog: 5}"])
    with pytest.raises(ConfigError, match=r"aggregation\.options"):
        aggregation_policy(prepare(bad))
