"""The Dagster run configs are built from the core's settings dataclasses: the launchpad cannot drift from them."""

import dataclasses

import pytest

from assets.eval_report import EvalConfig
from assets.live_monitoring import MonitoringConfig
from assets.lora_adapter import LoraConfig
from distillery.evaluation import GatePolicy
from distillery.monitoring import MonitoringPolicy
from distillery.settings import DOC
from distillery.training import TrainingConfig
from pipelines.definitions import defs

CONFIGS = [("lora_adapter", LoraConfig, TrainingConfig), ("live_monitoring", MonitoringConfig, MonitoringPolicy),
           ("eval_report", EvalConfig, GatePolicy)]


def _launchpad_fields(op: str) -> dict:
    """The config fields of an op as the Dagster launchpad shows them (the lifecycle or monitoring job's schema)."""
    for job in ("workload_lifecycle", "live_monitoring_job"):
        ops = defs().resolve_job_def(job).run_config_schema.config_type.fields["ops"].config_type.fields
        if op in ops:
            return ops[op].config_type.fields["config"].config_type.fields
    raise AssertionError(f"no job has the op {op}")


@pytest.mark.parametrize("op, config, core", CONFIGS)
def test_every_core_setting_is_in_the_launchpad_with_its_default_and_doc(op, config, core):
    launchpad = _launchpad_fields(op)
    scaled = config.scaled
    for item in dataclasses.fields(core):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        name, factor, _ = scaled.get(item.name, (item.name, 1, ""))
        assert name in launchpad, f"{core.__name__}.{item.name} is not in {op}'s launchpad"
        assert launchpad[name].default_value == pytest.approx(default * factor) if factor != 1 \
            else launchpad[name].default_value == default, name
        assert launchpad[name].description.startswith(item.metadata[DOC]), name
    # The run config with nothing set is the core's defaults, in the core's units.
    assert core(**config().to_core()) == core()


def test_the_gates_margin_is_given_in_points_and_converted_once():
    config = EvalConfig(max_gap_to_frontier_points=7.5, min_test_rows=50)
    assert GatePolicy(**config.to_core()) == GatePolicy(max_gap_to_frontier=0.075, min_test_rows=50)
    assert EvalConfig().max_gap_to_frontier_points == pytest.approx(100 * GatePolicy().max_gap_to_frontier)
    # Only what a run sets goes to training, so the task's recipe fills the rest.
    assert LoraConfig(rank=8, base_model="x").to_core(only_set=True) == {"rank": 8}


def test_a_core_setting_without_a_doc_is_refused():
    from assets.configs import config_from

    @dataclasses.dataclass
    class Undocumented:
        threshold: float = 0.5

    with pytest.raises(TypeError, match="Undocumented.threshold has no doc"):
        config_from(Undocumented, "UndocumentedConfig", "")


def test_the_example_gateway_file_loads_with_every_table():
    from pathlib import Path

    from distillery.gateway import load_config
    from distillery.routing import AutopilotPolicy, RollbackPolicy

    config = load_config(Path(__file__).resolve().parents[1] / "gateway.example.toml")
    assert config.autopilot == AutopilotPolicy() and config.rollback == RollbackPolicy()
