"""The method registry: one lookup, what the command line offers, and what the workflow plans with."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from d3s import sweep
from d3s.cli import main
from d3s.errors import D3SError
from d3s.methods import Method, get_method, method_names, register_method, synthesising_methods

from ..conftest import run_cli


def test_unknown_method_is_an_error_naming_the_known_ones():
    with pytest.raises(D3SError, match="unknown method 'dc'") as e:
        get_method("dc")
    for name in method_names():
        assert name in str(e.value)


def test_every_synthesising_method_resolves_to_its_matching_class():
    from d3s.distill import StatisticsMatching

    assert synthesising_methods() == ("d3s", "sre2l")
    for name in synthesising_methods():
        cls = get_method(name).matching_class()
        assert issubclass(cls, StatisticsMatching) and cls.name == name
        assert cls.loss_key and cls.term_name


def test_a_method_without_synthesis_has_no_matching_class():
    assert not get_method("random").synthesises
    with pytest.raises(D3SError, match="synthesises no images; distill runs d3s, sre2l"):
        get_method("random").matching_class()


def test_distill_offers_the_registered_synthesising_methods():
    method = next(p for p in main.commands["distill"].params if p.name == "method")
    assert isinstance(method.type, click.Choice) and tuple(method.type.choices) == synthesising_methods()
    assert f"[{'|'.join(synthesising_methods())}]" in run_cli("distill", "--help").output


def test_the_workflow_and_the_tables_follow_the_registry():
    assert sweep.SYNTHESISING == synthesising_methods()
    assert set(sweep.SECTIONS) == set(method_names())
    assert sweep.SECTIONS["d3s"] == ("distill", "relabel", "evaluate")
    assert sweep.SECTIONS["random"] == ("relabel", "evaluate") and sweep.SECTIONS["full"] == ("evaluate",)
    assert get_method("d3s").needs_stats and not get_method("sre2l").needs_stats
    assert method_names()[:2] == ("d3s", "sre2l") and method_names()[-1] == "full"


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        register_method(Method("d3s", "D3S again", synthesises=True, matching="d3s.distill:GaussianMatching"))


def test_the_registry_imports_no_torch():
    code = "import sys, d3s.sweep, d3s.methods; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
