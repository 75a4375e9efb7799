"""The Snakemake DAG end to end on the tiny config, rerun behaviour, config validation, profiles."""

from __future__ import annotations

import json
import math
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
from snakemake.utils import validate

from d3s import sweep
from d3s.methods import get_method

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "workflow" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STAGES = [
    "dataset_info",
    "train_teacher",
    "extract_stats",
    "distill_shard",
    "merge_shards",
    "select_real",
    "relabel",
    "evaluate_student",
    "evaluate_full",
    "summarize",
]

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


PER_IPC = ("d3s", "herding", "random")  # the summary's method order


def _table(path: Path) -> list[dict]:
    rows = path.read_text().splitlines()
    header = rows[0].split("\t")
    return [dict(zip(header, r.split("\t"))) for r in rows[1:]]


def test_whole_dag_runs_and_summarises(finished_run):
    workdir, config = finished_run
    table = _table(workdir / "results/digits/summary.tsv")
    # one row per (method, IPC, label mode, student), IPC-major; `full` once per label mode and student
    assert [(r["method"], r["ipc"], r["labels"], r["student"], r["seeds"]) for r in table] == [
        (m, ipc, labels, "convnet3_w32", "0,1") for ipc in ("1", "2") for m in PER_IPC for labels in ("soft", "hard")
    ] + [("full", "all", labels, "convnet3_w32", "0,1") for labels in ("soft", "hard")]
    assert float(table[0]["teacher_top1"]) > 50
    # shards are temporary; merged sets, labels and per-seed results stay
    assert not list(workdir.glob("results/digits/*/ipc*/*/shards/*.h5"))
    for method in PER_IPC:
        for ipc in (1, 2):
            folder = workdir / f"results/digits/{method}/ipc{ipc}/default"
            assert (folder / "images.h5").exists() and (folder / "default/labels.h5").exists()
            for seed in (0, 1):
                soft = json.loads((folder / f"default/default/convnet3_w32-s{seed}.json").read_text())
                hard = json.loads((folder / f"hard/default/convnet3_w32-s{seed}.json").read_text())
                assert (
                    soft["method"] == hard["method"] == method
                    and soft["protocol"]["epochs"] == config["evaluate"]["epochs"]
                )
                assert (soft["protocol"]["label_mode"], hard["protocol"]["label_mode"]) == ("soft", "hard")
                assert hard["protocol"]["label_epochs"] is None  # a hard-label student reads no labels.h5
                # every student is also tested on the validation split: 5 held-out images per class
                assert soft["n_val"] == 50 and 0 <= soft["val_top1"] <= 1
    full = json.loads((workdir / "results/digits/full/hard/default/convnet3_w32-s0.json").read_text())
    info = json.loads((workdir / "results/digits/dataset.json").read_text())
    assert info["n_val"] == 50 and info["n_train"] + info["n_val"] + info["n_test"] == 1797
    assert full["n_images"] == info["n_train"] and full["protocol"]["epochs"] == 1  # the validation split left out
    for rule in STAGES:
        logs = list((workdir / "logs" / rule).rglob("*.log"))
        assert logs, f"no log for {rule}"
    assert not list(workdir.rglob(".*.tmp-*")), "a temporary artifact was left behind"


def test_summary_metrics_are_dd_rankings_of_the_rows(finished_run):
    """IOR, HLR and LRS in summary.tsv are the DD-Ranking formulas applied to the table's own accuracies."""
    import math

    workdir, _ = finished_run
    rows = {(r["method"], r["ipc"], r["labels"]): r for r in _table(workdir / "results/digits/summary.tsv")}
    acc = {k: float(r["top1_mean"]) for k, r in rows.items()}
    for (method, ipc, labels), r in rows.items():
        if method == "full":
            assert r["ior"] == r["hlr"] == r["lrs"] == ""
            continue
        assert float(r["ior"]) == pytest.approx(acc[(method, ipc, labels)] - acc[("random", ipc, labels)], abs=0.011)
        hlr = acc[("full", "all", "hard")] - acc[(method, ipc, "hard")]
        assert float(r["hlr"]) == pytest.approx(hlr, abs=0.011)
        a = (0.5 * (acc[(method, ipc, "soft")] - acc[("random", ipc, "soft")]) - 0.5 * hlr) / 100
        assert float(r["lrs"]) == pytest.approx(100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)), abs=0.011)
        steps = int(r["synthesis_image_steps"])
        assert steps == (20 * 10 * int(ipc) if method in ("d3s", "sre2l") else 0)  # iterations x images
    sweep = _table(workdir / "results/digits/sweep.tsv")
    assert len(sweep) == len(rows) and all(r["selected"] == "yes" for r in sweep)  # no sweep: one variant each


