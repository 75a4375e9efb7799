"""The Snakemake DAG end to end on the tiny config, rerun behaviour, config validation, profiles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STAGES = ["dataset_info", "train_teacher", "extract_stats", "distill_shard", "merge_shards", "select_real", "relabel",
          "evaluate_student", "evaluate_full", "summarize"]

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True, timeout: int = 600):
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if config is not None:
        cfg = workdir / "test-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    cmd += ["--cores", "2"]  # after --configfile, which would take targets in `args` as more config files
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def planned_jobs_from(out: str) -> dict[str, int]:
    """Rule -> job count of a dry run (parsed from Snakemake's 'Job stats' table)."""
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def planned_jobs(workdir: Path, config: dict) -> dict[str, int]:
    proc = snakemake(workdir, "-n", config=config)
    return planned_jobs_from(proc.stdout + proc.stderr)


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
    # one row per (method, IPC, student), IPC-major; `full` once per student
    assert [(r["method"], r["ipc"], r["student"], r["seeds"]) for r in table] == [
        (m, ipc, "convnet3_w32", "0,1") for ipc in ("1", "2") for m in ("d3s", "sre2l", "random")
    ] + [("full", "all", "convnet3_w32", "0,1")]
    assert float(table[0]["teacher_top1"]) > 50
    # shards are temporary; merged sets, labels and per-seed results stay
    assert not list(workdir.glob("results/digits/*/ipc*/shards/*.h5"))
    for method in ("d3s", "sre2l", "random"):
        for ipc in (1, 2):
            assert (workdir / f"results/digits/{method}/ipc{ipc}/images.h5").exists()
            assert (workdir / f"results/digits/{method}/ipc{ipc}/labels.h5").exists()
            for seed in (0, 1):
                r = json.loads((workdir / f"results/digits/{method}/ipc{ipc}/eval/convnet3_w32-s{seed}.json").read_text())
                assert r["method"] == method and r["protocol"]["epochs"] == config["evaluate"]["epochs"]
    full = json.loads((workdir / "results/digits/full/eval/convnet3_w32-s0.json").read_text())
    assert full["n_images"] > 1000 and full["protocol"]["epochs"] == 1
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
    assert jobs == {"evaluate_student": 12, "evaluate_full": 2, "summarize": 1, "plot_accuracy": 1, "all": 1}


def test_changing_distillation_keeps_teachers_and_statistics(finished_run):
    workdir, config = finished_run
    changed = {**config, "distill": {**config["distill"], "iterations": 21}}
    jobs = planned_jobs(workdir, changed)
    assert "train_teacher" not in jobs and "extract_stats" not in jobs
    # d3s and sre2l shards rerun; the random baseline and its labels do not depend on distillation
    assert jobs["distill_shard"] == 6 and jobs["merge_shards"] == 4 and jobs["relabel"] == 4
    assert jobs["evaluate_student"] == 8 and "select_real" not in jobs and "evaluate_full" not in jobs


def test_a_per_ipc_distillation_change_reruns_only_that_ipc(finished_run):
    workdir, config = finished_run
    changed = {**config, "distill_by_ipc": {2: {"iterations": 21, "lr": 0.05}}}
    proc = snakemake(workdir, "-n", "-p", config=changed)
    out = proc.stdout + proc.stderr
    # IPC 2 runs as two shards of one IPC each, for d3s and sre2l; IPC 1 is untouched
    assert planned_jobs_from(out) == {"distill_shard": 4, "merge_shards": 2, "relabel": 2, "evaluate_student": 4,
                                      "summarize": 1, "plot_accuracy": 1, "plot_losses": 1, "plot_images": 2, "all": 1}
    commands = [line for line in out.splitlines() if "d3s distill" in line]
    assert len(commands) == 4
    assert all("--iterations 21" in c and "--lr 0.05" in c and "/ipc2/" in c for c in commands)
    # an entry that repeats the section's own values changes nothing
    same = {**config, "distill_by_ipc": {1: {"iterations": config["distill"]["iterations"]}}}
    assert planned_jobs(workdir, same) == {}


def test_changing_relabel_keeps_distilled_images(finished_run):
    workdir, config = finished_run
    changed = {**config, "relabel": {"epochs": 31}}
    jobs = planned_jobs(workdir, changed)
    assert set(jobs) == {"relabel", "evaluate_student", "summarize", "plot_accuracy", "all"} and jobs["relabel"] == 6


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
        ({"distill_by_ipc": {2: {"lr": "fast"}}}, "config: distill_by_ipc.2.lr: 'fast' is not of type 'number'"),
        ({"distill_by_ipc": {2: {"iterationz": 5}}}, "distill_by_ipc.2: Additional properties are not allowed"),
        ({"distill_by_ipc": {"two": {"lr": 0.1}}}, "'two' does not match"),
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


def _local_rules(*configfiles: Path) -> set[str]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=REPO / "Snakefile",
                                config_settings=ConfigSettings(configfiles=[REPO / "config" / "config.yaml", *configfiles]),
                                workdir=REPO)
        return set(workflow._workflow._localrules)


