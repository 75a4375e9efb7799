"""`checkpoint: timm:<model>` in teachers.pretrained: fetched once by a local rule, imported offline.

timm's ImageNet weights have 1000 classes and 3 channels, and import-teacher builds the model
from the dataset's, so the run uses a tiny 1000-class RGB HDF5 dataset (one 32 px image per
class and split) instead of the 10-class grayscale digits; the weights come from a local
Hugging Face cache (tests/unit/test_pretrained_hub.py) with the hub offline.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from d3s.artifacts.teacher import load_teacher, weights_digest
from tests.unit.test_pretrained_hub import MODEL, hub_env, write_hub_cache
from tests.workflow.test_workflow import TINY, _local_rules, planned_jobs_from, snakemake

pytestmark = pytest.mark.workflow

CLASSES = 1000
FETCHED = f"resources/pretrained/timm/{MODEL}.safetensors"


def write_dataset(path, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for split in ("train", "test"):
            f[f"{split}/images"] = rng.integers(0, 256, (CLASSES, 32, 32, 3), dtype=np.uint8)
            f[f"{split}/labels"] = np.arange(CLASSES)
        f.attrs["classes"] = [f"c{i:04d}" for i in range(CLASSES)]


def hub_config(data) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config.update(
        dataset="blobs",
        datasets={"blobs": {"source": "hdf5", "path": str(data), "hflip": False, "mean": [0.5] * 3, "std": [0.5] * 3}},
        teachers={
            "archs": [],
            "pretrained": [
                {"name": "tr", "checkpoint": f"timm:{MODEL}"},  # arch: the model name
                {"name": "tr_again", "arch": MODEL, "checkpoint": f"timm:{MODEL}"},  # the same weights: one fetch
            ],
        },
        methods=["d3s", "random"],
        labels=["soft"],
        ipcs=[1],
        eval_seeds=[0],
    )
    return config


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("hub_run")
    state = write_hub_cache(work / "hf" / "hub", MODEL)
    write_dataset(work / "blobs.h5")
    return work, state, hub_config(work / "blobs.h5")


def test_the_dag_fetches_timm_weights_once_on_the_submitting_node(hub_run, monkeypatch):
    work, state, config = hub_run
    for key, value in hub_env(work / "hf").items():
        monkeypatch.setenv(key, value)
    proc = snakemake(work, "-n", "-p", config=config)
    out = proc.stdout + proc.stderr
    jobs = planned_jobs_from(out)
    assert jobs["fetch_pretrained"] == 1 and jobs["import_teacher"] == 2
    local = _local_rules(work / "test-config.yaml")  # what the dry run just read
    assert "fetch_pretrained" in local and "import_teacher" not in local
    assert f"d3s fetch-pretrained --model {MODEL} --out {FETCHED}" in out
    assert out.count("export HF_HUB_OFFLINE=1; exec d3s import-teacher") == 2  # a compute job never downloads
    assert out.count(f"--checkpoint {FETCHED} --arch {MODEL} ") == 2

    target = "results/blobs/teachers/pretrained/tr.h5"
    proc = snakemake(work, target, config=config)
    done = planned_jobs_from(proc.stdout + proc.stderr)
    assert done == {"dataset_info": 1, "fetch_pretrained": 1, "import_teacher": 1}
    teacher = load_teacher(work / target)
    assert teacher.arch == MODEL and len(teacher.classes) == CLASSES
    assert teacher.weights_sha256 == weights_digest(state)  # the cache's weights, unchanged
    assert (work / f"logs/fetch_pretrained/{MODEL}.log").stat().st_size > 0
    assert (work / f"logs/bench/fetch_pretrained/{MODEL}.tsv").exists()
    assert "Nothing to be done" in snakemake(work, "-n", target, config=config).stdout


def test_arch_is_required_unless_the_checkpoint_is_timm(hub_run, tmp_path):
    _, _, config = hub_run
    config = {**config, "teachers": {"archs": [], "pretrained": [{"name": "x", "checkpoint": "w.safetensors"}]}}
    proc = snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0 and "'arch' is a required property" in proc.stdout + proc.stderr
    config["teachers"]["pretrained"][0]["checkpoint"] = "timm:org/model"
    proc = snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0 and "'timm:org/model' does not match" in proc.stdout + proc.stderr