def test_coresets_are_nested_and_come_from_the_training_split(finished_run):
    """herding picks greedily, so IPC 2's picks extend IPC 1's (as random's do); no pick is a validation image."""
    import h5py

    from d3s.data import DatasetSpec, load_dataset

    workdir, config = finished_run
    spec = DatasetSpec.from_dict({"name": "digits", **config["datasets"]["digits"]})
    data = load_dataset(spec, splits=("train", "val"))
    held_out = set(data.val.indices.tolist())
    for method in ("herding", "random"):
        picks = {}
        for ipc in (1, 2):
            with h5py.File(workdir / f"results/digits/{method}/ipc{ipc}/default/images.h5") as f:
                inputs = json.loads(f.attrs["inputs"])
                assert json.loads(f.attrs["config"])["selection"] in (method, "uniform per class")
                picks[ipc] = inputs["train_indices"]
        assert picks[2][:10] == picks[1], method  # slots (0, c) first, IPC-major
        assert not held_out & set(picks[2]), method


def test_nothing_reruns_when_nothing_changed(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir, config) == {}


def test_changing_evaluation_reruns_only_evaluation_and_summary(finished_run):
    workdir, config = finished_run
    changed = {**config, "evaluate": {**config["evaluate"], "lr": 0.01}}
    jobs = planned_jobs(workdir, changed)
    # 12 sets (3 methods x 2 IPCs x soft/hard) and full soft/hard: one job per student, both seeds in it
    assert jobs == {"evaluate_student": 12, "evaluate_full": 2, "summarize": 1, "plot_accuracy": 1, "all": 1}


def test_one_job_per_seed_plans_the_same_result_files(finished_run):
    """seeds_in_one_job false (the clusters' default): a job per seed, for the same result files."""
    workdir, config = finished_run
    per_seed = {**config, "seeds_in_one_job": False}
    proc = snakemake(workdir, "-n", "-p", "--forceall", config=per_seed)
    out = proc.stdout + proc.stderr
    jobs = planned_jobs_from(out)
    seeds = len(config["eval_seeds"])
    assert seeds == 2 and jobs["evaluate_student"] == 12 * seeds and jobs["evaluate_full"] == 2 * seeds
    commands = [line for line in out.splitlines() if " evaluate --images" in line]
    assert all(c.count("--seed ") == 1 and c.count("--out ") == 1 for c in commands)
    assert sum("convnet3_w32-s1.json" in c for c in commands) == 12


def test_changing_distillation_keeps_teachers_and_statistics(finished_run):
    workdir, config = finished_run
    changed = {**config, "distill": {**config["distill"], "iterations": 21}}
    jobs = planned_jobs(workdir, changed)
    assert "train_teacher" not in jobs and "extract_stats" not in jobs
    # d3s's shards rerun; the real-image baselines and their labels do not depend on distillation
    assert jobs["distill_shard"] == 3 and jobs["merge_shards"] == 2 and jobs["relabel"] == 2
    assert jobs["evaluate_student"] == 4 and "select_real" not in jobs and "evaluate_full" not in jobs


