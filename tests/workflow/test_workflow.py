"""The Snakemake DAG end to end on the tiny config, rerun behaviour, config validation, profiles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STAGES = ["dataset_info", "train_teacher", "extract_stats", "distill_shard", "merge_shards", "relabel", "evaluate_student", "summarize"]

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True, timeout: int = 600):
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if config is not None:
        cfg = workdir / "test-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def planned_jobs(workdir: Path, config: dict) -> dict[str, int]:
    """Rule -> job count of a dry run (parsed from Snakemake's 'Job stats' table)."""
    proc = snakemake(workdir, "-n", config=config)
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load(TINY.read_text())
    snakemake(workdir, config=config)
    return workdir, config


def test_whole_dag_runs_and_summarises(finished_run):
    workdir, config = finished_run
    rows = (workdir / "results/digits/summary.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    table = [dict(zip(header, r.split("\t"))) for r in rows[1:]]
    assert [(r["method"], r["ipc"], r["student"], r["seeds"]) for r in table] == [
        ("d3s", "1", "convnet3_w32", "0,1"), ("d3s", "2", "convnet3_w32", "0,1")]
    assert float(table[0]["teacher_top1"]) > 50
    # shards are temporary; merged sets, labels and per-seed results stay
    assert not list(workdir.glob("results/digits/d3s/ipc*/shards/*.h5"))
    for ipc in (1, 2):
        assert (workdir / f"results/digits/d3s/ipc{ipc}/images.h5").exists()
        assert (workdir / f"results/digits/d3s/ipc{ipc}/labels.h5").exists()
        for seed in (0, 1):
            r = json.loads((workdir / f"results/digits/d3s/ipc{ipc}/eval/convnet3_w32-s{seed}.json").read_text())
            assert r["protocol"]["epochs"] == config["evaluate"]["epochs"]
    for rule in STAGES:
        logs = list((workdir / "logs" / rule).rglob("*.log"))
        assert logs, f"no log for {rule}"
    assert not list(workdir.rglob(".*.tmp-*")), "a temporary artifact was left behind"


def test_nothing_reruns_when_nothing_changed(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir, config) == {}


def test_changing_evaluation_reruns_only_evaluation_and_summary(finished_run):
    workdir, config = finished_run
    changed = {**config, "evaluate": {**config["evaluate"], "lr": 0.01}}
    jobs = planned_jobs(workdir, changed)
    assert jobs == {"evaluate_student": 4, "summarize": 1, "all": 1}


def test_changing_distillation_keeps_teachers_and_statistics(finished_run):
    workdir, config = finished_run
    changed = {**config, "distill": {**config["distill"], "iterations": 21}}
    jobs = planned_jobs(workdir, changed)
    assert "train_teacher" not in jobs and "extract_stats" not in jobs
    assert jobs["distill_shard"] == 3 and jobs["merge_shards"] == 2 and jobs["relabel"] == 2
    assert jobs["evaluate_student"] == 4


def test_changing_relabel_keeps_distilled_images(finished_run):
    workdir, config = finished_run
    changed = {**config, "relabel": {"epochs": 31}}
    jobs = planned_jobs(workdir, changed)
    assert set(jobs) == {"relabel", "evaluate_student", "summarize", "all"}


def test_changing_the_teacher_reruns_everything(finished_run):
    workdir, config = finished_run
    changed = {**config, "teacher": {"epochs": 4}}
    jobs = planned_jobs(workdir, changed)
    assert {"train_teacher", "extract_stats", "distill_shard", "relabel"} <= set(jobs)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"distill": {"iterationz": 5}}, "Additional properties are not allowed ('iterationz' was unexpected)"),
        ({"distill": {"iterations": "many"}}, "'many' is not of type 'integer'"),
        ({"ipcs": [0]}, "0 is less than the minimum of 1"),
        ({"dataset": "cifar"}, "dataset 'cifar' is not defined under 'datasets'"),
    ],
)
def test_bad_config_is_rejected_with_the_key(tmp_path, patch, message):
    config = {**yaml.safe_load(TINY.read_text()), **patch}
    proc = snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_default_config_and_slurm_profile_dry_run(tmp_path):
    """The shipped config validates and the cluster profile parses (no SLURM needed for -n)."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"))
    out = proc.stdout + proc.stderr
    assert "distill_shard" in out and "This was a dry-run" in out


def test_workflow_is_lint_clean_and_formatted():
    lint = subprocess.run([*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile")], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
