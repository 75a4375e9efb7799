"""The workflow's config schema and the CLI's hyperparameters describe the same keys and defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from d3s.data import DatasetSpec
from d3s.hparams import DistillParams, EvalParams, RealTrainingParams, RelabelParams

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())


@pytest.mark.parametrize("section, cls", [("teacher", RealTrainingParams), ("distill", DistillParams),
                                          ("relabel", RelabelParams), ("evaluate", EvalParams)])
def test_schema_section_matches_cli_hyperparameters(section, cls):
    props = SCHEMA["properties"][section]["properties"]
    # the label mode is a DAG axis of the workflow (`labels: [soft, hard]`), not a setting of `evaluate`
    fields = {f.name: f for f in dataclasses.fields(cls) if (section, f.name) != ("evaluate", "label_mode")}
    assert set(props) == set(fields)
    for name, f in fields.items():
        assert props[name]["default"] == f.default, name
        if f.metadata.get("choices"):
            assert props[name]["enum"] == list(f.metadata["choices"])


def test_dataset_defaults_match_the_schema():
    props = SCHEMA["$defs"]["dataset"]["properties"]
    spec = DatasetSpec.from_dict({"source": "digits"})
    for key, p in props.items():
        if "default" in p:
            value = getattr(spec, key)
            assert (list(value) if isinstance(value, tuple) else value) == p["default"], key


def test_shipped_config_validates():
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    validate(config, str(REPO / "config/schema/config.schema.yaml"))
    assert config["distill"]["kl_weight"] == DistillParams().kl_weight  # defaults were filled in


def test_config_readme_is_rendered_from_the_schema():
    """config/README.md documents every key: it is what config/schema/make_readme.py renders."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_readme", REPO / "config/schema/make_readme.py")
    make_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_readme)
    rendered = make_readme.render(SCHEMA)
    for key in SCHEMA["$defs"]["dataset"]["properties"]:
        assert f"`{key}`" in rendered
    assert (REPO / "config/README.md").read_text() == rendered, "run: python config/schema/make_readme.py"


@pytest.mark.parametrize("section, commands", [("teacher", ["train-teacher"]), ("stats", ["extract-stats"]),
                                               ("distill", ["distill"]), ("relabel", ["relabel"]),
                                               ("evaluate", ["evaluate", "evaluate-full"])])
def test_each_commands_defaults_are_the_schemas(section, commands):
    """The workflow leaves options at their schema default off the command line (so a knob an
    upgrade adds reruns nothing): that is only right if the command's own default is the same."""
    from d3s.cli import main

    props = SCHEMA["properties"][section]["properties"]
    for command in commands:
        params = {p.name: p for p in main.commands[command].params}
        for key, prop in props.items():
            assert key in params, f"{command} has no option for {section}.{key}"
            default = params[key].default
            assert (list(default) if isinstance(default, tuple) else default) == prop["default"], f"{command} --{key}"
