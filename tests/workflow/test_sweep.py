"""Sweeps in the DAG: variants as jobs, chosen on validation only, equal budgets; k-center; cross-architecture."""

from __future__ import annotations

import json

import h5py
import pytest
import yaml

from .test_scale_rehearsal import job_requests
from .test_workflow import TINY, planned_jobs, snakemake

pytestmark = pytest.mark.workflow


def sweep_config() -> dict:
    config = yaml.safe_load(TINY.read_text())
    config.update(
        methods=["d3s", "random", "kcenter"],
        labels=["soft"],
        ipcs=[1],
        eval_seeds=[0],
        # a second architecture: the students below are chosen by the first one's validation accuracy
        students=["convnet3_w32", "convnet3_w32_in"],
    )
    config["sweep"] = {
        "d3s": {"distill": {"init": ["noise", "herding"]}},  # starting from the herding coreset is a variant
        "random": {"relabel": {"epochs": [30, 20]}},  # variants of the labels share the selected images
        "kcenter": {"evaluate": {"lr": [0.001, 0.003]}},
    }
    return config


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    config = sweep_config()
    snakemake(workdir, config=config)
    return workdir, config


def _table(path) -> list[dict]:
    rows = path.read_text().splitlines()
    header = rows[0].split("\t")
    return [dict(zip(header, r.split("\t"))) for r in rows[1:]]


def test_each_variant_is_a_job_and_shares_what_it_does_not_change(swept):
    workdir, config = swept
    root = workdir / "results/digits"
    # d3s: two distilled sets (noise / herding start); random: one set, two label files; kcenter: one of each
    assert {p.parent.name for p in root.glob("d3s/ipc1/*/images.h5")} == {"default", "init=herding"}
    assert [p.parent.name for p in root.glob("random/ipc1/*/images.h5")] == ["default"]
    assert {p.parent.name for p in root.glob("random/ipc1/default/*/labels.h5")} == {"default", "epochs=20"}
    assert {p.parent.name for p in root.glob("kcenter/ipc1/default/default/*/convnet3_w32-s0.json")} == {
        "default",
        "lr=0.003",
    }
    # the herding start is the herding coreset's images (written by its own select_real job)
    with h5py.File(root / "d3s/ipc1/init=herding/images.h5") as f:
        assert json.loads(f.attrs["config"])["init"] == "herding"
    with h5py.File(root / "herding/ipc1/default/images.h5") as f:
        assert json.loads(f.attrs["config"])["selection"] == "herding"
    r = json.loads((root / "kcenter/ipc1/default/default/lr=0.003/convnet3_w32_in-s0.json").read_text())
    assert r["variant"] == "default/default/lr=0.003" and r["protocol"]["lr"] == 0.003


def test_the_summary_reports_the_variant_best_on_validation(swept):
    workdir, config = swept
    sweep = _table(workdir / "results/digits/sweep.tsv")
    summary = {(r["method"], r["student"]): r for r in _table(workdir / "results/digits/summary.tsv")}
    assert len(sweep) == 3 * 2 * 2  # methods x variants x students: every variant stays in the sweep table
    for method in config["methods"]:
        judged = [r for r in sweep if r["method"] == method and r["student"] == "convnet3_w32"]
        best = max(judged, key=lambda r: float(r["val_top1_mean"]))  # ties: the first by name, as max keeps
        chosen = [r for r in sweep if r["method"] == method and r["selected"] == "yes"]
        # the first student's validation accuracy chooses; the other architecture reports the same variant
        assert {r["variant"] for r in chosen} == {best["variant"]} and len(chosen) == 2
        for student in config["students"]:
            row = summary[(method, student)]
            picked = next(r for r in chosen if r["student"] == student)
            assert row["variant"] == best["variant"] and row["variants"] == "2"
            assert row["top1_mean"] == picked["top1_mean"] and row["val_top1_mean"] == picked["val_top1_mean"]
    # the grid and the loss curves show the distilled set the table reports, not the first variant's
    shown = f"results/digits/d3s/ipc1/{summary[('d3s', 'convnet3_w32')]['variant'].split('/')[0]}/images.h5"
    assert f"drew {shown}" in (workdir / "logs/plot_images/digits/d3s_ipc1.log").read_text()
    assert f"drew the loss curves of {shown}" in (workdir / "logs/plot_losses/digits.log").read_text()


def test_adding_a_variant_runs_only_its_jobs(swept):
    workdir, config = swept
    changed = {
        **config,
        "sweep": {
            **config["sweep"],
            "kcenter": {"evaluate": {"lr": [0.001, 0.003, 0.01]}},
            "random": {"relabel": {"epochs": [30, 20, 10]}},
            "d3s": {"distill": {"init": ["noise", "herding", "real"]}},
        },
    }
    jobs = planned_jobs(workdir, changed)
    # one new distilled set (+ its labels, students), one new label file (+ students), two new kcenter students
    assert jobs["distill_shard"] == 1 and jobs["merge_shards"] == 1 and jobs["relabel"] == 2
    assert jobs["evaluate_student"] == 3 * 2 and "select_real" not in jobs and "train_teacher" not in jobs


def test_a_swept_batch_size_sizes_its_own_jobs(swept):
    """A job's memory request follows its variant's batch_size, not the configured one (on a CPU the
    batch's activations are host memory)."""
    workdir, config = swept
    big, small = 4096, 64
    changed = {
        **config,
        "sweep": {
            **config["sweep"],
            "kcenter": {"evaluate": {"batch_size": [small, big]}},
            "random": {"relabel": {"batch_size": [small, big]}},
        },
    }
    asked = job_requests(snakemake(workdir, "-n", config=changed).stdout)

    def request(rule, method, variant):
        # a variant is a folder of the benchmark path (evaluate_student) or its file name (relabel)
        hits = [
            mb
            for bench, mb in asked.items()
            if bench.startswith(f"logs/bench/{rule}/digits/{method}/") and f"/{variant}/" in bench.replace(".tsv", "/")
        ]
        assert len(hits) >= 1, (rule, variant, sorted(asked))
        return max(hits)

    with h5py.File(workdir / "results/digits/kcenter/ipc1/default/images.h5") as f:
        side = f["images"].shape[1]
    per_image_mb = side * side * 3 * 4 * 64 / 2**20  # CPU_ACTIVATION_FACTOR x an fp32 image
    # evaluate's test pass batches 512 images whatever the training batch; relabel has none
    # kcenter's students sweep the evaluate batch (their ev folder); random's labels the relabel one (rv)
    assert request("evaluate_student", "kcenter", f"batch_size={big}") - request(
        "evaluate_student", "kcenter", f"batch_size={small}"
    ) >= int((big - 512) * per_image_mb)
    assert request("relabel", "random", f"batch_size={big}") - request(
        "relabel", "random", f"batch_size={small}"
    ) >= int((big - small) * per_image_mb)
