"""The tiny workflow through the SLURM executor on a real one-node SLURM cluster started here.

tests/slurm/start_local_slurm.sh installs (apt) and starts slurmctld/slurmd/munge with a fake
GPU; the run uses tests/slurm/profile (profiles/slurm adapted to that cluster). Every call has
a timeout, so a hang fails the test. Outside CI the test skips when SLURM cannot be installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .test_workflow import REPO, TINY, snakemake

pytestmark = pytest.mark.workflow
LOCAL_RULES = {"merge_shards", "summarize", "plot_accuracy", "plot_losses", "plot_images"}


@pytest.fixture(scope="module")
def slurm_cluster():
    try:
        proc = subprocess.run(["bash", str(REPO / "tests/slurm/start_local_slurm.sh")], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc = subprocess.CompletedProcess([], 99, "", str(e))
    if proc.returncode != 0:
        message = f"could not start a local SLURM cluster (rc {proc.returncode}): {proc.stderr[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _config(device: str) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config.update(device=device, methods=["d3s", "random"], labels=["soft"], ipcs=[1], eval_seeds=[0])
    return config


def _results(workdir: Path) -> dict:
    out = {}
    for p in sorted((workdir / "results/digits").glob("*/ipc*/**/*-s*.json")):
        r = json.loads(p.read_text())
        out[str(p.relative_to(workdir))] = (r["top1"], r["top5"])
    return out


def test_tiny_workflow_runs_as_slurm_jobs_with_the_profile_resources(slurm_cluster, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    cluster.mkdir()
    # device "auto" makes the GPU rules ask for gpu=1 (the fake GPU); no CUDA, so they still compute on the CPU
    snakemake(local, config=_config("auto"))
    proc = snakemake(cluster, "--profile", str(REPO / "tests/slurm/profile"), "--workflow-profile", "none",
                     config=_config("auto"), timeout=900)
    log = proc.stdout + proc.stderr
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*?/rule_(\w+?)/", log))
    assert submitted, log[-3000:]
    rules_run = set(submitted.values())
    expected = {"dataset_info", "train_teacher", "extract_stats", "distill_shard", "select_real",
                "relabel", "evaluate_student"}
    assert rules_run == expected, "every non-local rule, and only those, ran as a SLURM job"
    assert not rules_run & LOCAL_RULES
    fields = subprocess.run(["squeue", "--states=all", "-h", "-j", ",".join(submitted), "-O",
                             "JobID:12,NumCPUs:6,MinMemory:10,tres-per-job:24,State:14"],
                            capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    jobs = {}
    for line in fields:
        if line.strip():
            job_id, cpus, mem, tres, state = line.split()
            jobs[job_id] = {"cpus": int(cpus), "mem": mem, "tres": tres, "state": state}
    profile = yaml.safe_load((REPO / "tests/slurm/profile/config.yaml").read_text())
    for job_id, rule in submitted.items():
        job = jobs[job_id]
        assert job["state"] == "COMPLETED", (rule, job)
        if rule in profile["set-resources"]:  # GPU rules: the profile's memory and CPUs per GPU, one GPU
            assert job["tres"] == "gres:gpu:1", (rule, job)
            assert job["mem"] == f"{profile['set-resources'][rule]['mem_mb']}M", (rule, job)
            assert job["cpus"] == profile["set-resources"][rule]["cpus_per_gpu"], (rule, job)
        else:
            assert job["tres"] == "N/A", (rule, job)
    assert _results(cluster) == _results(local) and _results(local)  # the same numbers as a local run
