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
    fields = {f.name: f for f in dataclasses.fields(cls)}
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


def _keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, prop in schema.get("properties", {}).items():
        keys.add(name)
        keys |= _keys(prop, prefix)
        keys |= _keys(prop.get("items", {}), prefix)
    return keys


def test_config_readme_documents_every_key():
    readme = (REPO / "config/README.md").read_text()
    keys = _keys(SCHEMA) | set(SCHEMA["$defs"]["dataset"]["properties"])
    missing = sorted(k for k in keys if not any(f in readme for f in (f"`{k}`", f".{k}`", f"`{k}.")))
    assert not missing, f"config/README.md does not describe: {missing}"
