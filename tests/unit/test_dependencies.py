"""One list of dependencies: pyproject.toml's, which the conda environment of the rules repeats."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import venv
from importlib.metadata import version
from pathlib import Path

import yaml
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from d3s.cli import main
from d3s.install import SOURCE_MARKER, check_installed_source

REPO = Path(__file__).resolve().parents[2]
ENV = REPO / "envs" / "d3s.yaml"
# pyproject name -> conda-forge name: `pytorch-gpu` is conda-forge's CUDA build of torch
CONDA_NAME = {"torch": "pytorch-gpu"}
# runs the workflow, in the environment that starts snakemake; the jobs only run `d3s`
NOT_IN_JOBS = {"snakemake"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _conda_specs() -> dict[str, SpecifierSet]:
    specs = {}
    for entry in yaml.safe_load(ENV.read_text())["dependencies"]:
        assert isinstance(entry, str), f"{ENV}: no pip section; d3s.post-deploy.sh installs d3s itself"
        name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", entry.replace(" ", "")).groups()
        specs[name] = SpecifierSet(spec.replace("=", "==", 1) if re.fullmatch(r"=[\d.]+", spec) else spec)
    return specs


def test_the_conda_environment_has_exactly_pyprojects_dependencies():
    wanted = {}
    for line in _pyproject()["dependencies"]:
        req = Requirement(line)
        if req.name not in NOT_IN_JOBS:
            wanted[CONDA_NAME.get(req.name, req.name)] = req.specifier
    got = _conda_specs()
    assert got.pop("python") == SpecifierSet("==3.11") and "pip" in got
    got.pop("pip")
    assert got == wanted, "envs/d3s.yaml and pyproject.toml list different packages or versions"


def test_the_conda_environment_takes_a_cuda_torch_from_conda_forge_only():
    env = yaml.safe_load(ENV.read_text())
    # the `pytorch` channel stopped publishing after 2.5; `defaults` would mix in its own builds
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert "pytorch-gpu" in _conda_specs() and "pytorch" not in _conda_specs()


def test_the_post_deploy_script_installs_this_checkout_without_dependencies(tmp_path):
    """Snakemake runs envs/d3s.post-deploy.sh in the new environment: d3s from this checkout
    (rules/common.smk sets D3S_SOURCE), with --no-deps so pip pulls no PyPI torch over the CUDA one,
    and a note of where it came from. Run here in a bare venv (no torch: its last check fails)."""
    venv.create(tmp_path / "env", with_pip=True)
    env = {**os.environ, "PATH": f"{tmp_path / 'env' / 'bin'}{os.pathsep}{os.environ['PATH']}", "D3S_SOURCE": str(REPO)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", str(REPO / "envs" / "d3s.post-deploy.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert "No module named 'torch'" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]  # deps: none installed
    python = tmp_path / "env" / "bin" / "python"
    where = subprocess.run([python, "-c", "import d3s; print(d3s.__file__)"], capture_output=True, text=True, env=env)
    assert Path(where.stdout.strip()).resolve() == REPO / "d3s" / "__init__.py"  # editable: this checkout's code
    assert (tmp_path / "env" / SOURCE_MARKER).read_text().strip() == str(REPO)
    assert 'os.environ.setdefault("D3S_SOURCE", _CHECKOUT)' in (REPO / "rules" / "common.smk").read_text()


def test_a_shared_environment_with_another_checkouts_d3s_is_refused(tmp_path, monkeypatch):
    """Environments are named by their files and --conda-prefix, not the checkout: a second checkout
    sharing a prefix would run the first one's code. Every d3s command checks the note first."""
    (tmp_path / SOURCE_MARKER).write_text("/home/me/d3s-old\n")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("D3S_SOURCE", "/home/me/d3s-old")
    check_installed_source()  # the same checkout: fine
    monkeypatch.setenv("D3S_SOURCE", "/home/me/d3s-new")
    result = CliRunner().invoke(main, ["merge", "--shard", "a.h5", "--ipc", "1", "--out", "b.h5"])
    assert result.exit_code != 0 and "runs d3s from /home/me/d3s-old" in result.output
    assert "own --conda-prefix" in result.output
    monkeypatch.delenv("D3S_SOURCE")
    check_installed_source()  # outside the workflow (by hand): no check
    for smk in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve() == ENV, f"{smk.name}: every rule runs in envs/d3s.yaml"


def test_the_slurm_plugin_floor_is_the_release_the_profile_needs():
    for extra in ("slurm", "test"):
        plugin = next(
            Requirement(r)
            for r in _pyproject()["optional-dependencies"][extra]
            if r.startswith("snakemake-executor-plugin-slurm")
        )
        assert Version("2.7.0") not in plugin.specifier and Version("2.7.1") in plugin.specifier, extra
    assert Version(version("snakemake-executor-plugin-slurm")) in plugin.specifier  # what the tests run with
    assert "jsonschema" in {Requirement(r).name for r in _pyproject()["dependencies"]}  # rules/common.smk imports it
