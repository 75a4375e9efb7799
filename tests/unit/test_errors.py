"""Bad input gets one clear error naming the file, key or step; nothing half-written is left."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from d3s.artifacts import atomic_path
from d3s.data import load_dataset
from d3s.dataset_spec import DatasetSpec
from d3s.errors import D3SError

from ..conftest import DIGITS, FAST, run_cli


def _fails(*args):
    result = run_cli(*args, expect_ok=False)
    assert result.exit_code != 0
    return result.output


def test_missing_input_file_is_named(tmp_path):
    out = _fails("extract-stats", "--teacher", tmp_path / "nope.h5", "--data", DIGITS, "--out", tmp_path / "s.h5")
    assert "nope.h5" in out and "does not exist" in out


def test_unreadable_artifact_is_named(tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"not hdf5 at all")
    out = _fails("extract-stats", "--teacher", bad, "--data", DIGITS, "--out", tmp_path / "s.h5", *FAST)
    assert "garbage.h5" in out and "not a readable HDF5 file" in out
    assert not (tmp_path / "s.h5").exists()


def test_wrong_artifact_kind_is_named(tiny, tmp_path):
    out = _fails("extract-stats", "--teacher", tiny["stats"], "--data", DIGITS, "--out", tmp_path / "s.h5", *FAST)
    assert "expected a d3s 'teacher' artifact" in out and "d3s_kind='stats'" in out


def test_bad_dataset_spec_names_the_key(tmp_path):
    out = _fails("extract-stats", "--teacher", tmp_path, "--data", "{source: imagenet}", "--out", tmp_path / "s.h5")
    assert "does not exist" in out or "is a directory" in out  # click checks files before anything runs
    with pytest.raises(D3SError, match="source 'imagenet' is not one of"):
        DatasetSpec.parse("{source: imagenet}")
    with pytest.raises(D3SError, match="missing key 'source'"):
        DatasetSpec.parse("{path: x.h5}")
    with pytest.raises(D3SError, match="source .hdf5. needs the key .path."):
        DatasetSpec.parse("{source: hdf5}")
    with pytest.raises(D3SError, match="unknown key.*pathh"):
        DatasetSpec.parse("{source: hdf5, path: x.h5, pathh: x.h5}")


def _write_h5_dataset(path, classes, labels_max=None, drop=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 40), ("test", 20)):
            if drop != f"{split}/images":
                f[f"{split}/images"] = rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8)
            labels = np.arange(n) % len(classes)
            if labels_max is not None and split == "train":
                labels[0] = labels_max
            f[f"{split}/labels"] = labels
        f.attrs["classes"] = classes


def test_hdf5_dataset_problems_are_named(tmp_path):
    good = [str(i) for i in range(10)]
    missing = tmp_path / "missing.h5"
    _write_h5_dataset(missing, good, drop="test/images")
    with pytest.raises(D3SError, match=r"missing.h5: missing dataset 'test/images'"):
        load_dataset(DatasetSpec.from_dict({"source": "hdf5", "path": str(missing)}))
    out_of_range = tmp_path / "labels.h5"
    _write_h5_dataset(out_of_range, good, labels_max=12)
    with pytest.raises(D3SError, match=r"labels.h5: train label 12 is outside the class range 0..9"):
        load_dataset(DatasetSpec.from_dict({"source": "hdf5", "path": str(out_of_range)}))
    with pytest.raises(D3SError, match="dataset file not found"):
        load_dataset(DatasetSpec.from_dict({"source": "hdf5", "path": str(tmp_path / "absent.h5")}))


def test_class_order_mismatch_names_both_sources(tiny, tmp_path):
    shuffled = tmp_path / "shuffled.h5"
    _write_h5_dataset(shuffled, [str(i) for i in (1, 0, 2, 3, 4, 5, 6, 7, 8, 9)])
    spec = json.dumps({"source": "hdf5", "path": str(shuffled), "name": "shuffled"})
    out = _fails("extract-stats", "--teacher", tiny["teacher"], "--data", spec, "--out", tmp_path / "s.h5", *FAST)
    assert "class order mismatch" in out and "teacher.h5" in out and "dataset 'shuffled'" in out
    assert "same classes in a different order" in out
    out = _fails(
        "evaluate",
        "--images",
        tiny["images"],
        "--labels",
        tiny["labels"],
        "--data",
        spec,
        "--student",
        "convnet3_w32",
        "--epochs",
        "1",
        "--out",
        tmp_path / "r.json",
        *FAST,
    )
    assert "class order mismatch" in out and "images.h5" in out
    assert not (tmp_path / "r.json").exists()


def test_statistics_of_another_teacher_are_refused(tiny, tmp_path):
    other = tmp_path / "other_teacher.h5"
    run_cli(
        "train-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet3_w32",
        "--seed",
        "1",
        "--epochs",
        "1",
        "--out",
        other,
        *FAST,
    )
    out = _fails(
        "distill",
        "--teacher",
        other,
        "--stats",
        tiny["stats"],
        "--shard",
        "i0-1_call",
        "--iterations",
        "2",
        "--out",
        tmp_path / "d.h5",
        *FAST,
    )
    assert "stats.h5: statistics were computed from teacher weights" in out and "other_teacher.h5" in out


def test_labels_for_other_images_are_refused(tiny, tmp_path):
    out = _fails(
        "evaluate",
        "--images",
        tiny["shard0"],
        "--labels",
        tiny["labels"],
        "--data",
        DIGITS,
        "--student",
        "convnet3_w32",
        "--epochs",
        "1",
        "--out",
        tmp_path / "r.json",
        *FAST,
    )
    assert "soft labels were made for other images" in out


def test_non_finite_loss_stops_with_iteration_and_layer(tiny, tmp_path):
    corrupt = tmp_path / "stats_nan.h5"
    shutil.copy(tiny["stats"], corrupt)
    with h5py.File(corrupt, "r+") as f:
        f["layers/001/mean"][3] = np.nan  # the second BN layer's real mean
    out_file = tmp_path / "nan.h5"
    out = _fails(
        "distill",
        "--teacher",
        tiny["teacher"],
        "--stats",
        corrupt,
        "--shard",
        "i0-1_call",
        "--iterations",
        "5",
        "--out",
        out_file,
        *FAST,
    )
    assert "at iteration 1" in out and "KL of layer 'features.5'" in out
    assert not out_file.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["stats_nan.h5"]


def test_teacher_without_batchnorm_is_refused(tmp_path):
    out = _fails(
        "train-teacher",
        "--data",
        DIGITS,
        "--arch",
        "vit_tiny_patch16_224",
        "--epochs",
        "1",
        "--out",
        tmp_path / "t.h5",
        *FAST,
    )
    assert "no BatchNorm layers" in out and "vit_tiny_patch16_224" in out


def test_unknown_architecture_is_named(tmp_path):
    out = _fails(
        "train-teacher", "--data", DIGITS, "--arch", "convnet9", "--epochs", "1", "--out", tmp_path / "t.h5", *FAST
    )
    assert "unknown architecture 'convnet9'" in out and "convnet3" in out


def test_merge_refuses_gaps(tiny, tmp_path):
    out = _fails("merge", "--shard", tiny["shard1"], "--ipc", "2", "--out", tmp_path / "m.h5")
    assert "no shard holds IPC index 0 of class '0' (10 of 20 slots missing" in out
    out = _fails(
        "merge", "--shard", tiny["shard0"], "--shard", tiny["shard1"], "--ipc", "3", "--out", tmp_path / "m.h5"
    )
    assert "expected 3 images per class" in out
    out = _fails(
        "merge", "--shard", tiny["shard0"], "--shard", tiny["shard0"], "--ipc", "1", "--out", tmp_path / "m.h5"
    )
    assert "IPC index 0 of class '0' is in more than one shard" in out
    assert not (tmp_path / "m.h5").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole" and list(tmp_path.iterdir()) == [final]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a job whose torch sees no GPU")
def test_a_job_given_a_gpu_that_torch_cannot_see_stops_unless_cpu_was_asked(tmp_path, monkeypatch):
    """SLURM gave the job a GPU (as on the fake-GPU test cluster) but torch sees none, e.g. a
    CPU-only build: `auto` must not quietly train on the CPU; `--device cpu` does on purpose."""
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_ID", "D3S_REQUESTED_GPUS"):
        monkeypatch.delenv(name, raising=False)
    args = ("train-teacher", "--data", DIGITS, "--arch", "convnet3_w32", "--epochs", "1", "--threads", "2")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")  # a CPU job's count: no GPU was given
    monkeypatch.setenv("D3S_REQUESTED_GPUS", "1")  # a rule's GPU request in a local run (no SLURM job): CPU
    run_cli(*args, "--out", tmp_path / "cpu-job.h5")
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # the same request in a SLURM array task, which sees no GPU variable
    out = _fails(*args, "--out", tmp_path / "t.h5")
    assert "SLURM job 7 asked for them: D3S_REQUESTED_GPUS=1" in out and "sees none" in out
    monkeypatch.setenv("SLURM_STEP_GPUS", "0")  # GPU id 0 was given (a job step)
    out = _fails(*args, "--out", tmp_path / "t.h5")
    assert "SLURM_STEP_GPUS=0" in out and "sees none" in out and "device: cpu" in out
    assert not (tmp_path / "t.h5").exists()
    run_cli(*args, "--device", "cpu", "--out", tmp_path / "t.h5")
