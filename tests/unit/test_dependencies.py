"""One list of dependencies: pyproject.toml's, which the conda environment of the rules repeats."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

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


def test_the_environment_installs_d3s_itself_without_its_dependencies():
    """Snakemake runs envs/d3s.post-deploy.sh in the new environment: d3s from this checkout
    (rules/common.smk sets D3S_SOURCE), with --no-deps so pip pulls no PyPI torch over the CUDA one."""
    script = (REPO / "envs" / "d3s.post-deploy.sh").read_text()
    assert re.search(r'pip install --no-deps -e "\$source"', script)
    assert 'os.environ.setdefault("D3S_SOURCE", _CHECKOUT)' in (REPO / "rules" / "common.smk").read_text()
    for smk in (REPO / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve() == ENV, f"{smk.name}: every rule runs in envs/d3s.yaml"


def test_the_slurm_plugin_floor_is_the_release_the_profile_needs():
    for extra in ("slurm", "test"):
        plugin = next(Requirement(r) for r in _pyproject()["optional-dependencies"][extra]
                      if r.startswith("snakemake-executor-plugin-slurm"))
        assert Version("2.7.0") not in plugin.specifier and Version("2.7.1") in plugin.specifier, extra
    assert Version(version("snakemake-executor-plugin-slurm")) in plugin.specifier  # what the tests run with
    assert "jsonschema" in {Requirement(r).name for r in _pyproject()["dependencies"]}  # rules/common.smk imports it