def test_cheap_rules_are_local_and_a_huge_merge_is_a_job():
    """localrules is what keeps a job off the cluster (the SLURM test checks it for real)."""
    cheap = {"summarize", "plot_accuracy", "plot_losses", "plot_images"}
    assert _local_rules() == cheap | {"merge_shards"}
    for preset in ("imagenet1k", "imagenet21k", "imagenet21k_p"):  # local_merge: false
        assert _local_rules(REPO / "config" / "presets" / f"{preset}.yaml") == cheap, preset


def test_workflow_is_lint_clean_and_formatted():
    lint = subprocess.run([*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile")], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


PRESETS = sorted((REPO / "config" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_plans_its_dag(tmp_path, preset):
    """Presets point at user paths; a dry run needs only the pretrained checkpoints to exist."""
    config = yaml.safe_load(preset.read_text())
    for p in config.get("teachers", {}).get("pretrained", []):
        (tmp_path / p["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p["checkpoint"]).touch()
    t0 = time.perf_counter()
    proc = snakemake(tmp_path, "-n", "--configfile", str(preset))
    seconds = time.perf_counter() - t0
    jobs = planned_jobs_from(proc.stdout + proc.stderr)
    n_classes = config["datasets"][config["dataset"]].get("num_classes")
    per_ipc = [-(-ipc // config["ipc_per_shard"]) for ipc in config["ipcs"]]
    blocks = -(-n_classes // config["classes_per_shard"]) if config.get("classes_per_shard") else 1
    methods = config.get("methods", ["d3s"])
    synthesising = len([m for m in methods if m in ("d3s", "sre2l")])
    per_ipc_methods = len([m for m in methods if m != "full"])
    assert jobs["distill_shard"] == sum(per_ipc) * blocks * synthesising
    assert jobs["evaluate_student"] == (len(config["ipcs"]) * len(config["students"]) * len(config["eval_seeds"])
                                        * per_ipc_methods)
    if preset.stem == "imagenet21k":
        assert jobs["distill_shard"] == 220 and seconds < 30


def test_a_new_dataset_by_config_only_runs_the_whole_dag(tmp_path):
    """An image folder written here plus a config entry: no code change."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            folder = tmp_path / "my_images" / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(colour, 40, (10, 14, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    config = yaml.safe_load(TINY.read_text())
    config["dataset"] = "my_images"
    config["datasets"] = {"my_images": {"source": "imagefolder", "root": "my_images", "image_size": 8}}
    config["teacher"] = {"epochs": 5, "batch_size": 12}
    config["methods"] = ["d3s"]
    snakemake(tmp_path, config=config)
    rows = (tmp_path / "results/my_images/summary.tsv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split("\t")[:3] == ["my_images", "d3s", "1"]
    info = json.loads((tmp_path / "results/my_images/dataset.json").read_text())
    assert info["classes"] == ["class_0", "class_1", "class_2"] and info["n_train"] == 36 and info["channels"] == 3


def test_plots_and_report(finished_run, tmp_path):
    workdir, config = finished_run
    plots = workdir / "results/digits/plots"
    expected = {"accuracy.png", "losses.png"} | {f"images_{m}_ipc{i}.png" for m in ("d3s", "sre2l", "random") for i in (1, 2)}
    assert expected <= {p.name for p in plots.iterdir()}
    for name in expected:
        assert (plots / name).stat().st_size > 5000, name  # a real figure, not an empty file
    report = workdir / "report.html"
    snakemake(workdir, "--report", str(report), config=config)
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000 and "accuracy.png" in html and "summary.tsv" in html
