"""The dataset-source registry: one entry per source, read by the spec parser, the schema and the loaders."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from d3s.dataset_spec import DatasetSpec
from d3s.errors import D3SError
from d3s.settings import dataset_schema
from d3s.sources import get_source, source_names


def test_unknown_source_is_an_error_listing_the_known_ones():
    with pytest.raises(D3SError) as e:
        get_source("imagenet")
    assert "'imagenet'" in str(e.value)
    for name in source_names():
        assert name in str(e.value)
    with pytest.raises(D3SError, match="source 'imagenet' is not one of digits, hdf5"):
        DatasetSpec.from_dict({"source": "imagenet"})


@pytest.mark.parametrize("name", source_names())
def test_each_source_resolves_to_a_loader(name):
    source = get_source(name)
    assert source.name == name and callable(source.resolve_loader())
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    assert set(source.needs) <= fields, f"{name} needs keys DatasetSpec does not have"


def test_schema_source_enum_is_the_registry():
    source = dataset_schema()["properties"]["source"]
    assert source["enum"] == list(source_names())
    for name in source_names():
        assert f"{name}: {get_source(name).description}" in source["description"]


def test_needed_keys_come_from_the_registry():
    for name in source_names():
        for key in get_source(name).needs:
            with pytest.raises(D3SError, match=f"source '{name}' needs the key '{key}'"):
                DatasetSpec.from_dict({"source": name, **{k: "x" for k in get_source(name).needs if k != key}})


def test_dataset_spec_module_is_torch_free():
    code = "import d3s.dataset_spec, d3s.sources, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
