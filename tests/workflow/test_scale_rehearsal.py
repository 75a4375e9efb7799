"""An ImageNet-shaped run of the whole DAG on the CPU with tiny budgets, by config alone.

1000 classes of real-looking, non-square JPEGs in train/<wnid>/, a flat val/ with a label file,
a shuffled class list, a pretrained-style ResNet-18 teacher imported from safetensors, the
prepare stage in two parts, class-block shards, top-k soft labels, and d3s / sre2l / random.
Every job's peak RSS (its `benchmark:` file) must stay under the mem_mb it asked for, so the
memory model in rules/common.smk is checked against what the jobs really use.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from d3s.artifacts import read_classes
from tests.imagenet_like import CIFAR, make_imagenet_like
from tests.workflow.test_workflow import planned_jobs, snakemake

pytestmark = [
    pytest.mark.workflow,  # the folder is made from ../shared's CIFAR-10 copy (CI has it: never skipped there)
    pytest.mark.skipif(not CIFAR.exists() and not os.environ.get("CI"), reason="needs ../shared/datasets"),
]

CLASSES = 1000
SIZE, EVAL_RESIZE = 32, 36
RULES = {
    "pack_index",
    "pack_part",
    "pack_merge",
    "dataset_info",
    "import_teacher",
    "extract_stats",
    "distill_shard",
    "merge_shards",
    "select_real",
    "relabel",
    "evaluate_student",
    "summarize",
    "plot_accuracy",
    "plot_losses",
    "plot_images",
}


def rehearsal_config(data) -> dict:
    return {
        "dataset": "inet",
        "datasets": {
            "inet": {
                "source": "imagefolder",
                "root": str(data.root),
                "train_dir": "train",
                "val_dir": "val",
                "val_labels": str(data.val_labels),
                "class_list": str(data.class_list),
                "image_size": SIZE,
                "eval_resize": EVAL_RESIZE,
                "pack": True,
                "num_classes": CLASSES,
                "crop_scale": [0.5, 1.0],
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            }
        },
        "prepare": {"parts": 2, "threads": 2},
        "teachers": {
            "archs": [],
            "pretrained": [
                {
                    "name": "rn18",
                    "arch": "resnet18",
                    "checkpoint": "resources/rn18.safetensors",
                    "class_list": str(data.class_list),
                }
            ],
        },
        "methods": ["d3s", "sre2l", "random"],
        "labels": ["soft"],
        "ipcs": [1],
        "ipc_per_shard": 1,
        "classes_per_shard": 500,
        "students": ["convnet3_w32"],  # the teacher is the ResNet-18; a small student keeps CI fast
        "eval_seeds": [0],
        "device": "cpu",
        "stats": {"batch_size": 500},
        "distill": {"iterations": 2, "batch_size": 250, "jitter": 2},
        "relabel": {"epochs": 2, "top_k": 10, "batch_size": 500},
        "evaluate": {"epochs": 2, "batch_size": 250, "temperature": 4.0},
    }


def job_requests(log: str) -> dict[str, int]:
    """Benchmark file -> mem_mb asked for, from the job blocks Snakemake prints as it schedules them."""
    requests = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", log):
        bench = re.search(r"^\s+benchmark: (\S+)$", block, re.M)
        mem = re.search(r"^\s+resources: .*\bmem_mb=(\d+)", block, re.M)
        if bench and mem:
            requests[bench.group(1)] = int(mem.group(1))
    return requests


def peak_rss_mb(tsv: Path) -> float:
    with tsv.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return max(float(r["max_rss"]) if r["max_rss"] not in ("-", "NA") else 0.0 for r in rows)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    from d3s.models import build_model

    work = tmp_path_factory.mktemp("rehearsal")
    data = make_imagenet_like(work / "imagenet", classes=CLASSES, per_class=2, val_per_class=1)
    torch.manual_seed(0)
    teacher = build_model("resnet18", CLASSES, 3, SIZE)
    (work / "resources").mkdir()
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(work / "resources/rn18.safetensors"))
    config = rehearsal_config(data)
    proc = snakemake(work, config=config, timeout=1500)
    return work, config, data, proc.stdout + proc.stderr


def test_the_imagenet_shaped_dag_runs_end_to_end_by_config(rehearsal):
    work, config, data, _ = rehearsal
    rows = (work / "results/inet/summary.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    table = [dict(zip(header, r.split("\t"))) for r in rows[1:]]
    assert [(r["method"], r["ipc"], r["labels"]) for r in table] == [
        ("d3s", "1", "soft"),
        ("sre2l", "1", "soft"),
        ("random", "1", "soft"),
    ]
    for method in ("d3s", "sre2l", "random"):
        with h5py.File(work / f"results/inet/{method}/ipc1/default/images.h5") as f:
            assert f["images"].shape == (CLASSES, SIZE, SIZE, 3)
            assert sorted(f["labels"][()].tolist()) == list(range(CLASSES))
        with h5py.File(work / f"results/inet/{method}/ipc1/default/default/labels.h5") as f:
            assert f.attrs["top_k"] == 10
        result = json.loads(
            (work / f"results/inet/{method}/ipc1/default/default/default/convnet3_w32-s0.json").read_text()
        )
        assert result["n_test"] == CLASSES
        assert result["protocol"]["eval_resize"] == EVAL_RESIZE
    # the class-block shards ran (two blocks of 500 classes per synthesising method) and were temporary
    assert len(list((work / "logs/bench/distill_shard").rglob("*.tsv"))) == 4
    assert not list(work.glob("results/inet/*/ipc1/*/shards/*.h5"))
    assert (work / "results/inet/plots/images_d3s_ipc1.png").stat().st_size > 0


def test_later_stages_read_the_packed_file_not_the_folder(rehearsal):
    work, config, data, _ = rehearsal
    with h5py.File(work / "packed/inet/data.h5") as f:
        assert f["train/images"].shape == (data.n_train, EVAL_RESIZE, EVAL_RESIZE, 3)  # stored at eval_resize^2
        assert f["test/images"].shape == (data.n_val, SIZE, SIZE, 3)  # at the protocol
        assert read_classes(f) == data.classes  # the class list's order, not sorted folder names
        labels = f["train/labels"][()]
    # stored shuffled (streamed reads see mixed classes), every class twice
    assert np.bincount(labels, minlength=CLASSES).tolist() == [2] * CLASSES and (np.diff(labels) != 0).mean() > 0.9
    assert not list((work / "packed/inet/parts").glob("*.h5"))  # parts are temporary
    for rule in ("dataset_info", "import_teacher", "extract_stats", "relabel", "evaluate_student"):
        for log in (work / "logs" / rule).rglob("*.log"):
            assert str(data.root / "train") not in log.read_text()
    shell = (work / ".snakemake").rglob("*.log")
    commands = "\n".join(p.read_text() for p in shell)
    stage_commands = [
        line for line in commands.splitlines() if re.search(r"d3s (extract-stats|distill|evaluate) ", line)
    ]
    assert stage_commands and all('"source": "hdf5"' in c and "packed/inet/data.h5" in c for c in stage_commands)


def test_every_job_peaks_under_the_memory_it_asked_for(rehearsal):
    work, _, _, log = rehearsal
    requests = job_requests(log)
    benchmarks = sorted((work / "logs/bench").rglob("*.tsv"))
    # every job but `all` is measured: 2 pack parts, 4 shards, 2 merges, 3 relabels, 3 students, 3 grids, ...
    assert {p.relative_to(work / "logs/bench").parts[0] for p in benchmarks} == RULES
    assert len(benchmarks) == 26 and set(requests) == {str(p.relative_to(work)) for p in benchmarks}
    report = []
    for tsv in benchmarks:
        name = str(tsv.relative_to(work))
        report.append((name, peak_rss_mb(tsv), requests[name]))
    print("\n".join(f"{n}: peak RSS {rss:.0f} MB of {req} MB asked" for n, rss, req in report))
    over = [(n, rss, req) for n, rss, req in report if rss > req]
    assert not over, "jobs above their mem_mb request (MB): " + ", ".join(
        f"{n} {rss:.0f} > {req}" for n, rss, req in over
    )
    # the benchmark measured the d3s process, not only its shell: the stages that import torch are > 400 MB
    torch_jobs = [
        rss
        for n, rss, _ in report
        if n.split("/")[2] not in {"summarize", "merge_shards"} and not n.split("/")[2].startswith("plot_")
    ]
    assert len(torch_jobs) == 18 and min(torch_jobs) > 400


def test_rehearsal_is_complete_and_a_rerun_does_nothing(rehearsal):
    work, config, _, _ = rehearsal
    assert planned_jobs(work, config) == {}


def _with_dataset(config: dict, **changes) -> dict:
    entry = {**config["datasets"]["inet"], **changes}
    return {**config, "datasets": {"inet": {k: v for k, v in entry.items() if v is not None}}}


def test_augmentation_changes_repack_nothing_pixel_changes_repack(rehearsal):
    work, config, _, _ = rehearsal
    augment = planned_jobs(work, _with_dataset(config, crop_scale=[0.4, 1.0]))
    assert augment and not {"pack_index", "pack_part", "pack_merge"} & set(augment)
    pixels = planned_jobs(work, _with_dataset(config, eval_resize=40))
    assert pixels["pack_index"] == 1 and pixels["pack_part"] == 2 and pixels["pack_merge"] == 1
    # `pack` unset: a folder of >= 100 classes is packed all the same (the same spec, so nothing reruns)
    assert planned_jobs(work, _with_dataset(config, pack=None)) == {}
    raw = planned_jobs(work, _with_dataset(config, pack=False))
    assert "pack_index" not in raw and raw["extract_stats"] == 1 and raw["import_teacher"] == 1