def test_a_per_ipc_distillation_change_reruns_only_that_ipc(finished_run):
    workdir, config = finished_run
    changed = {**config, "distill_by_ipc": {2: {"iterations": 21, "lr": 0.05}}}
    proc = snakemake(workdir, "-n", "-p", config=changed)
    out = proc.stdout + proc.stderr
    # IPC 2 runs as two shards of one IPC each; IPC 1 is untouched
    assert planned_jobs_from(out) == {
        "distill_shard": 2,
        "merge_shards": 1,
        "relabel": 1,
        "evaluate_student": 2,
        "summarize": 1,
        "plot_accuracy": 1,
        "plot_losses": 1,
        "plot_images": 1,
        "all": 1,
    }
    commands = [line for line in out.splitlines() if "d3s distill" in line]
    assert len(commands) == 2
    assert all("--iterations 21" in c and "--lr 0.05" in c and "/ipc2/" in c for c in commands)
    # an entry that repeats the section's own values changes nothing
    same = {**config, "distill_by_ipc": {1: {"iterations": config["distill"]["iterations"]}}}
    assert planned_jobs(workdir, same) == {}


def test_changing_relabel_keeps_distilled_images(finished_run):
    workdir, config = finished_run
    changed = {**config, "relabel": {"epochs": 31}}
    jobs = planned_jobs(workdir, changed)
    assert set(jobs) == {"relabel", "evaluate_student", "summarize", "plot_accuracy", "all"} and jobs["relabel"] == 6
    assert jobs["evaluate_student"] == 6  # the soft-label students only: a hard-label one reads no labels


def test_changing_the_teacher_reruns_everything(finished_run):
    workdir, config = finished_run
    changed = {**config, "teacher_training": {"epochs": 4}}
    jobs = planned_jobs(workdir, changed)
    assert {"train_teacher", "extract_stats", "distill_shard", "relabel"} <= set(jobs)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"distill": {"iterationz": 5}}, "Additional properties are not allowed ('iterationz' was unexpected)"),
        ({"distill": {"iterations": "many"}}, "'many' is not of type 'integer'"),
        ({"ipcs": [0]}, "0 is less than the minimum of 1"),
        ({"dataset": "cifar"}, "dataset 'cifar' is not defined under 'datasets'"),
        ({"teacher": {"epochs": 3}}, "the key `teacher` is now `teacher_training`"),
        ({"methods": ["d3s", "dc"]}, "'dc' is not one of ['d3s', 'sre2l'"),
        ({"distill_by_ipc": {2: {"lr": "fast"}}}, "config: distill_by_ipc.2.lr: 'fast' is not of type 'number'"),
        ({"distill_by_ipc": {2: {"iterationz": 5}}}, "distill_by_ipc.2: Additional properties are not allowed"),
        ({"distill_by_ipc": {"two": {"lr": 0.1}}}, "'two' does not match"),
        ({"sweep": {"random": {"distill": {"lr": [0.1]}}}}, "sweep.random.distill: random has no 'distill' settings"),
        ({"sweep": {"d3s": {"distill": {"lrr": [0.1]}}}}, "sweep.d3s.distill.lrr: not a key of `distill`"),
        ({"sweep": {"d3s": {"distill": {"lr": ["fast"]}}}}, "sweep.d3s.distill.lr: 'fast': 'fast' is not of type"),
        ({"sweep": {"d3s": {"distill": {"lr": 0.1}}}}, "0.1 is not of type 'array'"),
        ({"sweep": {"d3s": {"distill": {"lr": [0.1, 0.2]}}}}, "at IPC 1 the methods have different budgets (d3s 2"),
        ({"sweep": {"d3s": {"by_ipc": {5: {"distill": {"lr": [0.1]}}}}}}, "sweep.d3s.by_ipc.5: IPC 5 is not in"),
        (
            {
                "datasets": {"digits": {"source": "digits"}},
                "methods": ["d3s"],
                "sweep": {"d3s": {"distill": {"lr": [0.1, 0.2]}}},
            },
            "val_per_class is 0; set it",
        ),
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


