"""Settings are declared once (d3s/hparams.py, d3s/dataset_spec.py); the schema, the config README, the
commands' options and the shipped configs follow from that declaration."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import click
import pytest
import yaml

from d3s import settings
from d3s.dataset_spec import DatasetSpec
from d3s.hparams import SECTIONS, DistillParams, EvalParams, StatsParams

REPO = Path(__file__).resolve().parents[2]
SCHEMA_TEXT = (REPO / "config/schema/config.schema.yaml").read_text()
SCHEMA = yaml.safe_load(SCHEMA_TEXT)
CONFIGS = [REPO / "config/config.yaml", *sorted((REPO / "config/presets").glob("*.yaml"))]


def test_committed_schema_is_the_rendering_of_the_dataclasses():
    assert settings.schema_text(settings.render_schema(SCHEMA)) == SCHEMA_TEXT, "run: python -m d3s.settings"


def test_rendered_section_carries_type_default_bounds_and_choices():
    props = settings.section_schema(DistillParams)["properties"]
    assert props["iterations"] == {
        "type": "integer",
        "default": 1000,
        "description": DistillParams.__dataclass_fields__["iterations"].metadata["help"],
        "exclusiveMinimum": 0,
    }
    assert props["init"]["enum"] == ["noise", "real", "herding", "kcenter"] and props["init"]["type"] == "string"
    assert props["ema_momentum"]["minimum"] == 0 and props["ema_momentum"]["maximum"] == 1
    assert "label_mode" not in settings.section_schema(EvalParams)["properties"]  # a per-job option, not config


def test_dataset_entry_schema_is_rendered_from_the_spec():
    dataset = SCHEMA["$defs"]["dataset"]
    assert dataset["required"] == ["source"] and dataset["additionalProperties"] is False
    spec = DatasetSpec.from_dict({"source": "digits"})
    for key, prop in dataset["properties"].items():
        if "default" in prop:
            value = getattr(spec, key)
            assert (list(value) if isinstance(value, tuple) else value) == prop["default"], key


def test_config_readme_is_rendered_from_the_schema():
    """config/README.md documents every key: it is what config/schema/make_readme.py renders."""
    spec = importlib.util.spec_from_file_location("make_readme", REPO / "config/schema/make_readme.py")
    make_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_readme)
    rendered = make_readme.render(SCHEMA)
    for key in SCHEMA["$defs"]["dataset"]["properties"]:
        assert f"`{key}`" in rendered
    assert (REPO / "config/README.md").read_text() == rendered, "run: python config/schema/make_readme.py"


@pytest.mark.parametrize(
    "section, commands",
    [
        ("teacher_training", ["train-teacher"]),
        ("stats", ["extract-stats"]),
        ("distill", ["distill"]),
        ("relabel", ["relabel"]),
        ("evaluate", ["evaluate", "evaluate-full"]),
    ],
)
def test_each_setting_is_its_commands_option_with_the_same_default_and_bounds(section, commands):
    """The workflow leaves settings at their default off the command line (so a knob an upgrade adds
    reruns nothing): right because the option is built from the same field."""
    from d3s.cli import main

    for command in commands:
        options = {p.name: p for p in main.commands[command].params}
        for field in dataclasses.fields(SECTIONS[section]):
            option = options[field.name]
            assert option.default == field.default, f"{command} --{field.name}"
            bounds = field.metadata["bounds"]
            if "exclusive_minimum" in bounds:
                with pytest.raises(click.BadParameter):
                    option.type.convert(bounds["exclusive_minimum"], option, None)
            if field.metadata["choices"]:
                assert list(option.type.choices) == list(field.metadata["choices"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_and_hold_only_what_differs_from_the_defaults(path):
    """config.yaml and each preset are whole configs (a preset replaces config.yaml, see the Snakefile)
    that spell out only their choices, so a changed default reaches them."""
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    written = {section: dict(config.get(section) or {}) for section in SECTIONS}
    datasets = {name: dict(entry) for name, entry in config["datasets"].items()}
    validate(config, str(REPO / "config/schema/config.schema.yaml"))  # fills the defaults in
    assert config["distill"]["kl_weight"] == DistillParams().kl_weight
    for section, cls in SECTIONS.items():
        assert settings.without_defaults(cls, written[section]) == written[section], f"{path.name}: {section}"
    for name, entry in datasets.items():
        assert settings.without_defaults(DatasetSpec, entry) == entry, f"{path.name}: datasets.{name}"
    run_level = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in SECTIONS}
    for key, value in run_level.items():
        assert value != SCHEMA["properties"][key].get("default", object()), f"{path.name}: {key} is the default"


def test_options_leave_defaults_out_and_spell_booleans_as_flags():
    assert settings.command_options("stats", {"batch_size": 256, "views": 2}) == "--views 2"
    assert settings.command_options("evaluate", {"t2_scale": True, "lr": 0.001}) == "--t2-scale"
    assert settings.command_options("distill", {"ce_weight": 1, "init": "real"}) == "--init real"  # 1 is 1.0
    assert StatsParams().batch_size == 256


def test_distill_settings_apply_the_ipc_schedule_then_the_variant():
    config = {"distill": {"lr": 0.2, "iterations": 50}, "distill_by_ipc": {10: {"iterations": 20}}}
    assert settings.distill_settings(config, 10) == {"lr": 0.2, "iterations": 20}
    assert settings.distill_settings(config, "1") == {"lr": 0.2, "iterations": 50}
    assert settings.distill_settings(config, 10, {"lr": 0.3}) == {"lr": 0.3, "iterations": 20}
