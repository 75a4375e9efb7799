"""The workflow used as a Snakemake module from another directory, as snakedeploy deploys it.

`snakedeploy deploy-workflow <repo> <dir>` writes a Snakefile that declares this workflow a
module (`module d3s: snakefile: github(...)`) and copies config/. Here the module points at this
checkout, the deploying folder holds only its own config file, and the dry run must find the
schema and plan the same jobs as running the workflow directly.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .test_workflow import REPO, SNAKEMAKE, TINY, planned_jobs, planned_jobs_from

pytestmark = pytest.mark.workflow

DEPLOYING_SNAKEFILE = """\
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


module d3s:
    snakefile:
        "{snakefile}"  # snakedeploy writes github("<owner>/d3s", path="Snakefile", tag="<version>")
    config:
        config


use rule * from d3s
"""


def _deploy(where: Path, config: dict) -> Path:
    where.mkdir()
    (where / "workflow").mkdir()
    (where / "workflow" / "Snakefile").write_text(DEPLOYING_SNAKEFILE.format(snakefile=REPO / "Snakefile"))
    (where / "config").mkdir()
    (where / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return where


def _dry_run(where: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", *args], cwd=where, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("profile", [[], ["--profile", str(REPO / "tests/slurm/profile")]], ids=["local", "slurm"])
def test_the_workflow_runs_as_a_module_from_another_directory(tmp_path, profile):
    config = yaml.safe_load(TINY.read_text())
    deployed = _deploy(tmp_path / "deployed", config)
    assert not (deployed / "config" / "schema").exists()  # the module's schema is found in the module
    proc = _dry_run(deployed, *profile)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    direct = tmp_path / "direct"
    direct.mkdir()
    assert planned_jobs_from(proc.stdout + proc.stderr) == planned_jobs(direct, config)
    assert "all" in planned_jobs_from(proc.stdout + proc.stderr)  # the module's default target is the default


def test_a_module_validates_the_deploying_config_with_its_schema(tmp_path):
    config = {**yaml.safe_load(TINY.read_text()), "ipcs": [0]}
    proc = _dry_run(_deploy(tmp_path / "deployed", config))
    assert proc.returncode != 0
    assert "0 is less than the minimum of 1" in proc.stdout + proc.stderr


def test_the_catalog_file_says_what_the_workflow_does():
    """.snakemake-workflow-catalog.yml (the snakemake-workflows catalog's usage keys) claims what is true."""
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert not usage["mandatory-flags"]["flags"]  # `snakemake --cores all` runs the default
    assert usage["report"] is ("\nreport:" in (REPO / "Snakefile").read_text())
    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    every_rule_has_conda = len(re.findall(r"^rule ", rules, re.M)) == rules.count("conda:")
    assert usage["software-stack-deployment"]["conda"] is every_rule_has_conda