@pytest.mark.parametrize(("cores", "threads"), [(2, 1), (3, 1), (4, 2), (16, 2)])
def test_local_jobs_take_at_most_half_the_cores(tmp_path, cores, threads):
    """On 2 cores two 1-thread jobs run at once, rather than one 2-thread job while the other core
    idles through its start-up; from 4 cores a rule gets the 2 threads it asks for."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    out = snakemake(tmp_path, "-n", "--cores", str(cores)).stdout
    for command in ("train-teacher", "extract-stats", "distill", "relabel", "evaluate-full"):
        shell = next(line for line in out.splitlines() if f" d3s {command} " in line)
        assert f"--threads {threads} " in shell, (command, shell)
    student = next(line for line in out.splitlines() if " d3s evaluate " in line)
    assert "--threads 1 " in student  # a student asks for 1 thread on any machine


def _local_rules(*configfiles: Path) -> set[str]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            snakefile=REPO / "Snakefile",
            config_settings=ConfigSettings(configfiles=[REPO / "config" / "config.yaml", *configfiles]),
            workdir=REPO,
        )
        return set(workflow._workflow._localrules)


def test_cheap_rules_are_local_and_a_huge_merge_is_a_job():
    """localrules is what keeps a job off the cluster (the SLURM test checks it for real)."""
    cheap = {"summarize", "plot_accuracy", "plot_losses", "plot_images"}
    assert _local_rules() == cheap | {"merge_shards"}
    for preset in ("imagenet1k", "imagenet21k", "imagenet21k_p"):  # local_merge: false
        assert _local_rules(REPO / "config" / "presets" / f"{preset}.yaml") == cheap, preset


def test_workflow_is_lint_clean_and_formatted():
    lint = subprocess.run(
        [*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile")], cwd=REPO, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["ruff check", "ruff format"])
def test_python_is_lint_clean_and_formatted(command):
    """The package, tests and benchmarks pass `ruff check` and `ruff format --check` (pyproject.toml: lines 120)."""
    done = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


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
    validate(config, str(REPO / "config" / "schema" / "config.schema.yaml"))  # the defaults a preset leaves out
    n_classes = config["datasets"][config["dataset"]].get("num_classes")
    per_ipc = [-(-ipc // config["ipc_per_shard"]) for ipc in config["ipcs"]]
    blocks = -(-n_classes // config["classes_per_shard"]) if config.get("classes_per_shard") else 1
    methods, grid = config["methods"], config["sweep"]

    def points(method, ipc, sections):  # grid points over these sections (the others shared)
        return math.prod(
            len(v) for (section, _), v in sweep.method_grid(grid, method, ipc).items() if section in sections
        )

    synthesising = [m for m in methods if get_method(m).synthesises]
    assert jobs["distill_shard"] == blocks * sum(
        n * points(m, ipc, ("distill",)) for m in synthesising for n, ipc in zip(per_ipc, config["ipcs"])
    )
    per_student = len(config["students"]) * len(config["eval_seeds"])
    modes = config["labels"]
    expected = sum(
        points(m, ipc, ("distill", "relabel", "evaluate")) * ("soft" in modes)
        + points(m, ipc, ("distill", "evaluate")) * ("hard" in modes)
        for m in methods
        if get_method(m).per_ipc
        for ipc in config["ipcs"]
    )
    assert jobs["evaluate_student"] == expected * per_student
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
    config["teacher_training"] = {"epochs": 5, "batch_size": 12}
    config["methods"], config["labels"] = ["d3s"], ["soft"]
    snakemake(tmp_path, config=config)
    rows = (tmp_path / "results/my_images/summary.tsv").read_text().splitlines()
    assert [r.split("\t")[:4] for r in rows[1:]] == [["my_images", "d3s", ipc, "soft"] for ipc in ("1", "2")]
    info = json.loads((tmp_path / "results/my_images/dataset.json").read_text())
    assert info["classes"] == ["class_0", "class_1", "class_2"] and info["n_train"] == 36 and info["channels"] == 3


def test_plots_and_report(finished_run, tmp_path):
    workdir, config = finished_run
    plots = workdir / "results/digits/plots"
    expected = {"accuracy.png", "losses.png"} | {f"images_{m}_ipc{i}.png" for m in PER_IPC for i in (1, 2)}
    assert expected <= {p.name for p in plots.iterdir()}
    for name in expected:
        assert (plots / name).stat().st_size > 5000, name  # a real figure, not an empty file
    report = workdir / "report.html"
    snakemake(workdir, "--report", str(report), config=config)
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000 and "accuracy.png" in html and "summary.tsv" in html
